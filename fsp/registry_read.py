"""Reading the model registry's versions, aliases and tags without importing MLflow.

`fsp models` only reads, and must answer in well under 2 s; importing MLflow and
opening its client takes longer than that on its own. So it reads:

- a tracking server through MLflow's public REST API (`model-versions/search`,
  `registered-models/get`), with the credentials and TLS settings MLflow's own
  environment variables give;
- a local SQLite store through MLflow's SQL schema, read-only. The schema is MLflow's
  private business: it is read only at the Alembic revision verified here
  (`VERIFIED_SCHEMA`), and `tests/test_registry_read.py` fails loudly, naming the
  revision, when an upgrade moves it.

Anything this cannot read with certainty (another revision, another kind of store,
MLflow settings it does not apply, an answer of an unexpected shape) returns None and
the caller reads through MLflow's client, which also names every failure. A server
that cannot be reached is named here, in the same words the client path uses."""

# private-api: MLflow's SQL schema (tables model_versions, model_version_tags,
# registered_model_aliases; Alembic revision VERIFIED_SCHEMA), for SQLite stores only

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fsp.constants import CHAMPION_ALIAS
from fsp.errors import RegistryUnavailable
from fsp.store_uri import connection_reason, masked_uri, scrub

VERIFIED_SCHEMA = "dc11669786a5"
"""The Alembic revision of MLflow's schema (MLflow 3.17) whose registry tables the
SQLite reader was checked against; any other revision is read through MLflow."""

DELETED_STAGE = "Deleted_Internal"
"""The stage MLflow gives a deleted version that it keeps in the table (never listed)."""

SHOWN_TAGS = (
    "model_type",
    "holdout_auc_roc",
    "alert_threshold",
    "threshold_rule",
    "promotion.decision",
    "promotion.reason",
    "gate.reason",
    "cutoff",
)
"""The version tags `fsp models` shows: what the version is and why it was (not)
promoted."""

UNSUPPORTED_SETTINGS = ("MLFLOW_TRACKING_AUTH", "MLFLOW_WORKSPACE", "MLFLOW_ENABLE_WORKSPACES")
"""MLflow settings that change how the registry is read (an auth plugin, workspaces):
with any of them set (and not to false), MLflow's client reads. (MLFLOW_REGISTRY_URI is not one: fsp reads
its registry from the tracking URI's store, as fsp.model_store.make_client does, and
MLflow sets that variable itself whenever a process points it at a store.)"""

PAGE = 1000
"""Versions asked for per REST page."""
MAX_PAGES = 100
"""A server still paging after this many pages (or repeating a page token) is not
answering as MLflow does: its listing is left to MLflow's client."""


def version_rows(
    versions: Iterable[tuple[str, Mapping[str, str]]], aliases: Mapping[str, str]
) -> list[dict[str, Any]]:
    """One row per version (oldest first): its aliases (the champion first) and the
    shown tags. `versions` are (version, tags); `aliases` maps alias -> version."""
    rows = []
    for version, tags in sorted(versions, key=lambda v: int(v[0])):
        held = sorted(
            (a for a, v in aliases.items() if str(v) == str(version)),
            key=lambda a: (a != CHAMPION_ALIAS, a),
        )
        shown = {k: tags[k] for k in SHOWN_TAGS if k in tags}
        rows.append({"version": str(version), "aliases": held, **shown})
    return rows


def read_versions(uri: str, name: str) -> list[dict[str, Any]] | None:
    """`version_rows` of model `name` in the store at `uri`, or None when this cannot
    read that store with certainty (the caller then asks MLflow's client)."""
    if any(_set(setting) for setting in UNSUPPORTED_SETTINGS) or "'" in name:
        return None
    if uri.startswith(("http://", "https://")):
        return _rest_versions(uri, name)
    path = _sqlite_file(uri)
    return _sqlite_versions(path, name) if path is not None else None


def _set(setting: str) -> bool:
    """An environment variable holds a value other than empty or false."""
    return os.environ.get(setting, "").strip().lower() not in ("", "false", "0")


def _sqlite_file(uri: str) -> Path | None:
    """The existing file a plain `sqlite:///path` URI names; None for any other URI
    (options, escapes, in-memory, missing file: MLflow's client says what they mean)."""
    if not uri.startswith("sqlite:///") or any(c in uri for c in "?#%"):
        return None
    path = Path(uri.removeprefix("sqlite:///"))
    return path if path.is_file() else None


def _sqlite_versions(path: Path, name: str) -> list[dict[str, Any]] | None:
    """Read the registry tables of a SQLite store, read-only; None when the file is not
    at the verified schema or cannot be read."""
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as conn:
            if _schema_revision(conn) != VERIFIED_SCHEMA:
                return None
            return version_rows(_sqlite_tagged(conn, name), _sqlite_aliases(conn, name))
    except sqlite3.Error:
        return None


