"""Which requests need what, decided in one place: which paths answer without an API
key, and which need the database (answered 503 with the reason while it is down).

A new endpoint under API_PREFIX (the read endpoints' app) follows the read
endpoints' rules without a line here: it asks for the key and the database. A path
that must answer without a key (one an email client loads) is added to
`service.config.PUBLIC_PATHS`."""

from __future__ import annotations

from dataclasses import dataclass

from fsp.settings import Settings
from service.config import API_PREFIX, DOCS_PATHS, METRICS_PATHS, PUBLIC_PATHS

SCORING_PATHS = frozenset({"/predict", "/predict_batch", "/rank_tutors"})
"""The BentoML endpoints; each needs the database (and the feature snapshot)."""

DOCS_SUFFIXES = ("/docs", "/openapi.json")
"""The documentation of a mounted app (served without the database)."""

STATIC_PREFIX = "/static_content/"
"""Where the documentation page's files live."""


def is_read_endpoint(path: str) -> bool:
    """A path of the read endpoints' app, its documentation aside."""
    return path.startswith(API_PREFIX + "/") and not path.endswith(DOCS_SUFFIXES)


def needs_database(path: str) -> bool:
    """Answered only while the database answers and the snapshot is built."""
    return path in SCORING_PATHS or is_read_endpoint(path)


@dataclass(frozen=True)
class AccessRules:
    """Which paths answer without an API key: PUBLIC_PATHS always, the metrics and the
    documentation when the settings open them."""

    open_paths: frozenset[str]
    open_static: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessRules:
        paths = set(PUBLIC_PATHS)
        if settings.api_public_metrics:
            paths |= METRICS_PATHS
        if settings.api_public_docs:
            paths |= DOCS_PATHS
        return cls(frozenset(paths), settings.api_public_docs)

    def is_open(self, path: str) -> bool:
        """Answered without a key."""
        return path in self.open_paths or (self.open_static and path.startswith(STATIC_PREFIX))
