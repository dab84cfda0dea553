"""The model store (MLflow): opening it, reading versions and aliases, loading a
model, and turning any store failure into one typed line. Everything that serves or
scores reads the champion through here; training writes through training.registry."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from fsp.constants import CHAMPION_ALIAS
from fsp.errors import (
    FspError,
    ModelStoreBroken,
    NoChampion,
    NoModelStore,
    RegistryUnavailable,
    UnknownModelVersion,
)
from fsp.registry_read import version_rows
from fsp.settings import Settings
from fsp.store_uri import cause, local_store_path, masked_uri

MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
"""A tracking server that is down or silent answers in seconds, not after MLflow's
default of 7 retries with growing back-off and 120 s timeouts (minutes). Each is only
a default: the environment's own value wins."""


class _StorePolicy:
    refuse_missing = False


@contextmanager
def existing_store_only() -> Iterator[None]:
    """Within it, `make_client` refuses a local store (SQLite file, folder) that does not
    exist instead of creating an empty one: what every command wants but those that
    create a store (`fsp train`, `fsp demo`), so a mistyped path is named, not hidden."""
    before = _StorePolicy.refuse_missing
    _StorePolicy.refuse_missing = True
    try:
        yield
    finally:
        _StorePolicy.refuse_missing = before


def _cause(exc: BaseException, uri: str | None = None) -> str:
    """`fsp.store_uri.cause`, knowing that MLflow's own messages name what failed."""
    return cause(exc, uri, names_itself=isinstance(exc, MlflowException))


def _unreachable(exc: BaseException) -> bool:
    """A fault of the way to the store (server down or silent, SQLite file locked or not
    openable), as opposed to a store that answers with something unusable."""
    import requests
    import sqlalchemy.exc

    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return True
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        return True
    if isinstance(exc, MlflowException):
        if exc.error_code == "TEMPORARILY_UNAVAILABLE":
            return True
        message = str(exc)
        return message.startswith("API request to ") and (
            "failed with exception" in message or "failed with timeout" in message
        )
    return False


def _not_a_store(exc: BaseException) -> bool:
    """The store itself is unusable: not an MLflow database, damaged, or of a schema
    this MLflow cannot use."""
    import sqlite3

    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.SQLAlchemyError | sqlite3.DatabaseError):
        return True
    try:
        from alembic.util.exc import CommandError
    except ImportError:  # pragma: no cover - MLflow's SQL stores always bring alembic
        return False
    return isinstance(exc, CommandError)


def store_failure(exc: BaseException, uri: str, model_uri: str | None = None) -> FspError | None:
    """The one-line, typed error for a failure of the MLflow store at `uri` (or of loading
    `model_uri` from it), naming the store (secrets masked) and the cause; None when
    `exc` is no store failure (a bug keeps its traceback)."""
    if isinstance(exc, FspError):
        return exc
    where, cause = masked_uri(uri), _cause(exc, uri)
    if _unreachable(exc):
        return RegistryUnavailable(f"cannot reach MLflow at {where}: {cause}")
    if _not_a_store(exc):
        return ModelStoreBroken(f"MLflow store {where} is not usable: {cause}")
    if model_uri is not None:
        gone = isinstance(exc, OSError) or (
            isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"
        )
        what = "its artifacts are missing or unreadable: " if gone else ""
        if model_uri.startswith(("models:/", "runs:/")):
            return ModelStoreBroken(
                f"cannot load {model_uri} from MLflow store {where}: {what}{cause}"
            )
        return ModelStoreBroken(f"cannot load the model at {model_uri}: {what}{cause}")
    if isinstance(exc, MlflowException):
        return ModelStoreBroken(f"MLflow store {where} failed: {cause}")
    return None


def mlflow_failure(exc: BaseException, uri: str) -> FspError | None:
    """`store_failure` for an exception MLflow or its SQL store raised; None for any
    other (an entry point's last resort for MLflow calls no function here wraps)."""
    import sqlite3

    import sqlalchemy.exc

    if isinstance(exc, MlflowException | sqlalchemy.exc.SQLAlchemyError | sqlite3.DatabaseError):
        return store_failure(exc, uri)
    return None


def client_uri(client: MlflowClient) -> str:
    """The tracking URI a client was made for."""
    return str(getattr(client, "tracking_uri", None) or mlflow.get_tracking_uri())


