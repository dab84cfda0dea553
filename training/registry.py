"""MLflow: the single source of truth for models (runs, versions, aliases, lineage).

The MLflow client is passed in everywhere so a test can hand in a client on a
temporary store."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from fsp.constants import CHALLENGER_ALIAS, CHAMPION_ALIAS, RISK_BANDS
from fsp.model_store import (
    alias_version,
    client_uri,
    load_sklearn,
    store_errors,
    version_or_raise,
)
from fsp.settings import PROJECT_ROOT, Settings

PIP_REQUIREMENTS = (
    "scikit-learn==1.9.1",
    "pandas==2.3.3",
    "numpy==2.4.6",
    "skops==0.16.0",
)


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

    from fsp.estimators import positive_proba

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
        # On SQL stores search_model_versions leaves each version's aliases empty; the
        # registered model holds them all (alias -> version).
        aliases = client.get_registered_model(name).aliases if versions else {}
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version)):
        rows.append(
            {
                "version": v.version,
                "aliases": sorted(a for a, held in aliases.items() if str(held) == str(v.version)),
                **{k: v.tags.get(k) for k in shown if k in v.tags},
            }
        )
    return rows
