"""`fsp`: the command line (contract section 3). Each subcommand is a thin front to a
flow or a function; expected failures end with one line on stderr and exit 1."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from typing import Any

from flows.common import parse_moment
from fsp.constants import MONITOR_WINDOW_DAYS
from fsp.errors import FspError, InvalidInput
from fsp.settings import Settings, get_settings

# Background services a one-shot ephemeral Prefect API does not need; skipping them
# halves its start-up (measured: 25 s → 12.7 s on a loaded 2-core machine).
EPHEMERAL_IDLE_SERVICES = (
    "CANCELLATION_CLEANUP",
    "DB_VACUUM",
    "EVENT_LOGGER",
    "FOREMAN",
    "LATE_RUNS",
    "SCHEDULER",
    "PAUSE_EXPIRATIONS",
    "REPOSSESSOR",
    "CLEANUP_RECONCILER",
    "TRIGGERS",
)


def ephemeral_prefect_defaults() -> None:
    """Quiet, fast defaults for Prefect's ephemeral API (only when no server is configured)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if os.environ.get("PREFECT_API_URL"):
        return
    os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")
    for service in EPHEMERAL_IDLE_SERVICES:
        os.environ.setdefault(f"PREFECT_SERVER_SERVICES_{service}_ENABLED", "false")


