"""Helpers shared by the operating-loop tests: a database of our own seeded like the
shared trained world (so the world's champion scores it), a real SMTP server on
loopback (aiosmtpd), and small utilities. Nothing is mocked."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import psycopg
import pytest

from fsp.settings import get_settings
from tests.service_fixtures import free_port


def point_at(
    mp: pytest.MonkeyPatch, database_url: str, state_dir: Path, mlflow_state: Path | None = None
) -> None:
    """Settings → our database and state folder; MLflow → a private copy of a store."""
    state_dir.mkdir(parents=True, exist_ok=True)
    mp.setenv("DATABASE_URL", database_url)
    mp.setenv("FSP_STATE_DIR", str(state_dir))
    mlflow_db = state_dir / "mlflow.db"
    if mlflow_state is not None and not mlflow_db.exists():
        shutil.copy(mlflow_state / "mlflow.db", mlflow_db)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_db}")
    mp.setenv("FSP_MIN_TRAINING_SESSIONS", "200")
    mp.setenv("FSP_MIN_HOLDOUT_SESSIONS", "50")
    mp.delenv("SMTP_HOST", raising=False)
    get_settings.cache_clear()


def one(conn: psycopg.Connection, sql: str, params=None):
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


@dataclass
class Received:
    """What the SMTP server received."""

    envelopes: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    @property
    def messages(self) -> list[EmailMessage]:
        return [
            message_from_bytes(data, policy=default_policy)  # type: ignore[misc]
            for _, _, data in self.envelopes
        ]

    def message_ids(self) -> list[str]:
        return [str(m["Message-ID"]) for m in self.messages]


class _Handler:
    def __init__(self, received: Received, lock: threading.Lock) -> None:
        self.received = received
        self.lock = lock
        self.reject_data: str | None = None
        self.delay = 0.0

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            time.sleep(self.delay)
        if self.reject_data:
            return self.reject_data
        with self.lock:
            self.received.envelopes.append(
                (envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content))
            )
        return "250 Message accepted for delivery"


class SmtpServer:
    """A real SMTP server on loopback that can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received = Received()
        self.handler = _Handler(self.received, threading.Lock())
        self.controller = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


def running_smtp_server() -> Iterator[SmtpServer]:
    """Body of an `smtp_server` fixture: a started server, stopped afterwards."""
    server = SmtpServer()
    server.start()
    yield server
    server.stop()
