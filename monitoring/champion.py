"""The champion as monitoring sees it: its version, model type, the cut-off its training
data ended at (so that data can be rebuilt as the drift reference) and its holdout AUC
(what its live AUC is judged against), all read from the registry's version tags."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fsp.constants import CHAMPION_ALIAS
from fsp.errors import InvalidInput
from fsp.model_store import aliased_version

log = logging.getLogger(__name__)

UNKNOWN_MODEL_TYPE = "unknown"
DEFAULT_THRESHOLD = 0.5
"""The alert threshold assumed for a version registered without one."""


def tag_moment(text: str, tag: str) -> datetime:
    """An aware UTC datetime from a version tag written in ISO 8601 with an offset, or
    `InvalidInput` naming the tag."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(f"{tag} tag {text!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise InvalidInput(f"{tag} tag {text!r} has no UTC offset")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Champion:
    """The champion's identity and lineage (what its training data was)."""

    version: str
    model_type: str
    cutoff: datetime | None
    run_id: str
    threshold: float
    holdout_auc: float | None = None


def champion_from_tags(version: str, run_id: str, tags: dict[str, str]) -> Champion:
    """The champion's figures from its version tags (missing tags: their defaults)."""
    cutoff = tags.get("cutoff")
    holdout = tags.get("holdout_auc_roc")
    return Champion(
        version=version,
        model_type=tags.get("model_type", UNKNOWN_MODEL_TYPE),
        cutoff=tag_moment(cutoff, "cutoff") if cutoff else None,
        run_id=run_id,
        threshold=float(tags.get("alert_threshold", str(DEFAULT_THRESHOLD))),
        holdout_auc=float(holdout) if holdout else None,
    )


def champion_info(client: MlflowClient, name: str) -> Champion:
    """The champion version and its lineage tags, or NoChampion."""
    version = aliased_version(client, name, CHAMPION_ALIAS)
    return champion_from_tags(str(version.version), version.run_id or "", version.tags or {})


def model_types(
    client: MlflowClient, name: str, versions: Iterable[str], champion: Champion
) -> dict[str, str]:
    """Each version's model type from its tags; a version the registry cannot describe
    (deleted since it scored) is logged and called 'unknown' rather than failing the
    performance log of the others."""
    types = {champion.version: champion.model_type}
    for version in versions:
        if version in types:
            continue
        try:
            tags = client.get_model_version(name, version).tags or {}
        except MlflowException as exc:
            log.warning("model type of version %s unknown: the registry says %s", version, exc)
            tags = {}
        types[version] = tags.get("model_type", UNKNOWN_MODEL_TYPE)
    return types
