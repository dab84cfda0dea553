"""The retraining flow: what the `fsp.model.retrain-requested` event (from the
monitoring flow) runs through its prefect.yaml trigger, and what `fsp monitor`
runs directly. Train as of the moment → the promotion gate decides → a promotion
rebuilds the Bento of the new champion."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow

from flows.common import parse_moment
from fsp.settings import get_settings


@flow(name="fsp-retrain", log_prints=True)
def retrain_flow(as_of: str | datetime | None = None) -> dict[str, Any]:
    """Retrain as of `as_of` (default: now); package the Bento when the gate promotes.
    A version already trained as of that moment is not trained again (idempotent)."""
    from flows.monitor import retrain_and_package

    return retrain_and_package(get_settings(), parse_moment(as_of, "as_of"))