def _schema_revision(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def _sqlite_tagged(conn: sqlite3.Connection, name: str) -> list[tuple[str, dict[str, str]]]:
    """(version, tags) of every listed version (MLflow lists all but deleted ones; a
    NULL stage fails its `!=` filter, as here)."""
    versions = conn.execute(
        "SELECT version FROM model_versions WHERE workspace = 'default' AND name = ?"
        " AND current_stage != ?",
        (name, DELETED_STAGE),
    ).fetchall()
    tags: dict[str, dict[str, str]] = {str(v): {} for (v,) in versions}
    for version, key, value in conn.execute(
        "SELECT version, key, value FROM model_version_tags WHERE workspace = 'default'"
        " AND name = ?",
        (name,),
    ):
        if str(version) in tags:
            tags[str(version)][key] = value
    return list(tags.items())


def _sqlite_aliases(conn: sqlite3.Connection, name: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT alias, version FROM registered_model_aliases WHERE workspace = 'default'"
        " AND name = ?",
        (name,),
    )
    return {alias: str(version) for alias, version in rows}


def _rest_versions(uri: str, name: str) -> list[dict[str, Any]] | None:
    """Read a tracking server through the public REST API; None on an answer this does
    not expect (the client names it); RegistryUnavailable when it cannot be reached."""
    import requests  # only a server store needs it

    session = _rest_session(requests.Session())
    try:
        versions = _rest_search(session, uri, name)
        if versions is None:
            return None
        aliases = _rest_aliases(session, uri, name) if versions else {}
    except (requests.ConnectionError, requests.Timeout) as exc:
        reason = connection_reason(str(exc)) or type(exc).__name__
        raise RegistryUnavailable(
            f"cannot reach MLflow at {masked_uri(uri)}: {scrub(reason, uri)}"
        ) from exc
    return None if aliases is None else version_rows(versions, aliases)


def _rest_session(session: Any) -> Any:
    """A session with the credentials and TLS settings of MLflow's environment variables
    (user info in the URI is applied by requests itself)."""
    env = os.environ
    if env.get("MLFLOW_TRACKING_TOKEN"):
        session.headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
    elif env.get("MLFLOW_TRACKING_USERNAME") and env.get("MLFLOW_TRACKING_PASSWORD"):
        session.auth = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        session.verify = False
    elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        session.verify = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    if env.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        session.cert = env["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
    return session


def _timeout() -> float:
    """MLflow's request timeout setting (our default: fsp.model_store's 5 s)."""
    try:
        return float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "5"))
    except ValueError:
        return 5.0


def _rest_get(session: Any, uri: str, endpoint: str, params: dict[str, Any]) -> Any:
    """The JSON of a GET to the REST API; None for any answer but 200 with an object."""
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/{endpoint}"
    answer = session.get(url, params=params, timeout=_timeout())
    if answer.status_code != 200:
        return None
    try:
        body = answer.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _rest_search(session: Any, uri: str, name: str) -> list[tuple[str, dict[str, str]]] | None:
    """(version, tags) of every version, page by page; None on an unexpected answer."""
    found: list[tuple[str, dict[str, str]]] = []
    params: dict[str, Any] = {"filter": f"name='{name}'", "max_results": PAGE}
    tokens: set[str] = set()
    for _ in range(MAX_PAGES):
        body = _rest_get(session, uri, "model-versions/search", params)
        page = _rest_page(body) if body is not None else None
        if page is None:
            return None
        found.extend(page)
        token = body.get("next_page_token") if body else None
        if not token:
            return found
        if str(token) in tokens:
            return None
        tokens.add(str(token))
        params = {**params, "page_token": token}
    return None


def _rest_page(body: dict[str, Any]) -> list[tuple[str, dict[str, str]]] | None:
    """(version, tags) of one page of `model-versions/search`; None when the page is
    not of the documented shape."""
    try:
        page = [
            (str(v["version"]), {t["key"]: t.get("value", "") for t in v.get("tags", [])})
            for v in body.get("model_versions", [])
        ]
    except (KeyError, TypeError, AttributeError):
        return None
    return page if all(version.isdigit() for version, _ in page) else None


def _rest_aliases(session: Any, uri: str, name: str) -> dict[str, str] | None:
    """alias -> version of the registered model; None on an unexpected answer."""
    body = _rest_get(session, uri, "registered-models/get", {"name": name})
    try:
        held = body["registered_model"].get("aliases", []) if body else None
        return None if held is None else {a["alias"]: str(a["version"]) for a in held}
    except (KeyError, TypeError, AttributeError):  # not the documented shape
        return None
