"""The retraining flow: what the `fsp.model.retrain-requested` event (from the
monitoring flow) runs through its prefect.yaml trigger, and what `fsp monitor`
runs directly. Train as of the moment → the promotion gate decides → a promotion
rebuilds the Bento of the new champion. A version already trained as of that moment
is not trained again, so a repeated request is a no-op."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Final

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish, section
from flows.common import parse_moment
from flows.retrying import RETRYING
from flows.train import candidate_sections, train_flow
from fsp.model_store import make_client
from fsp.settings import Settings, get_settings
from monitoring.decision import trained_as_of

log = logging.getLogger(__name__)

ARTIFACT_KEY: Final = "fsp-retrain"


def package_champion_bento(settings: Settings) -> dict[str, Any]:
    """Rebuild the Bento of the (new) champion (`service.packaging`); when BentoML is not
    installed the step is skipped, logged, and the reason returned."""
    try:
        # BentoML takes seconds to import: only a promotion (or the demo) pays for it.
        from service.packaging import package_champion
    except ImportError as exc:
        log.warning("Bento not rebuilt: service.packaging is not available (%s)", exc)
        return {"skipped": f"service.packaging is not available: {exc}"}
    return dict(package_champion(settings))


@task(cache_policy=NO_CACHE, **RETRYING)
def find_trained(settings: Settings, moment: datetime) -> str | None:
    """A version already trained as of `moment` (then there is nothing to do)."""
    return trained_as_of(make_client(settings), settings.model_name, moment)


@task(cache_policy=NO_CACHE)
def package_bento(settings: Settings) -> dict[str, Any]:
    """The new champion's Bento."""
    return package_champion_bento(settings)


def retrained(summary: dict[str, Any]) -> dict[str, Any]:
    """What the retraining flow reports of a training run."""
    return {
        "version": str(summary["version"]),
        "promoted": bool(summary["promoted"]),
        "gate_reason": summary["gate_reason"],
        "holdout_auc": summary["holdout_auc"],
        "model": summary["model"],
        "candidates": summary["candidates"],
        "threshold": summary["threshold"],
        "threshold_rule": summary["threshold_rule"],
    }


def retrain_and_package(settings: Settings, moment: datetime) -> dict[str, Any]:
    """Training flow as of `moment` → promotion gate → Bento rebuilt on promotion."""
    existing = find_trained(settings, moment)
    if existing is not None:
        return {"skipped": f"version {existing} was already trained as of {moment.isoformat()}"}
    result = retrained(train_flow(as_of=moment))
    if result["promoted"]:
        result["bento"] = package_bento(settings)
    return result


def bento_line(bento: dict[str, Any] | None) -> str:
    if bento is None:
        return "No Bento built (the champion did not change)."
    if "skipped" in bento:
        return f"Bento not built: {bento['skipped']}."
    return f"Bento rebuilt: {bento.get('bento_tag', 'built')}."


def publish_retraining(moment: datetime, result: dict[str, Any]) -> None:
    """The run's artifact: skipped (and why), or the candidates, the gate and the Bento."""
    title = f"Retraining as of {moment.isoformat()}"
    if "skipped" in result:
        sections = [f"Nothing trained: {result['skipped']}."]
    else:
        bento = section("Bento", bento_line(result.get("bento")))
        sections = [*candidate_sections(result), bento]
    publish(ARTIFACT_KEY, title, sections, "retraining: candidates, gate decision, Bento")


@flow(name="fsp-retrain", log_prints=True)
def retrain_flow(as_of: str | datetime | None = None) -> dict[str, Any]:
    """Retrain as of `as_of` (default: now); package the Bento when the gate promotes.
    A version already trained as of that moment is not trained again (idempotent)."""
    logger = get_run_logger()
    moment = parse_moment(as_of, "as_of")
    result = retrain_and_package(get_settings(), moment)
    if "skipped" in result:
        logger.info("retraining skipped: %s", result["skipped"])
    else:
        logger.info(
            "retrained as of %s: version %s (%s, holdout AUC %.4f) %s: %s",
            moment.isoformat(),
            result["version"],
            result["model"],
            result["holdout_auc"],
            "promoted" if result["promoted"] else "not promoted",
            result["gate_reason"],
        )
    publish_retraining(moment, result)
    return result
