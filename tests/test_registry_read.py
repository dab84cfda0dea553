"""`fsp models` reads the registry without MLflow (fsp.registry_read): it must list
exactly what MLflow's client lists, from a real SQLite store and from a real `mlflow
server`, leave to the client every store it cannot read with certainty, and fail
loudly here when an MLflow upgrade moves the schema it reads."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import requests

from fsp.errors import RegistryUnavailable
from fsp.registry_read import VERIFIED_SCHEMA, read_versions, version_rows
from tests.service_fixtures import free_port

MODEL = "first-session-risk"


def test_rows_list_versions_oldest_first_with_the_champion_alias_first() -> None:
    versions = [("10", {"model_type": "gb", "noise": "x"}), ("2", {}), ("9", {"cutoff": "c"})]
    aliases = {"challenger": "10", "champion": "10", "a-first-name": "10", "old": "2"}
    rows = version_rows(versions, aliases)
    assert [r["version"] for r in rows] == ["2", "9", "10"]
    assert rows[2] == {
        "version": "10",
        "aliases": ["champion", "a-first-name", "challenger"],
        "model_type": "gb",
    }
    assert rows[0]["aliases"] == ["old"] and rows[1] == {
        "version": "9",
        "aliases": [],
        "cutoff": "c",
    }


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://u@db/mlflow",
        "file:///tmp/mlruns",
        "sqlite://",
        "sqlite:////no/such/folder/mlflow.db",
        "sqlite:////tmp/a%20b/mlflow.db",
        "databricks",
    ],
)
def test_stores_it_cannot_read_with_certainty_are_left_to_mlflow(uri: str) -> None:
    assert read_versions(uri, MODEL) is None


# --- against a real MLflow store ---------------------------------------------------


def _make_store(path: Path) -> list[dict]:
    """A SQLite store with the shapes `fsp models` meets: several versions, two aliases
    on one, tags shown and not, a deleted version, another model; returns what MLflow's
    own client lists for MODEL (fsp.model_store.list_versions)."""
    from mlflow import MlflowClient

    from fsp.model_store import list_versions

    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in (MODEL, "another-model"):
        client.create_registered_model(name)
        for n in range(4):
            tags = {"model_type": f"type-{n}", "holdout_auc_roc": f"0.7{n}", "private": "x"}
            client.create_model_version(name, f"file:///tmp/m{n}", tags=tags if n else None)
    client.delete_model_version(MODEL, "3")
    client.set_model_version_tag(MODEL, "4", "promotion.reason", "gate: beats the champion")
    client.set_registered_model_alias(MODEL, "champion", "4")
    client.set_registered_model_alias(MODEL, "challenger", "4")
    client.set_registered_model_alias(MODEL, "previous", "2")
    client.set_registered_model_alias("another-model", "champion", "1")
    return list_versions(client, MODEL)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    path = tmp_path_factory.mktemp("registry") / "mlflow.db"
    return path, _make_store(path)


@pytest.mark.services
def test_the_store_is_at_the_schema_the_reader_was_verified_against(store) -> None:
    path, _ = store
    with sqlite3.connect(path) as conn:
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision == VERIFIED_SCHEMA, (
        f"MLflow's schema moved to {revision}: check the tables fsp.registry_read reads "
        "against the new migrations, then set VERIFIED_SCHEMA"
    )


@pytest.mark.services
def test_sqlite_read_equals_mlflows_client(store, monkeypatch) -> None:
    path, through_client = store
    # MLflow sets this itself in a process that pointed it at a store (fsp reads the
    # registry of the tracking URI's store either way)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:////elsewhere/mlflow.db")
    before = path.read_bytes()
    rows = read_versions(f"sqlite:///{path}", MODEL)
    assert rows is not None and rows == through_client
    assert [r["version"] for r in rows] == ["1", "2", "4"]  # the deleted one is not listed
    assert rows[2]["aliases"] == ["champion", "challenger"]
    assert rows[2]["promotion.reason"] == "gate: beats the champion"
    assert path.read_bytes() == before  # read-only
    assert read_versions(f"sqlite:///{path}", "no-such-model") == []


@pytest.mark.services
def test_another_schema_revision_or_a_damaged_file_is_left_to_mlflow(store, tmp_path) -> None:
    moved = tmp_path / "moved.db"
    shutil.copy(store[0], moved)
    with sqlite3.connect(moved) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00dfeed'")
    assert read_versions(f"sqlite:///{moved}", MODEL) is None
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 600)
    assert read_versions(f"sqlite:///{garbage}", MODEL) is None


@pytest.mark.services
def test_mlflow_settings_it_does_not_apply_leave_the_read_to_mlflow(store, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "false")
    assert read_versions(f"sqlite:///{store[0]}", MODEL) == store[1]
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    assert read_versions(f"sqlite:///{store[0]}", MODEL) is None


@pytest.fixture(scope="module")
def mlflow_server(store) -> Iterator[str]:
    """A real `mlflow server` over a copy of the store."""
    folder = store[0].parent / "served"
    folder.mkdir()
    shutil.copy(store[0], folder / "mlflow.db")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def _wait_for(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server did not start (exit {server.poll()})")


@pytest.mark.services
def test_rest_read_equals_mlflows_client(store, mlflow_server) -> None:
    assert read_versions(mlflow_server, MODEL) == store[1]
    assert read_versions(mlflow_server + "/", "no-such-model") == []


SHAPES = {
    "html": b"<html>sign in</html>",
    "endless pages": json.dumps({"model_versions": [], "next_page_token": "again"}).encode(),
    "a version that is no number": json.dumps({"model_versions": [{"version": "v1"}]}).encode(),
}


def _answering(body: bytes) -> type[BaseHTTPRequestHandler]:
    class Answer(BaseHTTPRequestHandler):
        """Answers every request 200 with the same body."""

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Answer


@pytest.mark.parametrize("shape", SHAPES)
def test_an_answer_of_another_shape_is_left_to_mlflow(shape: str) -> None:
    """A proxy's login page, a server that pages for ever, a version MLflow never gives:
    none is listed or loops; MLflow's client reads (and names what is wrong)."""
    server = HTTPServer(("127.0.0.1", 0), _answering(SHAPES[shape]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert read_versions(f"http://127.0.0.1:{server.server_port}", MODEL) is None
    finally:
        server.shutdown()


def test_a_server_that_is_down_is_named_without_its_password() -> None:
    port = free_port()
    with pytest.raises(RegistryUnavailable) as raised:
        read_versions(f"http://alice:s3cret@127.0.0.1:{port}", MODEL)
    message = str(raised.value)
    assert message.startswith(f"cannot reach MLflow at http://***@127.0.0.1:{port}: ")
    assert "Connection refused" in message and "s3cret" not in message


IMPORTED = """
import sys
from flows.cli import main
try:
    main()
except SystemExit:
    pass
print(sorted(m for m in ("mlflow", "prefect", "pandas", "sklearn") if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.services
def test_fsp_models_lists_a_sqlite_store_without_importing_mlflow_or_prefect(
    store, tmp_path
) -> None:
    """The speed of `fsp models` is its imports: it stays under 2 s by importing none
    of MLflow, Prefect, pandas or scikit-learn (benchmarks/bench_cli.py times it)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "FSP_STATE_DIR": str(tmp_path),
        "MLFLOW_TRACKING_URI": f"sqlite:///{store[0]}",
    }
    argv = ["fsp", "models", "--json"]
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.argv = {argv!r}\n{IMPORTED}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
    )
    assert json.loads(result.stdout) == store[1], result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr
