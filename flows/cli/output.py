"""What a command prints: the JSON scripts read (stdout, unchanged from the first CLI),
Rich tables people read (stdout), and a spinner on stderr while a long step runs, so
`--json` output stays parseable and one-line failures stay one line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fsp.constants import CHALLENGER_ALIAS

MISSING = "—"


def print_json(result: Any) -> None:
    """The machine output: indented JSON, anything else (datetimes, paths) as text."""
    print(json.dumps(result, indent=2, default=str))


def stdout_console() -> Console:
    """Tables on stdout; no guessing of colours in numbers, no wrapping of long paths."""
    return Console(highlight=False, soft_wrap=False)


def format_value(value: Any) -> str:
    """A cell: floats to 4 decimals, booleans as yes/no, None as a dash."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{round(value, 4):g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v) for v in value) or MISSING
    return str(value)


def _is_rows(value: Any) -> bool:
    """A non-empty list of records: shown as a table of its own."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def flatten(result: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every scalar of a nested mapping; record lists stay whole."""
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def record_table(title: str, rows: Sequence[Mapping[str, Any]]) -> Table:
    """One row per record, one column per key any record has (in first-seen order)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*(format_value(row.get(c)) for c in columns))
    return table


def result_tables(title: str, result: Mapping[str, Any]) -> list[Table]:
    """A two-column table of the result's figures, then one table per list of records."""
    figures = Table(title=title, box=box.SIMPLE, show_header=False, title_justify="left")
    figures.add_column(style="bold")
    figures.add_column()
    records: list[Table] = []
    for key, value in flatten(result):
        if _is_rows(value):
            records.append(record_table(key.replace("_", " "), value))
        else:
            figures.add_row(key.replace("_", " "), format_value(value))
    return [figures, *records]


def show_result(title: str, result: Any, as_json: bool) -> None:
    """The command's result: JSON when asked, else tables."""
    if as_json:
        print_json(result)
        return
    console = stdout_console()
    if _is_rows(result):
        console.print(record_table(title, result))
    elif isinstance(result, Mapping):
        for table in result_tables(title, result):
            console.print(table)
    else:
        console.print(format_value(result))


@contextmanager
def progress(message: str) -> Iterator[None]:
    """A spinner on stderr while a step runs, then a tick with its duration; nothing at
    all when stderr is not a terminal (logs, pipes, tests stay exactly as they were)."""
    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:
        yield
        return
    started = time.perf_counter()
    with console.status(message):
        yield
    console.print(f"[green]✓[/green] {message} [dim]({time.perf_counter() - started:.1f} s)[/dim]")


def fail(command: str, reason: object) -> None:
    """The one line an expected failure ends with."""
    print(f"fsp {command}: {reason}", file=sys.stderr)


MODEL_COLUMNS = (
    ("version", "version"),
    ("aliases", "aliases"),
    ("model", "model_type"),
    ("holdout AUC", "holdout_auc_roc"),
    ("threshold", "alert_threshold"),
    ("cut-off", "cutoff"),
    ("decision", "promotion.decision"),
)


def _number(value: Any) -> Any:
    """A registry tag holding a decimal number, as a float (tags are text)."""
    if isinstance(value, str) and "." in value:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def models_table(rows: Sequence[Mapping[str, Any]], name: str) -> Table:
    """`fsp models`: one line per version, its aliases first, then why it was (not)
    promoted (the promotion's reason, else the gate's)."""
    table = Table(title=f"Registered versions of {name}", box=box.SIMPLE_HEAD, title_justify="left")
    for header, _ in MODEL_COLUMNS:
        # whole words, never cut with "…": an alias or a decision read half is misread
        table.add_column(header, style="bold" if header == "aliases" else None, overflow="fold")
    table.columns[1].min_width = len(CHALLENGER_ALIAS)
    table.add_column("reason", overflow="fold", ratio=1)
    for row in rows:
        cells = [format_value(_number(row.get(key))) for _, key in MODEL_COLUMNS]
        cells[1] = "\n".join(row.get("aliases") or []) or MISSING  # one alias a line
        reason = row.get("promotion.reason") or row.get("gate.reason")
        table.add_row(*cells, format_value(reason))
    return table


def show_models(rows: Sequence[Mapping[str, Any]], name: str, as_json: bool) -> None:
    """The registry listing: JSON when asked, else the versions table (or a hint)."""
    if as_json:
        print_json(rows)
    elif not rows:
        stdout_console().print(f"no registered versions of {name} yet (fsp train makes one)")
    else:
        stdout_console().print(models_table(rows, name))
