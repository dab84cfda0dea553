"""Whether the champion should be retrained, and asking for it.

A retrain is warranted when the champion's live AUC over enough rated sessions is
significantly below its own holdout AUC or below the fixed floor (`live_check`), or when
more than the configured share of compared features drifted over enough scored sessions.
The request is the event `fsp.model.retrain-requested` (a prefect.yaml trigger turns it
into a training run). A model already trained as of the same moment is never trained
again, which keeps a repeated monitoring run from training twice."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from fsp.errors import InvalidInput
from fsp.settings import Settings
from monitoring.champion import tag_moment
from monitoring.reports import SavedReport, drift_of

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

RETRAIN_EVENT: Final = "fsp.model.retrain-requested"


def live_reasons(row: dict[str, Any], settings: Settings) -> list[str]:
    """Why one performance row warrants a retrain: only the champion's, over enough
    rated sessions, with a live check."""
    check = row.get("live_check")
    if not (row["is_champion"] and check and row["sample_size"] >= settings.monitor_min_labelled):
        return []
    auc, (low, high), n = check["live_auc"], check["interval"], row["sample_size"]
    reasons = []
    if check["below_champion"]:
        reasons.append(
            f"live AUC {auc:.4f} (95% interval {low:.4f}-{high:.4f}, {n}"
            f" rated sessions) of version {row['model_version']} is below its own holdout"
            f" AUC {check['champion_holdout_auc']:.4f} minus {check['tolerance']}"
        )
    if check["below_floor"]:
        reasons.append(
            f"live AUC {auc:.4f} of version {row['model_version']} is below the floor"
            f" {settings.monitor_auc_floor} ({n} rated sessions)"
        )
    return reasons


def drift_reasons(saved: list[SavedReport], settings: Settings) -> list[str]:
    """Why the drift report warrants a retrain: drifted, over enough scored sessions."""
    drift = drift_of(saved)
    if drift is None or not drift.figures["drifted"]:
        return []
    if drift.current_rows < settings.monitor_min_drift_rows:
        log.info(
            "drift not acted on: %d scored sessions, fewer than the %d required",
            drift.current_rows,
            settings.monitor_min_drift_rows,
        )
        return []
    return [
        f"{drift.figures['drift_share']:.0%} of features drifted"
        f" ({', '.join(drift.figures['drifted_columns'])}), more than the configured"
        f" {settings.monitor_drift_share:.0%}"
    ]


def retrain_reasons(
    performance: list[dict[str, Any]], saved: list[SavedReport], settings: Settings
) -> list[str]:
    """Why a retrain is warranted (empty: it is not)."""
    reasons = [reason for row in performance for reason in live_reasons(row, settings)]
    return reasons + drift_reasons(saved, settings)


def trained_as_of(client: MlflowClient, name: str, moment: datetime) -> str | None:
    """A registered version already trained with this cutoff (then retraining is a no-op).
    A version whose cutoff tag cannot be read is logged and passed over."""
    for version in client.search_model_versions(f"name='{name}'"):
        cutoff = (version.tags or {}).get("cutoff")
        if not cutoff:
            continue
        try:
            if tag_moment(cutoff, "cutoff") == moment:
                return str(version.version)
        except InvalidInput as exc:
            log.warning("version %s passed over: %s", version.version, exc)
    return None


def request_retrain(name: str, moment: datetime, reasons: list[str], version: str) -> bool:
    """Emit the event the prefect.yaml trigger turns into a training run. An event is a
    notification: when it cannot be sent the failure is logged and monitoring goes on
    (the flow's own retrain, when asked for, still runs)."""
    from prefect.events import emit_event  # only emitting needs Prefect: the rest is pure

    try:
        event = emit_event(
            event=RETRAIN_EVENT,
            resource={"prefect.resource.id": f"fsp.model.{name}", "prefect.resource.name": name},
            payload={"as_of": moment.isoformat(), "reasons": reasons, "champion": version},
        )
    except Exception as exc:  # any failure of the event client: logged, never fatal
        log.warning("retrain event %s not emitted for %s: %s", RETRAIN_EVENT, name, exc)
        return False
    if event is None:
        log.warning("retrain event %s not emitted: no Prefect events client", RETRAIN_EVENT)
    return event is not None
