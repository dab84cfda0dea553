"""MLflow: the single source of truth for models (runs, versions, aliases, lineage).

The MLflow client is passed in everywhere so a test can hand in a client on a
temporary store."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from training.constants import CHALLENGER_ALIAS, CHAMPION_ALIAS, RISK_BANDS
from training.errors import (
    FspError,
    ModelStoreBroken,
    NoChampion,
    NoModelStore,
    RegistryUnavailable,
    UnknownModelVersion,
)
from training.settings import PROJECT_ROOT, Settings

PIP_REQUIREMENTS = (
    "scikit-learn==1.9.1",
    "pandas==2.3.3",
    "numpy==2.4.6",
    "skops==0.16.0",
)


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


def masked_uri(uri: str) -> str:
    """The URI without secrets: its user info and password-like query values become ***
    (the rest exactly as written)."""
    try:
        netloc = urlsplit(uri).netloc
    except ValueError:
        return _scrub(uri)
    masked = uri
    if "@" in netloc:
        masked = masked.replace(netloc.rpartition("@")[0] + "@", "***@", 1)
    return _SECRET_QUERY.sub(r"\1***", masked)


_SECRET_QUERY = re.compile(
    r"([?&][^=&#]*(?:pass|secret|token|key|auth|cred)[^=&#]*=)[^&#]*", re.IGNORECASE
)
_USERINFO = re.compile(r"(?<=//)[^/\s@'\"]+@")


def _scrub(text: str, uri: str | None = None) -> str:
    """Text with every user info of a URL in it masked, and the store's password gone."""
    if uri:
        text = text.replace(uri, masked_uri(uri))
        try:
            password = urlsplit(uri).password
        except ValueError:
            password = None
        for secret in {password, unquote(password or "")} - {None, ""}:
            text = text.replace(str(secret), "***")
    return _USERINFO.sub("***@", text)


def local_store_path(uri: str) -> Path | None:
    """The file (SQLite) or folder (file store) a local MLflow URI names; None for a
    server, an in-memory database or a URI this cannot tell."""
    if uri.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        try:
            database = make_url(uri).database
        except Exception:  # an unparsable URI: MLflow names the problem when it opens it
            return None
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return Path(database)
    if uri.startswith("file:"):
        return Path(url2pathname(urlsplit(uri).path))
    if "://" not in uri:
        return Path(uri)
    return None


_ERRNO = re.compile(r"\[Errno -?\d+\][^'\"()\]]*")
_TIMED_OUT = re.compile(r"(?:Read|Connect)? ?timed out[^'\"]*", re.IGNORECASE)


def _cause(exc: BaseException, uri: str | None = None) -> str:
    """What went wrong, in one short line without secrets: the OS's reason when a
    connection failed (e.g. '[Errno 111] Connection refused'), the file for a missing
    file, else the first line of the message."""
    text = str(exc).strip()
    found = _ERRNO.search(text) or _TIMED_OUT.search(text)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        line = f"{exc.strerror}: {exc.filename}"
    elif found:
        line = found.group(0).strip().rstrip(".,:;")
    elif first and (isinstance(exc, MlflowException) or first.startswith("(")):
        line = first  # MLflow's and SQLAlchemy's messages name what failed themselves
    else:
        line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    line = _scrub(line, uri)
    return line if len(line) <= 240 else line[:237] + "..."


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


def ensure_experiment(client: MlflowClient, settings: Settings) -> str:
    """The experiment's id, created on first use (artifacts under the state folder by default)."""
    with store_errors(client_uri(client)):
        found = client.get_experiment_by_name(settings.experiment_name)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(
            settings.experiment_name, artifact_location=settings.mlflow_artifact_location
        )


