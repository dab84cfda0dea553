"""What a flow run shows in the Prefect UI: real score, reconcile, monitor and retrain
runs (real PostgreSQL, a private copy of the shared MLflow store, Prefect's test API),
their markdown artifacts read back from the Prefect API, and the figures shown equal to
the figures the flows returned."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import Artifact

from flows.demo import simulate_platform_outcomes
from flows.monitor import monitor_flow
from flows.reconcile import reconcile_flow
from flows.retrain import retrain_flow
from flows.score import score_flow
from fsp.constants import RISK_BANDS
from fsp.db import connect
from fsp.settings import get_settings
from tests.conftest import DEMO_NOW, create_database, drop_database, seed_demo
from tests.flow_fixtures import point_at

pytestmark = pytest.mark.services

WEEK = 24 * 7
LATER = DEMO_NOW + timedelta(days=8)


@pytest.fixture
def world_copy(server_url, trained_world, tmp_path, monkeypatch):
    """A database seeded like the shared world, with a private copy of its MLflow store."""
    url = create_database(server_url)
    seed_demo(url)
    point_at(monkeypatch, url, tmp_path / "state", trained_world["state_dir"])
    monkeypatch.setenv("FSP_MONITOR_MIN_LABELLED", "20")
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()
    drop_database(server_url, url)


def run(flow, **parameters) -> tuple[dict[str, Any], Artifact]:
    """Run a flow; return what it returned and the one artifact its run published."""
    state = flow(**parameters, return_state=True)
    result = state.result()
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(flow_run_filter=runs)
    return result, artifact


def tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Each `## section`'s markdown table as rows of {header: cell}."""
    found: dict[str, list[dict[str, str]]] = {}
    for part in re.split(r"^## ", markdown, flags=re.MULTILINE)[1:]:
        title, _, body = part.partition("\n")
        lines = [ln for ln in body.splitlines() if ln.startswith("|")]
        if len(lines) < 2:
            continue
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
        found[title.strip()] = [dict(zip(header, row, strict=True)) for row in rows]
    return found


def figure(text: str) -> float | None:
    return None if text == "n/a" else float(text)


def test_score_and_reconcile_runs_show_what_they_did(world_copy):
    scored, artifact = run(score_flow, now=DEMO_NOW.isoformat(), lookahead_hours=WEEK)
    assert artifact.key == "fsp-score" and artifact.type == "markdown"
    levels = {
        r["risk level"]: int(r["sessions"])
        for r in tables(artifact.data)["Sessions scored by risk level"]
    }
    assert list(levels) == [band for band, _ in RISK_BANDS]
    assert {k: v for k, v in levels.items() if v} == scored["risk_levels"]
    assert sum(levels.values()) == scored["sessions_scored"] > 100
    assert f"{scored['sessions_scored']} scored" in artifact.data
    assert f"{scored['above_threshold']} at or above the threshold" in artifact.data

    with connect(world_copy) as conn:
        simulate_platform_outcomes(conn, DEMO_NOW, LATER)
    reconciled, artifact = run(reconcile_flow, now=LATER.isoformat())
    assert artifact.key == "fsp-reconcile"
    rows = tables(artifact.data)["Predictions reconciled"]
    shown = {r["figure"]: figure(r["value"]) for r in rows}
    assert shown["predictions carrying their outcome"] == reconciled["reconciled"] > 50
    assert shown["predictions given their outcome in this run"] == reconciled["rows_changed"]
    assert shown["share of predictions that were right"] == pytest.approx(
        reconciled["prediction_accuracy"], abs=1e-4
    )


def test_a_monitor_run_shows_its_figures_decision_and_reports(world_copy):
    score_flow(now=DEMO_NOW.isoformat(), lookahead_hours=WEEK)
    with connect(world_copy) as conn:
        simulate_platform_outcomes(conn, DEMO_NOW, LATER)
    reconcile_flow(now=LATER.isoformat())

    summary, artifact = run(monitor_flow, now=LATER.isoformat(), window_days=28, retrain=False)

    assert artifact.key == "fsp-monitor"
    shown = tables(artifact.data)
    [live] = shown["Live performance"]
    [figures] = summary["performance"]
    check = figures["live_check"]
    assert live["version"] == summary["champion_version"] == figures["model_version"]
    assert int(live["rated sessions"]) == figures["sample_size"] == summary["labelled_sessions"]
    assert figure(live["live AUC"]) == pytest.approx(figures["auc_roc"], abs=1e-4)
    assert figure(live["95% low"]) == pytest.approx(check["interval"][0], abs=1e-4)
    assert figure(live["95% high"]) == pytest.approx(check["interval"][1], abs=1e-4)
    assert figure(live["holdout AUC"]) == pytest.approx(check["champion_holdout_auc"], abs=1e-4)

    drift = summary["reports"]["data_drift"]
    scores = {r["feature"]: figure(r["drift score"]) for r in shown["Drift"]}
    assert scores == pytest.approx(drift["feature_scores"], abs=1e-4)
    assert {r["feature"] for r in shown["Drift"] if r["drifted"] == "yes"} == set(
        drift["drifted_columns"]
    )
    assert f"Drift share {drift['drift_share']:.4f}" in artifact.data

    decision = artifact.data.split("## Decision", 1)[1].split("## Reports", 1)[0]
    if summary["retrain_reasons"]:
        assert all(reason in decision for reason in summary["retrain_reasons"])
    else:
        assert "No retrain warranted." in decision
    reports = artifact.data.split("## Reports", 1)[1]
    for report in summary["reports"].values():
        assert report["html"] in reports
    assert summary["mlflow_run_id"] in reports


def test_a_repeated_retrain_request_shows_why_nothing_was_trained(world_copy, trained_world):
    result, artifact = run(retrain_flow, as_of=DEMO_NOW.isoformat())
    version = str(trained_world["train"]["version"])
    assert result == {
        "skipped": f"version {version} was already trained as of {DEMO_NOW.isoformat()}"
    }
    assert artifact.key == "fsp-retrain" and result["skipped"] in artifact.data


def test_the_training_run_shows_its_candidates_and_the_gate(trained_world):
    trained = trained_world["train"]
    with get_client(sync_client=True) as client:
        published = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fsp-train"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[trained_world["train_run_id"]])),
        )
    [artifact] = published  # other tests train worlds of their own as of the same moment
    assert f"registered as version {trained['version']};" in artifact.data
    assert trained["cutoff"] in artifact.data
    rows = tables(artifact.data)["Candidates (holdout AUC)"]
    assert {r["candidate"]: figure(r["holdout AUC"]) for r in rows} == trained["candidates"]
    assert [r["candidate"] for r in rows if r["chosen"] == "yes"] == [trained["model"]]
    assert trained["gate_reason"] in artifact.data
