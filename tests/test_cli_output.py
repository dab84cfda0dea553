"""What `fsp` prints, as a user runs it (real subprocesses): its version, help with a
description and a default for every option, tables by default and the same JSON as
before with `--json`, the registry's aliases, a malformed command line in one line, and
no warning on a clean run. The help of each command is rendered in-process by Typer's
runner (the same app and the same Rich panels, without a Python start per command);
`fsp --help` itself runs as a subprocess."""

from __future__ import annotations

import json
import re
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app
from fsp.constants import MONITOR_WINDOW_DAYS
from tests.conftest import DEMO_NOW, create_database, drop_database, seed_demo
from tests.test_cli_training import _env, run_fsp

WIDE = {"COLUMNS": "200"}  # help and tables on one line each, as on a wide terminal
COMMANDS = (
    ("db", "upgrade"),
    ("demo-data",),
    ("train",),
    ("promote",),
    ("models",),
    ("package",),
    ("serve",),
    ("score",),
    ("alerts",),
    ("reconcile",),
    ("monitor",),
    ("demo",),
)
SCORE_KEYS = {
    "now",
    "lookahead_hours",
    "model_version",
    "alert_threshold",
    "sessions_scored",
    "rows_changed",
    "above_threshold",
    "risk_levels",
    "sessions_skipped",
}


def _click_command(path: tuple[str, ...]) -> Any:
    """The command Typer built for `fsp <path>` (its help and parameters)."""
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _help(*path: str) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # the text, whatever the panel's line breaks


# --- without services ------------------------------------------------------------------


def test_version_is_the_installed_package_version():
    result = run_fsp("--version", env={})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fsp {version('first-session-risk')}"


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p))
def test_help_describes_the_command_and_every_option(path: tuple[str, ...]):
    command = _click_command(path)
    text = _help(*path)
    assert command.help and " ".join(command.help.split()) in text
    for param in command.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        assert param.help and " ".join(param.help.split()) in text, param.name
        if not param.is_flag:
            custom = param.show_default if isinstance(param.show_default, str) else None
            default = f"({custom})" if custom else getattr(param.default, "value", param.default)
            assert f"[default: {default}]" in text, (param.name, text)


def test_the_defaults_are_the_ones_the_commands_use():
    assert "[default: 24.0]" in _help("score")
    assert f"[default: {MONITOR_WINDOW_DAYS}]" in _help("monitor")
    serve = _help("serve")
    assert "[default: 3000]" in serve and "[default: 127.0.0.1]" in serve
    data = _help("demo-data")
    for default in ("200", "120", "7", "(the clock)", "default"):
        assert f"[default: {default}]" in data


def test_the_top_level_help_lists_every_command():
    result = run_fsp("--help", env=WIDE)  # the installed entry point, as a user runs it
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for path in COMMANDS:
        assert path[0] in text
    assert "--version" in text and "--json" not in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("score", "--lookahead-hours", "soon"), "Invalid value for '--lookahead-hours'"),
        (("demo-data", "--platform", "mars"), "'mars' is not one of"),
        (("promote",), "Missing argument 'version'"),
        (("teleport",), "No such command 'teleport'"),
    ],
    ids=lambda a: a[0] if isinstance(a, tuple) else "",
)
def test_a_malformed_command_line_is_one_line_exit_2(args: tuple[str, ...], needle: str):
    result = run_fsp(*args, env={})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(lines) == 1 and needle in lines[0] and "--help" in lines[0], result.stderr


# --- with a trained registry ---------------------------------------------------------


@pytest.mark.services
def test_models_lists_the_champion_alias(trained_world):
    env = {**_env(trained_world["database_url"], trained_world["state_dir"]), **WIDE}
    listing = run_fsp("models", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    champion = str(trained_world["train"]["version"])
    aliased = {str(r["version"]): r["aliases"] for r in rows}
    assert "champion" in aliased[champion]
    assert sum("champion" in aliases for aliases in aliased.values()) == 1
    assert {"version", "aliases", "model_type", "holdout_auc_roc"} <= set(rows[0])
    table = run_fsp("models", env=env)
    assert table.returncode == 0, table.stderr
    assert "Registered versions of first-session-risk" in table.stdout
    line = next(li for li in table.stdout.splitlines() if re.match(rf"\s*{champion}\s", li))
    assert "champion" in line and not table.stdout.lstrip().startswith("[")


@pytest.fixture
def scoring_env(server_url: str, trained_world, tmp_path: Path):
    """A private database with demo history and a private copy of the trained store."""
    url = create_database(server_url)
    seed_demo(url)
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(trained_world["state_dir"] / "mlflow.db", state / "mlflow.db")
    yield {**_env(url, state), **WIDE}
    drop_database(server_url, url)


@pytest.mark.services
def test_score_json_is_the_flows_result_and_a_clean_run_warns_of_nothing(scoring_env):
    now = DEMO_NOW.isoformat()
    result = run_fsp("score", "--json", "--now", now, "--lookahead-hours", "48", env=scoring_env)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    scored = json.loads(result.stdout)
    assert set(scored) == SCORE_KEYS
    assert scored["now"] == now and scored["lookahead_hours"] == 48 and scored["sessions_scored"]
    table = run_fsp("score", "--now", now, "--lookahead-hours", "48", env=scoring_env)
    assert table.returncode == 0 and "warning" not in table.stderr.lower(), table.stderr
    assert re.search(rf"sessions scored\s+{scored['sessions_scored']}\b", table.stdout)
    assert re.search(r"rows changed\s+0\b", table.stdout)  # a rerun changes nothing
