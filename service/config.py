"""Tunables of the serving role only (names, limits, timings), each defined once here.

Shared constants (alias names, risk bands) stay in `fsp.constants`;
what a deployment changes (database, MLflow store, state folder) comes from
`fsp.settings.get_settings()`."""

from __future__ import annotations

from datetime import timedelta
from typing import Final

SERVICE_NAME: Final = "first_session_risk"
"""The BentoML service (and Bento) name."""

API_PREFIX: Final = "/api/first-session"
"""Where the read-only ASGI app is mounted."""

WORKERS: Final = 2
"""Server processes; each holds its own model copy, feature snapshot and pool."""

REQUEST_TIMEOUT_SECONDS: Final = 10
"""A request not answered within this many seconds answers 504 (BentoML's traffic
timeout; every endpoint answers in milliseconds, a full batch stored in well under a
second). Kept short because BentoML 1.4's timeout middleware schedules a timer per
request and never cancels it: each request's timer and future stay in memory for this
long, so a worker's memory grows by about (requests/s x timeout x ~0.6 KB) before it
levels off; with BentoML's default of 60 s, ~30 MB per worker at 750 req/s, over a
whole minute."""

UNTRACED_PATHS: Final = ("/predict", "/rank_tutors")
"""Endpoints OpenTelemetry does not trace (a pattern matches /predict_batch too): the
span bookkeeping costs about a sixth of a /predict on two cores, and no exporter is
configured by default. Empty it to trace them."""

MAX_BATCH_SIZE: Final = 1000
"""Most sessions one /predict_batch request may carry (and the adaptive batch cap)."""

BATCH_MAX_LATENCY_MS: Final = 200
"""How long adaptive batching may hold a request while it gathers a batch."""

MAX_TEXT_LENGTH: Final = 128
"""Longest identifier or subject a request may carry (the platform's are free text)."""

MAX_RANK_CANDIDATES: Final = 100
"""Most candidate tutors one /rank_tutors request may carry."""

SNAPSHOT_REFRESH_SECONDS: Final = 300.0
"""Age after which the tutor-feature snapshot is rebuilt (see README.md, "How the tutor-history lookup is amortised")."""

DB_CHECK_SECONDS: Final = 1.0
"""How often each worker checks that the database answers (readiness, 503s)."""

DB_CONNECT_TIMEOUT_SECONDS: Final = 2
"""Connect timeout of the health and pooled connections, so a dead host is noticed
quickly (libpq's and psycopg's smallest: a value of 1 is taken as 2)."""

DB_CONNECTION_OPTIONS: Final = {
    "connect_timeout": DB_CONNECT_TIMEOUT_SECONDS,
    "tcp_user_timeout": 3000,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
"""libpq options of every service connection: connecting gives up after
DB_CONNECT_TIMEOUT_SECONDS, and a database host that vanished without closing the
connection (a network cut) fails a query within seconds (unacknowledged data for 3 s,
or an idle connection's keepalives unanswered), instead of hanging the health check
for the kernel's retransmission timeout (minutes)."""

POOL_MAX_SIZE: Final = 4
"""Connections per worker for storing predictions and the read endpoints."""

POOL_TIMEOUT_SECONDS: Final = 0.5
"""How long a request waits for a pooled connection before answering 503: the first
request after the database went away answers within a second (storing a prediction
takes a few milliseconds, so a healthy pool never makes a request wait this long)."""

BENTO_MODEL_ARTIFACT: Final = "mlflow_model"
"""Folder, inside the BentoML model, holding the logged MLflow model as downloaded."""

FAST_PATH_FILE: Final = "fast_path.json"
"""File, inside the BentoML model, holding the linear model's parameters (when linear)."""

READ_DAYS_MAX: Final = 3650
"""Largest `days` window the read endpoints accept."""

LOOKAHEAD_HOURS_MAX: Final = 24 * 14
"""Largest `lookahead_hours` window of predict-upcoming."""


SCHEDULED_START_PAST: Final = timedelta(days=1)
"""How far in the past a `scheduled_start` may lie (a session that just began)."""

SCHEDULED_START_FUTURE: Final = timedelta(days=365)
"""How far ahead a `scheduled_start` may lie."""

MAX_UTC_OFFSET: Final = timedelta(hours=14)
"""Largest UTC offset a time may carry (the real ones span -12:00 ... +14:00)."""

MIN_YEAR: Final = 2000
"""Earliest year of any time a request carries (`scheduled_start`, `now`)."""

MAX_YEAR: Final = 2100
"""Latest year of any time a request carries (`scheduled_start`, `now`)."""

MAX_BODY_BYTES: Final = 2 * 1024 * 1024
"""Largest request body, in bytes (answered 413 beyond it). A full batch of
MAX_BATCH_SIZE sessions with the longest identifiers takes about 0.7 MB."""

PUBLIC_PATHS: Final = frozenset({"/livez", "/readyz"})
"""Endpoints answered without an API key even when FSP_API_KEY is set."""

METRICS_PATHS: Final = frozenset({"/metrics"})
"""Endpoints open without a key only when FSP_API_PUBLIC_METRICS is true."""

DOCS_PATHS: Final = frozenset(
    {"/", "/docs.json", "/schema.json", API_PREFIX + "/docs", API_PREFIX + "/openapi.json"}
)
"""Endpoints open without a key only when FSP_API_PUBLIC_DOCS is true (with the static
files of the documentation page, under /static_content/)."""

OTHER_ROUTE_LABEL: Final = "other"
"""The `endpoint` label /metrics gives every path that is no route of the service (one
label for all of them: a scan of random paths cannot grow the metrics)."""