def git_commit() -> str:
    """The commit the code was trained from ('unknown' outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def skops_trusted_types(model: Any) -> list[str]:
    """The non-default types inside our own model, which skops must be told to load."""
    import skops.io

    return skops.io.get_untrusted_types(data=skops.io.dumps(model))


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


def promote(client: MlflowClient, name: str, version: str | int, reason: str) -> ModelVersion:
    """Make `version` the champion (also a rollback) and record why on the version."""
    chosen = version_or_raise(client, name, version)
    previous = alias_version(client, name, CHAMPION_ALIAS)
    with store_errors(client_uri(client)):
        client.set_registered_model_alias(name, CHAMPION_ALIAS, chosen.version)
        client.set_model_version_tag(name, chosen.version, "promotion.decision", "champion")
        client.set_model_version_tag(name, chosen.version, "promotion.reason", reason)
        if previous is not None and previous.version != chosen.version:
            client.set_model_version_tag(
                name, previous.version, "promotion.replaced_by", str(chosen.version)
            )
    return chosen


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


@dataclass(frozen=True)
class GateDecision:
    """What the promotion gate decided, with its figures."""

    promoted: bool
    reason: str
    challenger_auc: float
    champion_auc: float | None
    champion_version: str | None

    def as_tags(self) -> dict[str, str]:
        return {
            "gate.promoted": str(self.promoted).lower(),
            "gate.reason": self.reason,
            "gate.challenger_auc": f"{self.challenger_auc:.6f}",
            "gate.champion_auc": "" if self.champion_auc is None else f"{self.champion_auc:.6f}",
            "gate.champion_version": self.champion_version or "",
        }


def judge(challenger_auc: float, champion_auc: float | None, margin: float) -> tuple[bool, str]:
    """The promotion rule, pure: no champion yet, or beat it by `margin` on the same holdout."""
    if champion_auc is None:
        return True, "no champion yet"
    if challenger_auc >= champion_auc + margin:
        return (
            True,
            f"holdout AUC {challenger_auc:.4f} beats champion {champion_auc:.4f} + margin {margin}",
        )
    return False, (
        f"holdout AUC {challenger_auc:.4f} does not beat champion {champion_auc:.4f} + margin {margin}"
    )


def run_gate(
    client: MlflowClient,
    name: str,
    version: ModelVersion,
    holdout_X: pd.DataFrame,
    holdout_y: np.ndarray,
    challenger_auc: float,
    margin: float,
) -> GateDecision:
    """Give `version` the challenger alias, compare it with the champion on the same
    holdout, promote it when it wins, and write the decision on the version."""
    from sklearn.metrics import roc_auc_score

    from training.model import positive_proba

    with store_errors(client_uri(client)):
        client.set_registered_model_alias(name, CHALLENGER_ALIAS, version.version)
    champion = alias_version(client, name, CHAMPION_ALIAS)
    champion_auc = None
    if champion is not None:
        model = load_sklearn(f"models:/{name}/{champion.version}")
        champion_auc = float(roc_auc_score(holdout_y, positive_proba(model, holdout_X)))
    promoted, reason = judge(challenger_auc, champion_auc, margin)
    decision = GateDecision(
        promoted, reason, challenger_auc, champion_auc, champion.version if champion else None
    )
    with store_errors(client_uri(client)):
        for key, value in decision.as_tags().items():
            client.set_model_version_tag(name, version.version, key, value)
        if promoted:
            promote(client, name, version.version, reason=f"gate: {reason}")
        else:
            client.set_model_version_tag(name, version.version, "promotion.decision", "rejected")
    return decision


def bands_tag() -> str:
    """The risk bands as a JSON tag value."""
    return json.dumps(dict(RISK_BANDS))


def list_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every registered version with its aliases and the tags that explain its fate."""
    shown = (
        "model_type",
        "holdout_auc_roc",
        "alert_threshold",
        "threshold_rule",
        "promotion.decision",
        "promotion.reason",
        "gate.reason",
        "cutoff",
    )
    with store_errors(client_uri(client)):
        versions = client.search_model_versions(f"name='{name}'")
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version)):
        rows.append(
            {
                "version": v.version,
                "aliases": list(v.aliases),
                **{k: v.tags.get(k) for k in shown if k in v.tags},
            }
        )
    return rows
