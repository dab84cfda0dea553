"""Expected failures: each carries a one-line reason meant for a person.

Entry points (CLI, API, flows) turn these into a clear message and a non-zero
exit or a 4xx/503, never a traceback."""

from __future__ import annotations


class FspError(Exception):
    """Base of every expected, explainable failure."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class DatabaseUnavailable(FspError):
    """The configured database cannot be reached."""


class RegistryUnavailable(FspError):
    """The MLflow store cannot be reached (a server down or silent, a locked SQLite file):
    a fault that may pass, so the flows' tasks retry it."""


class ModelStoreBroken(FspError):
    """The MLflow store answers but cannot be used: a file that is not an MLflow database,
    a model whose artifacts are missing or unreadable. Trying again cannot change it."""


class NoModelStore(FspError):
    """The configured local MLflow store (a SQLite file, a folder) does not exist, and this
    command only uses a store: it never creates an empty one on a mistyped path."""


class NotEnoughData(FspError):
    """Too few labelled first sessions before the cut-off to train and judge a model."""


class PlatformNotEmpty(FspError):
    """The platform tables already hold data; the generator never mixes with real rows."""


class UnknownModelVersion(FspError):
    """A version number the registry does not hold."""


class NoChampion(FspError):
    """No registered version holds the champion alias yet."""


class UnknownTutor(FspError):
    """A tutor id that the platform does not know."""


class InvalidInput(FspError):
    """A parameter or field that fails validation; the message names it."""
