"""Expected failures end a command with one line on stderr: which exceptions are
expected, and the log filters that keep Prefect's and MLflow's tracebacks of them off
the console (the one line says it all)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator

from fsp.errors import FspError


def store_failure(exc: BaseException) -> FspError | None:
    """The one-line error for an MLflow failure that no registry function translated
    (e.g. a flow's own MLflow call); None for anything else."""
    if "fsp.model_store" not in sys.modules:  # no MLflow in this command
        return None
    from fsp.model_store import mlflow_failure  # already imported: costs nothing
    from fsp.settings import get_settings

    return mlflow_failure(exc, get_settings().resolved_mlflow_uri)


def expected_failure(exc: BaseException) -> FspError | None:
    """The FspError a failure stands for, or None for a bug (which keeps its traceback)."""
    return exc if isinstance(exc, FspError) else store_failure(exc)


def _descendants(cls: type[Exception]) -> Iterator[type[Exception]]:
    sub: type[Exception]
    for sub in cls.__subclasses__():
        yield sub
        yield from _descendants(sub)


def _expected_name() -> re.Pattern[str]:
    """The names of the expected failures (computed when asked: commands import some)."""
    names = {cls.__name__ for cls in _descendants(FspError)} | {"MlflowException"}
    return re.compile(r"\b(" + "|".join(sorted(names)) + r")\b")


class HideExpectedTracebacks(logging.Filter):
    """Drop the traceback Prefect or MLflow logs for an expected failure; the CLI prints
    its reason in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and expected_failure(exc) is not None:
            return False
        # "Finished in state Failed(... NotEnoughData: ...)" carries no exc_info, only the name.
        return not (
            record.levelno >= logging.ERROR and _expected_name().search(record.getMessage())
        )


def _filter_handlers(prefixes: tuple[str, ...]) -> None:
    """Put the filter on every handler of the root logger and of the named families."""
    loggers = [logging.getLogger()] + [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.startswith(prefixes)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, HideExpectedTracebacks) for f in handler.filters):
                handler.addFilter(HideExpectedTracebacks())


def quiet_flow_failures() -> None:
    """Filter every handler Prefect configured (it does so when first imported)."""
    import prefect.main  # noqa: F401  (kept off the fast path; configures Prefect's logging)

    _filter_handlers(("prefect",))
    logging.getLogger("alembic").setLevel(logging.WARNING)


def quiet_store_failures() -> None:
    """MLflow logs a traceback of its own for some store failures (a locked or damaged
    SQLite file) and urllib3 a warning per HTTP retry: the CLI's one line says it all."""
    import fsp.model_store  # noqa: F401  (kept off the fast path; MLflow configures its logger)

    _filter_handlers(("mlflow",))
    logging.getLogger("urllib3").setLevel(logging.ERROR)