@contextmanager
def store_errors(uri: str, model_uri: str | None = None) -> Iterator[None]:
    """Turn a failure of the MLflow store into its one-line typed error (see
    `store_failure`); anything else passes through untouched."""
    try:
        yield
    except FspError:
        raise
    except Exception as exc:
        failure = store_failure(exc, uri, model_uri)
        if failure is None:
            raise
        raise failure from exc


def _refuse_missing_store(uri: str) -> None:
    local = local_store_path(uri)
    if _StorePolicy.refuse_missing and local is not None and not local.exists():
        raise NoModelStore(
            f"no MLflow store at {masked_uri(uri)}: {local} does not exist (check"
            " MLFLOW_TRACKING_URI; `fsp train` or `fsp demo` creates a store)"
        )


def make_client(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store (local SQLite by default) and check it answers.

    A local store that does not exist is created, except within `existing_store_only`.
    Every failure is one typed line naming the store: RegistryUnavailable (cannot reach
    it), ModelStoreBroken (not a usable store), NoModelStore (refused missing path)."""
    uri = settings.resolved_mlflow_uri
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    _refuse_missing_store(uri)
    if uri.startswith("sqlite:///"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
    except FspError:
        raise
    except Exception as exc:  # any failure to open the store stops here, in one line
        failure = store_failure(exc, uri) or RegistryUnavailable(
            f"cannot reach MLflow at {masked_uri(uri)}: {_cause(exc, uri)}"
        )
        raise failure from exc
    return client


def version_or_raise(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    """The registered version, or `UnknownModelVersion` naming what exists."""
    with store_errors(client_uri(client)):
        try:
            return client.get_model_version(name, str(version))
        except MlflowException as exc:
            if not _absent(exc):
                raise
            versions = client.search_model_versions(f"name='{name}'")
            known = sorted(int(v.version) for v in versions)
            raise UnknownModelVersion(
                f"model {name!r} has no version {version!r} (registered: {known or 'none'})"
            ) from exc


_ABSENT_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


def _absent(exc: MlflowException) -> bool:
    """The store answered that the model, version or alias does not exist (not that it
    could not answer: that is a store failure, never read as 'none')."""
    return exc.error_code in _ABSENT_CODES and not _unreachable(exc)


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, or None (a store that cannot answer raises)."""
    with store_errors(client_uri(client)):
        try:
            return client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if _absent(exc):
                return None
            raise


def aliased_version(client: MlflowClient, name: str, alias: str = CHAMPION_ALIAS) -> ModelVersion:
    """The version holding `alias` (the champion by default), or `NoChampion` saying how
    to make one: the one place every role checks for a champion."""
    version = alias_version(client, name, alias)
    if version is None:
        raise NoChampion(
            f"model {name!r} has no {alias!r} yet: run `fsp train` or `fsp promote VERSION`"
        )
    return version


def load_sklearn(uri: str):
    """Load a logged model as the scikit-learn object (predict_proba available).

    A model that cannot be loaded (artifacts deleted or unreadable, store unreachable)
    is one typed line naming it and the store: ModelStoreBroken or RegistryUnavailable."""
    with store_errors(mlflow.get_tracking_uri(), model_uri=uri):
        return mlflow.sklearn.load_model(uri)


def missing_artifacts(client: MlflowClient, name: str, version: str | int) -> FspError | None:
    """The one-line error when a registered version's model files are gone from the
    artifact store (no MLmodel), else None: for naming the version when a load failed."""
    model_uri = f"models:/{name}/{version}"
    with store_errors(client_uri(client), model_uri=model_uri):
        listed = mlflow.artifacts.list_artifacts(artifact_uri=model_uri)
    if any(PurePosixPath(item.path).name == "MLmodel" for item in listed):
        return None
    return ModelStoreBroken(
        f"cannot load {model_uri} from MLflow store {masked_uri(client_uri(client))}: its"
        f" artifacts are missing ({len(listed)} file(s) where the model should be, no MLmodel)"
    )


def list_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every registered version with its aliases and the tags that explain its fate,
    read through MLflow's client (`fsp models` reads through fsp.registry_read first)."""
    with store_errors(client_uri(client)):
        versions = client.search_model_versions(f"name='{name}'")
        # On SQL stores search_model_versions leaves each version's aliases empty; the
        # registered model holds them all (alias -> version).
        aliases = client.get_registered_model(name).aliases if versions else {}
    return version_rows(((v.version, v.tags) for v in versions), aliases)
