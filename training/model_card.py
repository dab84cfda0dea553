"""The model card and the version notes written into the MLflow registry, as text.

Pure functions from figures to Markdown: `training.registry` reads the figures from
the registry (the champion's tags, its run's metrics and params) and writes the text
back, so the registered model's description always describes the version that
serves, and each version's description says why it serves or does not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

MODEL_OWNERS: Final = (
    "ML engineering, first-session risk: training, the promotion gate, this card",
    "Tutor success operations: the alert emails and the advice tutors receive",
)
"""Who answers for the model; the card names them (the one place they are kept)."""

PURPOSE: Final = (
    "Before a tutor's first session with a new student, this model estimates the"
    " probability that the session goes badly (rated below {poor} stars). Sessions whose"
    " probability reaches the alert threshold get an advice email to the tutor before the"
    " session; every scored session gets a risk band ({bands}). The probabilities are"
    " calibrated on a time-ordered holdout, so a band means the same for every version."
)

LIMITS: Final = (
    "It learns only from first sessions that were rated; sessions without a rating are"
    " not in its labels, so if some tutors or students rate less often it inherits that.",
    "It knows the tutor's history on the platform, the start time in the student's zone,"
    " the subject and the student's age: nothing about the student beyond age, the lesson"
    " plan, or a tutor's experience elsewhere.",
    "A tutor with little history is scored mostly from platform-wide priors (the rates are"
    " shrunk toward them), so a new tutor's score says more about the platform than about"
    " the tutor.",
    "A subject seen fewer than the encoder's minimum count in training shares one 'other'"
    " level; a subject first met after training scores as 'other'.",
    "Its figures hold for the holdout period; seasons, new subjects or platform changes"
    " can move them. Live AUC and precision and input drift are monitored after training.",
    "Alerted tutors may act on the advice, so outcomes of alerted sessions understate the"
    " risk the model saw; an alert holdout keeps a fair comparison.",
    "Not for: judging, ranking, paying or disciplining tutors; deciding who may teach or"
    " whom; anything shown to students; sessions other than a tutor's first with a new"
    " student.",
)


@dataclass(frozen=True)
class CardFigures:
    """What the card states about the serving version (all read from the registry)."""

    model_name: str
    version: str
    model_type: str
    window: tuple[str, str]
    cutoff: str
    n_train: str
    n_holdout: str
    holdout_days: str
    metrics: Mapping[str, float]
    threshold: float
    threshold_rule: str
    precision_target: float
    bands: Sequence[tuple[str, float]]
    poor_below: int
    feature_docs: Mapping[str, str]
    run_id: str
    data_fingerprint: str
    git_commit: str
    latest_note: str = ""
    owners: Sequence[str] = field(default=MODEL_OWNERS)


@dataclass(frozen=True)
class GateFigures:
    """The promotion gate's decision on one version, with the numbers it compared."""

    promoted: bool
    reason: str
    challenger_auc: str
    champion_auc: str
    champion_version: str
    margin: str


@dataclass(frozen=True)
class VersionFigures:
    """One registered version: what it is, how it did, and what became of it."""

    version: str
    model_type: str
    window: str
    cutoff: str
    metrics: Mapping[str, str]
    threshold: str
    threshold_rule: str
    run_id: str
    is_champion: bool
    decision: str
    decision_reason: str
    gate: GateFigures | None
    replaced_by: str = ""


METRIC_LABELS: Final = (
    ("auc_roc", "ROC AUC"),
    ("pr_auc", "PR AUC (average precision)"),
    ("brier", "Brier score (lower is better)"),
    ("precision", "precision at the alert threshold"),
    ("recall", "recall at the alert threshold"),
    ("f1", "F1 at the alert threshold"),
    ("positive_rate", "share of poor first sessions"),
)


def _bands_text(bands: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"{name} from {lower:.2f}" for name, lower in bands)


def _metrics_lines(metrics: Mapping[str, float]) -> list[str]:
    rows = ["| metric | value |", "|---|---|"]
    rows += [f"| {label} | {metrics[key]:.4f} |" for key, label in METRIC_LABELS if key in metrics]
    counts = [metrics.get(k) for k in ("tp", "fp", "fn", "tn")]
    if all(c is not None for c in counts):
        tp, fp, fn, tn = (int(c or 0) for c in counts)
        rows.append(f"| alerts right / wrong / missed / quiet | {tp} / {fp} / {fn} / {tn} |")
    return rows


def threshold_rule_text(rule: str, threshold: float, precision_target: float) -> str:
    """The alert rule in words, for the rule name training recorded."""
    if rule.startswith("precision>="):
        how = (
            f"the lowest threshold at which the holdout precision reaches {precision_target:.2f}"
            " with at least 10 alerts (the most poor sessions caught at that precision)"
        )
    else:
        how = (
            f"the holdout precision never reached {precision_target:.2f} with 10 alerts, so"
            " the threshold with the best F1 on the holdout"
        )
    return f"Alert when the probability is at least **{threshold:.4f}** ({rule}): {how}."


