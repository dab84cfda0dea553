"""`fsp db upgrade`: idempotent, never touches the platform schema."""

from __future__ import annotations

import psycopg
import pytest

from fsp.db import ensure_platform_schema, upgrade

pytestmark = pytest.mark.services


def test_upgrade_is_idempotent_and_creates_the_contract_tables(empty_db):
    with psycopg.connect(empty_db) as conn:
        first = upgrade(conn)
        second = upgrade(conn)
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'fsp'"
            )
        }
    assert first and first[0] == "001" and second == []
    assert {"first_session_predictions", "model_performance_logs"} <= tables


def test_upgrade_leaves_platform_alone(empty_db):
    with psycopg.connect(empty_db) as conn:
        ensure_platform_schema(conn)
        conn.execute("INSERT INTO platform.tutors VALUES ('T1', 'A', 'a@x.example', now())")
        conn.commit()
        upgrade(conn)
        assert conn.execute("SELECT count(*) FROM platform.tutors").fetchone() == (1,)
