"""What a flow run did, published to the Prefect UI: one markdown artifact per run, under
a key shared by the runs of the same flow (the UI's Artifacts page lists a key's runs
side by side). Every flow builds its markdown from its own summary with the helpers
here, so the figures shown are the figures the flow returned."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from fsp.errors import InvalidInput

KEY_PATTERN: Final = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
"""Prefect accepts only lowercase letters, digits and dashes in an artifact key."""
MISSING: Final = "n/a"
"""How a figure that does not exist (no labels, no reference) is shown."""


def artifact_key(key: str) -> str:
    """The key itself, or `InvalidInput` naming it when Prefect would refuse it."""
    if not KEY_PATTERN.match(key):
        raise InvalidInput(
            f"artifact key {key!r} must be lowercase letters, digits and dashes, e.g. 'fsp-score'"
        )
    return key


def cell(value: Any) -> str:
    """A figure as a table cell: floats to 4 decimals, booleans as yes/no, None as n/a.
    Pipes and line breaks are escaped so a reason text cannot break the table."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (the Prefect UI renders it)."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(" --- " for _ in headers) + "|",
    ]
    lines.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return "\n".join(lines)


def bullet_list(items: Iterable[str], empty: str) -> str:
    """Markdown bullets, or the `empty` sentence when there are none."""
    lines = [f"- {item}" for item in items]
    return "\n".join(lines) if lines else empty


def section(title: str, body: str) -> str:
    return f"## {title}\n\n{body}"


def publish(key: str, title: str, sections: Sequence[str], description: str) -> None:
    """Create the run's markdown artifact, linked to the current flow run (called from a
    synchronous flow, Prefect creates it before returning)."""
    from prefect.artifacts import create_markdown_artifact  # only publishing needs Prefect

    markdown = "\n\n".join([f"# {title}", *sections])
    create_markdown_artifact(markdown=markdown, key=artifact_key(key), description=description)
