"""`fsp`: the command line (Typer + Rich). The commands live in flows.cli.app, the
environment they run in in flows.cli.environment, expected failures in
flows.cli.failures and what they print in flows.cli.output."""

from __future__ import annotations

from flows.cli.app import app, main
from flows.cli.environment import ephemeral_prefect_defaults

__all__ = ["app", "ephemeral_prefect_defaults", "main"]
