"""The two public tracking endpoints of the alert emails, mounted with the read
endpoints under /api/first-session/:

- GET /t/{token}.gif: the email's 1×1 image. Always the same transparent GIF (200,
  image/gif, no-store), whatever the token: known, repeated, unknown or malformed;
  a known token's first open is stored.
- GET /r/{token}: a link of the email. 302 to the link's target, storing the first
  click; an unknown or malformed token leads to the platform's page
  (FSP_PLATFORM_URL) and writes nothing.

An email client fetches these without any key, so they are open to anyone
(`TRACKING_PATHS` in the access rule) but bounded: a token's length and alphabet are
checked before any database access, and nothing about the token, known or not, ever
changes the answer's bytes (a forged token learns nothing). What they store is
`alerting.tracking`'s business; a database that does not answer only means the open
or click goes unrecorded."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Final, TypeVar

import bentoml
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, Path
from fastapi.responses import RedirectResponse, Response

from alerting.tracking import PIXEL_GIF, record_click, record_open, well_formed
from fsp.errors import FspError
from fsp.settings import get_settings
from service.config import TRACKING_PREFIXES

log = logging.getLogger(__name__)

OPEN_PATH: Final = "/t/{token:path}"
CLICK_PATH: Final = "/r/{token:path}"
"""Any path below /t/ and /r/ is answered (a mangled link with a slash in it too): the
image always, a redirect always; only a well-formed known token is recorded."""
GIF_SUFFIX: Final = ".gif"
TRACKING_PATHS: Final = TRACKING_PREFIXES

NO_STORE: Final = {
    "Cache-Control": "no-store, max-age=0",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
"""Neither the image nor the redirect may be cached (each open or click must reach
us), and the tracking URL is never passed on as a referrer."""

Token = Annotated[str, Path(description="the email's tracking token (opaque)")]

T = TypeVar("T")


def utc_now() -> datetime:
    """The moment an open or click is recorded as (the request's arrival)."""
    return datetime.now(UTC)


def _with_connection(work: Callable[..., T], default: T) -> T:
    """`work(conn)` on one of the worker's pooled connections; `default` when the
    service is starting or the database does not answer (logged, never raised: the
    email's reader gets the same answer either way)."""
    try:
        pool = bentoml.get_current_service().worker.pool
        with pool.connection() as conn:
            return work(conn)
    except (BentoMLException, FspError) as exc:
        log.warning("tracking not recorded: %s", exc)
        return default


def pixel() -> Response:
    """The same 1×1 transparent GIF for every request."""
    return Response(PIXEL_GIF, media_type="image/gif", headers=NO_STORE)


def email_opened(token: Token) -> Response:
    """The email's tracking image: stores the first open of a known token."""
    token, gif = token.removesuffix(GIF_SUFFIX), token.endswith(GIF_SUFFIX)
    if gif and well_formed(token):
        at = utc_now()
        _with_connection(lambda conn: record_open(conn, token, at), False)
    return pixel()


def link_clicked(token: Token) -> RedirectResponse:
    """A link of the email: stores the first click of a known token and redirects to
    its target; an unknown or malformed token goes to the platform's page."""
    fallback = get_settings().platform_url
    target = fallback
    if well_formed(token):
        at = utc_now()
        target = _with_connection(lambda conn: record_click(conn, token, at, fallback), fallback)
    return RedirectResponse(target, status_code=302, headers=NO_STORE)


def add_tracking(app: FastAPI) -> None:
    """Serve both endpoints from `app` (the read endpoints' app), each as a route of its
    own: FastAPI 0.150's `include_router` hides an included router's paths from the
    service's route labels (see service.dashboard.add_dashboard)."""
    app.add_api_route(
        OPEN_PATH,
        email_opened,
        methods=["GET"],
        response_class=Response,
        responses={200: {"content": {"image/gif": {}}, "description": "a 1×1 transparent GIF"}},
    )
    app.add_api_route(
        CLICK_PATH,
        link_clicked,
        methods=["GET"],
        response_class=RedirectResponse,
        status_code=302,
        responses={302: {"description": "to the link's target, or the platform's page"}},
    )
