"""The `fsp` commands (Typer). Each is a thin front to a flow or a function: a table for
people by default, `--json` for scripts, a spinner on stderr while a long step runs;
an expected failure ends with one line on stderr and exit 1.

Reading commands (`--help`, `--version`, `fsp models`) must answer in well under 2 s:
flows, Prefect, MLflow and pandas are imported inside the command that needs them."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.cli.environment import prepare_environment
from flows.cli.failures import expected_failure, quiet_flow_failures, quiet_store_failures
from flows.cli.output import fail, print_json, progress, show_models, show_result
from fsp.constants import MONITOR_WINDOW_DAYS

if TYPE_CHECKING:
    from fsp.settings import Settings

PACKAGE = "first-session-risk"
NOW_HELP = "the moment to act as of: ISO 8601 with a UTC offset, e.g. 2026-11-01T12:00:00+00:00"

app = typer.Typer(
    name="fsp",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(db_app, name="db")

Json = Annotated[
    bool, typer.Option("--json", help="print the result as JSON (for scripts) instead of tables")
]
Now = Annotated[str | None, typer.Option("--now", help=NOW_HELP, show_default="the clock")]


class Platform(StrEnum):
    """The platforms the demo generator can draw (fsp.demo_data.PLATFORMS, not imported
    here: it pulls in pandas)."""

    default = "default"
    international = "international"


def run(
    name: str,
    body: Callable[[Settings], None],
    *,
    flow: bool = False,
    mlflow: bool = False,
    creates_store: bool = False,
) -> None:
    """Run one command's body in its environment; an expected failure becomes one line on
    stderr and exit 1 (a bug keeps its traceback)."""
    from fsp.settings import get_settings  # kept off the fast path (pydantic-settings)

    try:
        with ExitStack() as stack:
            settings = get_settings()
            prepare_environment(settings)
            if flow:
                quiet_flow_failures()
            if mlflow:
                quiet_store_failures()
                if not creates_store:
                    from fsp.model_store import existing_store_only  # imported just above

                    stack.enter_context(existing_store_only())
            body(settings)
    except KeyboardInterrupt:
        fail(name, "interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:
        failure = expected_failure(exc)
        if failure is None:
            raise
        fail(name, failure)
        raise typer.Exit(1) from None


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"fsp {version(PACKAGE)}")
        raise typer.Exit()


def help_without_command(context: typer.Context) -> None:
    """A group given no command prints its help (stdout) and exits 2, as a usage error."""
    if context.invoked_subcommand is None:
        typer.echo(context.get_help())
        raise typer.Exit(2)


@db_app.callback()
def db(context: typer.Context) -> None:
    """The fsp schema in PostgreSQL."""
    help_without_command(context)


@app.callback()
def root(
    context: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """First-session risk: scores a tutor's first session with a new student, emails advice
    before high-risk ones, and learns from the ratings that come back."""
    help_without_command(context)


@db_app.command("upgrade")
def db_upgrade(as_json: Json = False) -> None:
    """Create or upgrade the fsp schema (versioned SQL in migrations/, idempotent)."""

    def body(settings: Settings) -> None:
        from fsp.db import connection, upgrade  # kept off the fast path

        with connection(settings) as conn:
            applied = upgrade(conn)
        if as_json:
            print_json({"applied": applied})
        else:
            print(
                f"fsp schema: applied {', '.join(applied)}" if applied else "fsp schema: up to date"
            )

    run("db", body)


@app.command("demo-data")
def demo_data(
    tutors: Annotated[int, typer.Option(help="how many tutors the history has")] = 200,
    days: Annotated[int, typer.Option(help="how many days of history, ending at --now")] = 120,
    seed: Annotated[int, typer.Option(help="random seed: the same seed, the same history")] = 7,
    now: Now = None,
    platform: Annotated[
        Platform, typer.Option(help="which platform's look: subjects, time zones, id shapes")
    ] = Platform.default,
    shift: Annotated[
        bool, typer.Option("--shift", help="the platform drifts over the last 30 days")
    ] = False,
    as_json: Json = False,
) -> None:
    """Fill EMPTY platform tables with a synthetic history (refuses a platform with data)."""

    def body(settings: Settings) -> None:
        from flows.common import parse_moment  # kept off the fast path (with pandas below)
        from fsp import demo_data as generator
        from fsp.db import connection

        spec = generator.DemoSpec(
            tutors=tutors,
            days=days,
            seed=seed,
            now=parse_moment(now),
            platform=platform.value,
            shift=shift,
        )
        with progress(f"generating {tutors} tutors × {days} days of history"):
            frames = generator.generate(spec)
            with connection(settings) as conn:
                counts = generator.write(conn, frames)
        summary = {"now": spec.now.isoformat(), "rows": counts}
        show_result(
            "Demo history written", {**summary, **generator.summarize(frames, spec.now)}, as_json
        )

    run("demo-data", body)


@app.command()
def train(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help=NOW_HELP, show_default="the clock")
    ] = None,
    as_json: Json = False,
) -> None:
    """Train as of a moment (ratings known by then) and run the promotion gate."""

    def body(settings: Settings) -> None:
        from flows.common import parse_moment  # kept off the fast path (with Prefect below)
        from flows.train import train_flow

        cutoff = parse_moment(as_of, "--as-of")
        with progress(f"training as of {cutoff.isoformat()}"):
            result = train_flow(as_of=cutoff)
        show_result(f"Trained version {result.get('version')}", result, as_json)

    run("train", body, flow=True, mlflow=True, creates_store=True)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="the registered version number to promote")],
    as_json: Json = False,
) -> None:
    """Make a registered version the champion (also a rollback)."""

    def body(settings: Settings) -> None:
        from fsp.errors import InvalidInput
        from fsp.model_store import make_client  # kept off the fast path (MLflow)
        from training.registry import promote as promote_version

        if not version.isdigit():
            raise InvalidInput(f"VERSION must be a registered version number, got {version!r}")
        reason = "manual promotion (fsp promote)"
        chosen = promote_version(make_client(settings), settings.model_name, version, reason)
        if as_json:
            print_json(
                {"model": settings.model_name, "version": chosen.version, "alias": "champion"}
            )
        else:
            print(f"{settings.model_name} version {chosen.version} is now the champion")

    run("promote", body, mlflow=True)


@app.command()
def models(as_json: Json = False) -> None:
    """List registered versions with their aliases, metrics and gate decisions."""

    def body(settings: Settings) -> None:
        from fsp.registry_read import read_versions  # no MLflow: answers in under 2 s

        rows = read_versions(settings.resolved_mlflow_uri, settings.model_name)
        if rows is None:  # a store only MLflow's client reads with certainty
            rows = _versions_through_mlflow(settings)
        show_models(rows, settings.model_name, as_json)

    run("models", body)


def _versions_through_mlflow(settings: Settings) -> list[dict[str, Any]]:
    """`fsp models` through MLflow's client: slower, for every store the fast reader
    leaves to it; a missing local store is refused, never created."""
    quiet_store_failures()
    from fsp.model_store import existing_store_only, list_versions, make_client

    with existing_store_only():
        return list_versions(make_client(settings), settings.model_name)


@app.command()
def package(as_json: Json = False) -> None:
    """Build the Bento of the current champion (BentoML model store, then a Bento)."""

    def body(settings: Settings) -> None:
        with progress("packaging the champion into a Bento"):
            result = _package(settings)
        show_result("Bento built", result, as_json)

    run("package", body, mlflow=True)


def _package(settings: Settings) -> dict[str, Any]:
    """Package the champion; a champion whose files are gone is named as such."""
    from fsp.errors import ModelStoreBroken  # kept off the fast path (with BentoML below)
    from fsp.model_store import aliased_version, make_client, missing_artifacts
    from service.packaging import package_champion

    try:
        return package_champion(settings)
    except ModelStoreBroken as exc:
        # Packaging loads a downloaded copy: name the champion whose files are gone.
        client = make_client(settings)
        champion = aliased_version(client, settings.model_name)
        named = missing_artifacts(client, settings.model_name, champion.version)
        if named is None:
            raise
        raise named from exc


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="TCP port to listen on")] = 3000,
    host: Annotated[
        str,
        typer.Option(
            help="address to listen on: 127.0.0.1 is this machine only; 0.0.0.0 is every"
            " interface (then set FSP_API_KEY)"
        ),
    ] = "127.0.0.1",
) -> None:
    """Serve the packaged champion over HTTP (the latest Bento; runs until stopped)."""

    def body(settings: Settings) -> None:
        from service.packaging import serve_packaged  # kept off the fast path (BentoML)

        serve_packaged(settings, port=port, host=host)

    run("serve", body)


@app.command()
def score(
    now: Now = None,
    lookahead_hours: Annotated[
        float, typer.Option(help="score first sessions starting in (now, now + this many hours]")
    ] = 24.0,
    as_json: Json = False,
) -> None:
    """Score the scheduled first sessions starting in (now, now + H]."""
    _flow(
        "score",
        "scoring upcoming first sessions",
        as_json,
        now=now,
        lookahead_hours=lookahead_hours,
    )


@app.command()
def alerts(now: Now = None, as_json: Json = False) -> None:
    """Email the tutors of high-risk sessions that have no alert yet (exactly once)."""
    _flow("alerts", "sending alert emails", as_json, now=now)


@app.command()
def reconcile(now: Now = None, as_json: Json = False) -> None:
    """Join predictions with the ratings that have arrived."""
    _flow("reconcile", "reconciling predictions with ratings", as_json, now=now)


@app.command()
def monitor(
    now: Now = None,
    window_days: Annotated[
        int, typer.Option(help="how many days of reconciled predictions to judge")
    ] = MONITOR_WINDOW_DAYS,
    as_json: Json = False,
) -> None:
    """Performance log, drift report, and a retrain (promoted if it wins) when warranted."""
    _flow("monitor", "monitoring the champion", as_json, now=now, window_days=window_days)


def _flow_function(name: str) -> Callable[..., dict[str, Any]]:
    """The Prefect flow behind a command (imported here: Prefect is slow to import)."""
    if name == "score":
        from flows.score import score_flow  # kept off the fast path (Prefect)

        return score_flow
    if name == "alerts":
        from flows.alerts import alerts_flow  # kept off the fast path (Prefect)

        return alerts_flow
    if name == "reconcile":
        from flows.reconcile import reconcile_flow  # kept off the fast path (Prefect)

        return reconcile_flow
    from flows.monitor import monitor_flow  # kept off the fast path (Prefect)

    return monitor_flow


def _flow(name: str, doing: str, as_json: bool, now: str | None, **options: Any) -> None:
    """Run one flow as of `now` and show what it returned."""

    def body(settings: Settings) -> None:
        from flows.common import parse_moment  # light, but only needed here

        moment = parse_moment(now)
        with progress(f"{doing} (as of {moment.isoformat()})"):
            result = _flow_function(name)(now=moment, **options)
        show_result(f"fsp {name}", result, as_json)

    run(name, body, flow=True, mlflow=name in {"score", "monitor"})


@app.command()
def demo(as_json: Json = False) -> None:
    """The whole system end to end on the embedded defaults (PostgreSQL, MLflow, outbox)."""

    def body(settings: Settings) -> None:
        from flows.demo import run_demo  # kept off the fast path (every flow)

        run_demo(settings, as_json=as_json, step=progress)

    os.environ.setdefault("FSP_TRACK_OPENS", "true")  # the demo shows open/click tracking
    run("demo", body, flow=True, mlflow=True, creates_store=True)


@app.command()
def preview(
    session_id: Annotated[str, typer.Argument(help="the session whose alert email to show")],
    out: Annotated[
        Path | None,
        typer.Option(help="where to write the HTML  [default: <state>/previews/<session>.html]"),
    ] = None,
    as_json: Json = False,
) -> None:
    """Write the HTML of the alert email a scored session would get (nothing sent)."""

    def body(settings: Settings) -> None:
        from alerting.preview import preview_html  # kept off the fast path (Jinja2, pandas)
        from fsp.db import connection

        with connection(settings) as conn:
            html = preview_html(conn, session_id, settings)
        path = out or settings.state_dir / "previews" / f"{file_name(session_id)}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
        written = {"session_id": session_id, "path": str(path), "bytes": len(html.encode())}
        show_result("email preview written", written, as_json)

    run("preview", body)


def file_name(text: str) -> str:
    """A file name for any id: its safe characters, then a short digest (ids may hold
    slashes, quotes or spaces, and two ids must never share a file)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', text)[:60]}-{digest}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run `fsp`; a malformed command line is one line on stderr and exit 2."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="fsp", standalone_mode=False)
    except typer.TyperException as exc:  # a usage error: unknown command, bad value
        context = getattr(exc, "ctx", None)
        where = context.command_path if context is not None else "fsp"
        print(f"{where}: {exc.format_message()} (see `{where} --help`)", file=sys.stderr)
        return 2
    except typer.Abort:
        print("fsp: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0