DESCRIPTION_MAX_CHARS: Final = 5000
"""MLflow's SQL stores keep at most this many characters of a description."""


def model_card(f: CardFigures) -> str:
    """The registered model's description: the serving version's card in Markdown. When
    the inputs' meanings would push it past what the store keeps, they are named only
    (their meanings are in the run's features.json)."""
    full = _card_text(f, [f"- `{name}`: {doc}" for name, doc in f.feature_docs.items()])
    if len(full) <= DESCRIPTION_MAX_CHARS:
        return full
    names = ", ".join(f"`{name}`" for name in f.feature_docs)
    short = _card_text(f, [f"{names} (their meanings: the run's artifact features.json)"])
    return (
        short if len(short) <= DESCRIPTION_MAX_CHARS else short[: DESCRIPTION_MAX_CHARS - 2] + "…\n"
    )


def _card_text(f: CardFigures, inputs: list[str]) -> str:
    purpose = PURPOSE.format(poor=f.poor_below, bands=_bands_text(f.bands))
    lines = [
        f"# {f.model_name}: model card (champion version {f.version})",
        "",
        "## Purpose",
        purpose,
        "",
        "## Inputs",
        "The raw context of one session, as known at its start (the encoding is inside the model):",
        *inputs,
        "",
        "## Training window",
        f"Version {f.version} ({f.model_type}) learned from first sessions starting"
        f" {f.window[0]} .. {f.window[1]} (labels known before {f.cutoff}): {f.n_train} to"
        f" train, the last {f.holdout_days} days ({f.n_holdout} sessions) held out to judge.",
        "",
        "## Metrics on the holdout",
        *_metrics_lines(f.metrics),
        "",
        "## Threshold rule",
        threshold_rule_text(f.threshold_rule, f.threshold, f.precision_target),
        f"Risk bands: {_bands_text(f.bands)}.",
        "",
        "## Limits",
        *[f"- {limit}" for limit in LIMITS],
        "",
        "## Owners",
        *[f"- {owner}" for owner in f.owners],
        "",
        "## Lineage",
        f"Run `{f.run_id}`, data fingerprint `{f.data_fingerprint}`, commit `{f.git_commit}`.",
    ]
    if f.latest_note:
        lines += ["", "## Latest training", f.latest_note]
    return "\n".join(lines) + "\n"


def no_champion_card(model_name: str, latest_note: str) -> str:
    """The description while no version serves (every candidate rejected or none yet)."""
    return (
        f"# {model_name}: model card\n\nNo version is the champion yet: nothing is served."
        f"\n\n## Latest training\n{latest_note}\n"
    )


def gate_text(gate: GateFigures) -> str:
    """The gate's decision with the figures it compared, in one or two sentences."""
    verdict = "promoted" if gate.promoted else "not promoted"
    margin = f", with a required margin of {gate.margin}" if gate.margin else ""
    if not gate.champion_version:
        return f"Gate: {verdict}: {gate.reason} (holdout AUC {gate.challenger_auc})."
    return (
        f"Gate: {verdict}: {gate.reason}. Compared on the same holdout: this version's AUC"
        f" {gate.challenger_auc} against champion version {gate.champion_version}'s"
        f" {gate.champion_auc}{margin}."
    )


def _status_line(v: VersionFigures) -> str:
    if v.is_champion:
        return f"**Status: champion** (serving). Why: {v.decision_reason or 'promoted'}."
    if v.replaced_by:
        return (
            f"**Status: retired**, replaced by version {v.replaced_by}. It had been promoted"
            f" because: {v.decision_reason or 'promoted'}."
        )
    if v.decision == "rejected":
        return f"**Status: rejected** (never served). Why: {v.decision_reason}."
    return f"**Status: {v.decision or 'registered'}**."


def version_description(v: VersionFigures) -> str:
    """A version's description: its fate and why, then what it is and how it did."""
    metrics = ", ".join(f"{key} {value}" for key, value in v.metrics.items())
    lines = [_status_line(v), ""]
    if v.gate is not None:
        lines += [gate_text(v.gate), ""]
    lines += [
        f"Model: {v.model_type}; trained on first sessions {v.window} (cutoff {v.cutoff});"
        f" run `{v.run_id}`.",
        f"Holdout: {metrics}.",
        f"Alert threshold {v.threshold} ({v.threshold_rule}).",
    ]
    return "\n".join(lines) + "\n"


def latest_note(version: str, gate: GateFigures) -> str:
    """One line on the most recent training run, for the card."""
    return f"Version {version}: {gate_text(gate)}"
