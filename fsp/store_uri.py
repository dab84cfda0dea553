"""Store URIs as people may see them: secrets masked, the local file or folder a URI
names, and one short line for why the store failed. Light on purpose (no MLflow
import): `fsp models` reads the registry without MLflow and still names failures."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

_SECRET_QUERY = re.compile(
    r"([?&][^=&#]*(?:pass|secret|token|key|auth|cred)[^=&#]*=)[^&#]*", re.IGNORECASE
)
_USERINFO = re.compile(r"(?<=//)[^/\s@'\"]+@")
_ERRNO = re.compile(r"\[Errno -?\d+\][^'\"()\]]*")
_TIMED_OUT = re.compile(r"(?:Read|Connect)? ?timed out[^'\"]*", re.IGNORECASE)
MAX_CAUSE = 240
"""The longest cause line shown; a longer one is cut with '...'."""


def masked_uri(uri: str) -> str:
    """The URI without secrets: its user info and password-like query values become ***
    (the rest exactly as written)."""
    try:
        netloc = urlsplit(uri).netloc
    except ValueError:
        return scrub(uri)
    masked = uri
    if "@" in netloc:
        masked = masked.replace(netloc.rpartition("@")[0] + "@", "***@", 1)
    return _SECRET_QUERY.sub(r"\1***", masked)


def scrub(text: str, uri: str | None = None) -> str:
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
        from sqlalchemy.engine import make_url  # only for SQLite URIs (0.4 s import)

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


def connection_reason(text: str) -> str | None:
    """The OS's reason a connection failed ('[Errno 111] Connection refused') or the
    timeout ('Read timed out') named in an error's text; None when it names neither."""
    found = _ERRNO.search(text) or _TIMED_OUT.search(text)
    return found.group(0).strip().rstrip(".,:;") if found else None


def cause(exc: BaseException, uri: str | None = None, *, names_itself: bool = False) -> str:
    """What went wrong, in one short line without secrets: the OS's reason when a
    connection failed, the file for a missing file, else the first line of the message
    (alone when the exception `names_itself`, as MLflow's and SQLAlchemy's do)."""
    text = str(exc).strip()
    reason = connection_reason(text)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        line = f"{exc.strerror}: {exc.filename}"
    elif reason:
        line = reason
    elif first and (names_itself or first.startswith("(")):
        line = first
    else:
        line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    line = scrub(line, uri)
    return line if len(line) <= MAX_CAUSE else line[: MAX_CAUSE - 3] + "..."