def _prepare_environment(settings: Settings) -> None:
    """Prefect's home and quiet defaults, set before Prefect is first imported."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(settings.state_dir / "prefect"))
    # The ephemeral API can take longer than Prefect's 20 s default on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    ephemeral_prefect_defaults()
    # The CLI prints each flow's result; Prefect's own console chatter (e.g. the events
    # worker flushing at exit) stays in the flow-run logs unless it is an error.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # An unreachable or silent tracking server fails in seconds, not after minutes of
    # retries: fsp.model_store.MLFLOW_HTTP_DEFAULTS, applied when a client is made.


def _store_failure(exc: BaseException) -> FspError | None:
    """The one-line error for an MLflow failure that no registry function translated
    (e.g. a flow's own MLflow call); None for anything else."""
    if "fsp.model_store" not in sys.modules:  # no MLflow in this command
        return None
    from fsp.model_store import mlflow_failure

    return mlflow_failure(exc, get_settings().resolved_mlflow_uri)


def _expected(exc: BaseException) -> bool:
    return isinstance(exc, FspError) or _store_failure(exc) is not None


def _descendants(cls: type[Exception]) -> Iterator[type[Exception]]:
    sub: type[Exception]
    for sub in cls.__subclasses__():
        yield sub
        yield from _descendants(sub)


def _expected_name() -> re.Pattern[str]:
    """The names of the expected failures (computed when asked: commands import some)."""
    names = {cls.__name__ for cls in _descendants(FspError)} | {"MlflowException"}
    return re.compile(r"\b(" + "|".join(sorted(names)) + r")\b")


class _HideExpectedTracebacks(logging.Filter):
    """Drop the traceback Prefect or MLflow logs for an expected failure; the CLI prints
    its reason in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _expected(exc):
            return False
        # "Finished in state Failed(... NotEnoughData: ...)" carries no exc_info, only the name.
        return not (
            record.levelno >= logging.ERROR and _expected_name().search(record.getMessage())
        )


def _filter_handlers(prefixes: tuple[str, ...]) -> None:
    """Put the filter on every handler of the root logger and of the named families."""
    loggers = [logging.getLogger()] + [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.startswith(prefixes)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, _HideExpectedTracebacks) for f in handler.filters):
                handler.addFilter(_HideExpectedTracebacks())


def _quiet_expected_failures() -> None:
    """Filter every handler Prefect configured (it does so when first imported)."""
    import prefect.main  # noqa: F401  (configures Prefect's logging handlers)

    _filter_handlers(("prefect",))
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _quiet_store_failures() -> None:
    """MLflow logs a traceback of its own for some store failures (a locked or damaged
    SQLite file) and urllib3 a warning per HTTP retry: the CLI's one line says it all."""
    import fsp.model_store  # noqa: F401  (imports MLflow, which configures its logger)

    _filter_handlers(("mlflow",))
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def _print(result: Any) -> None:
    print(json.dumps(result, indent=2, default=str))


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> None:
    from fsp.db import connection, upgrade

    with connection(settings) as conn:
        applied = upgrade(conn)
    print(f"fsp schema: applied {', '.join(applied)}" if applied else "fsp schema: up to date")


def cmd_demo_data(args: argparse.Namespace, settings: Settings) -> None:
    from fsp import demo_data
    from fsp.db import connection

    spec = demo_data.DemoSpec(
        tutors=args.tutors,
        days=args.days,
        seed=args.seed,
        now=parse_moment(args.now),
        platform=args.platform,
        shift=args.shift,
    )
    frames = demo_data.generate(spec)
    with connection(settings) as conn:
        counts = demo_data.write(conn, frames)
    _print({"now": spec.now.isoformat(), "rows": counts, **demo_data.summarize(frames, spec.now)})


def cmd_train(args: argparse.Namespace, settings: Settings) -> None:
    from flows.train import train_flow

    _print(train_flow(as_of=parse_moment(args.as_of, "--as-of")))


def cmd_promote(args: argparse.Namespace, settings: Settings) -> None:
    from fsp.model_store import make_client
    from training.registry import promote

    if not args.version.isdigit():
        raise InvalidInput(f"VERSION must be a registered version number, got {args.version!r}")
    client = make_client(settings)
    chosen = promote(
        client, settings.model_name, args.version, reason="manual promotion (fsp promote)"
    )
    print(f"{settings.model_name} version {chosen.version} is now the champion")


def cmd_models(args: argparse.Namespace, settings: Settings) -> None:
    from fsp.model_store import make_client
    from training.registry import list_versions

    _print(list_versions(make_client(settings), settings.model_name))


def cmd_package(args: argparse.Namespace, settings: Settings) -> None:
    from fsp.errors import ModelStoreBroken
    from fsp.model_store import aliased_version, make_client, missing_artifacts
    from service.packaging import package_champion

    try:
        _print(package_champion(settings))
    except ModelStoreBroken as exc:
        # Packaging loads a downloaded copy: name the champion whose files are gone.
        client = make_client(settings)
        champion = aliased_version(client, settings.model_name)
        named = missing_artifacts(client, settings.model_name, champion.version)
        if named is None:
            raise
        raise named from exc


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    from service.packaging import serve_packaged

    serve_packaged(settings, port=args.port, host=args.host)


def cmd_score(args: argparse.Namespace, settings: Settings) -> None:
    from flows.score import score_flow

    _print(score_flow(now=parse_moment(args.now), lookahead_hours=args.lookahead_hours))


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> None:
    from flows.alerts import alerts_flow

    _print(alerts_flow(now=parse_moment(args.now)))


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> None:
    from flows.reconcile import reconcile_flow

    _print(reconcile_flow(now=parse_moment(args.now)))


def cmd_monitor(args: argparse.Namespace, settings: Settings) -> None:
    from flows.monitor import monitor_flow

    _print(monitor_flow(now=parse_moment(args.now), window_days=args.window_days))


def cmd_demo(args: argparse.Namespace, settings: Settings) -> None:
    from flows.demo import run_demo

    run_demo(settings)


Command = Callable[[argparse.Namespace, Settings], None]
FLOW_COMMANDS = frozenset({"train", "score", "alerts", "reconcile", "monitor", "demo"})
MLFLOW_COMMANDS = frozenset({"train", "promote", "models", "package", "score", "monitor", "demo"})
STORE_CREATORS = frozenset({"train", "demo"})
"""The only commands that may create a local MLflow store; the others refuse a missing one."""


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr naming the problem, exit 2 (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="fsp", description="First-session risk system")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser("upgrade", help="create or upgrade the fsp schema").set_defaults(
        run=cmd_db_upgrade
    )
    demo = sub.add_parser("demo-data", help="fill EMPTY platform tables with synthetic history")
    demo.add_argument("--tutors", type=int, default=200)
    demo.add_argument("--days", type=int, default=120)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--now", default=None, help="ISO 8601 with offset (default: the clock)")
    demo.add_argument(
        "--platform",
        choices=("default", "international"),  # fsp.demo_data.PLATFORMS (not imported here)
        default="default",
        help="which platform's look: subjects, time zones, id shapes",
    )
    demo.add_argument(
        "--shift", action="store_true", help="the platform drifts over the last 30 days"
    )
    demo.set_defaults(run=cmd_demo_data)
    train = sub.add_parser("train", help="train as of a moment and run the promotion gate")
    train.add_argument("--as-of", default=None, help="ISO 8601 with offset (default: the clock)")
    train.set_defaults(run=cmd_train)
    promote = sub.add_parser("promote", help="make a registered version the champion")
    promote.add_argument("version")
    promote.set_defaults(run=cmd_promote)
    models = sub.add_parser("models", help="list registered versions, aliases and gate decisions")
    models.set_defaults(run=cmd_models)
    sub.add_parser("package", help="build the Bento of the current champion").set_defaults(
        run=cmd_package
    )
    serve = sub.add_parser("serve", help="serve the packaged champion over HTTP")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: this machine only; 0.0.0.0: every interface,"
        " then set FSP_API_KEY)",
    )
    serve.set_defaults(run=cmd_serve)
    score = sub.add_parser("score", help="score scheduled first sessions in (now, now+H]")
    _add_now(score)
    score.add_argument("--lookahead-hours", type=float, default=24.0)
    score.set_defaults(run=cmd_score)
    alerts = sub.add_parser("alerts", help="email tutors of high-risk sessions not yet alerted")
    _add_now(alerts)
    alerts.set_defaults(run=cmd_alerts)
    reconcile = sub.add_parser("reconcile", help="join predictions with arrived ratings")
    _add_now(reconcile)
    reconcile.set_defaults(run=cmd_reconcile)
    monitor = sub.add_parser("monitor", help="performance log, drift report, retrain if warranted")
    _add_now(monitor)
    monitor.add_argument("--window-days", type=int, default=MONITOR_WINDOW_DAYS)
    monitor.set_defaults(run=cmd_monitor)
    sub.add_parser(
        "demo", help="the whole system end to end on the embedded defaults"
    ).set_defaults(run=cmd_demo)
    return parser


def _add_now(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--now", default=None, help="ISO 8601 with offset (default: the clock)")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn an expected failure into one line on stderr and exit 1."""
    args = _parser().parse_args(argv)
    try:
        with ExitStack() as stack:
            settings = get_settings()
            _prepare_environment(settings)
            if args.command in FLOW_COMMANDS:
                _quiet_expected_failures()
            if args.command in MLFLOW_COMMANDS:
                _quiet_store_failures()
                if args.command not in STORE_CREATORS:
                    from fsp.model_store import existing_store_only

                    stack.enter_context(existing_store_only())
            run: Command = args.run
            run(args, settings)
    except FspError as exc:
        print(f"fsp {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        failure = _store_failure(exc)
        if failure is None:
            raise
        print(f"fsp {args.command}: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fsp {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
