"""The private parts of BentoML the service touches (`service.bentoml_adapter`) are still
where and what the adapter expects. When an upgrade moves one, the failing test names
the part and what to revisit, instead of a served Bento failing on its first request."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

PRIVATE_PARTS = {
    "_bentoml_sdk.io_models": "IORootModel",
    "bentoml._internal.models": "ModelStore",
    "bentoml._internal.bento": "BentoStore",
    "bentoml._internal.server.http_app": "logger",
}


@pytest.mark.parametrize(("module", "name"), sorted(PRIVATE_PARTS.items()))
def test_each_private_part_is_where_the_adapter_imports_it(module: str, name: str) -> None:
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError as exc:
        pytest.fail(
            f"BentoML upgrade: {module} is gone ({exc}); revisit service/bentoml_adapter.py"
        )
    assert found is not None, (
        f"BentoML upgrade: {module}.{name} is gone; revisit service/bentoml_adapter.py"
    )


def test_root_models_are_built_and_flagged_as_the_adapter_expects() -> None:
    from _bentoml_sdk.io_models import IORootModel

    from service.batchio import PredictionList, SessionBatchInput

    parameters = list(inspect.signature(IORootModel.__init__).parameters)
    assert parameters[:2] == ["self", "root"], (
        "BentoML upgrade: IORootModel(root) changed; BentoML builds PredictionList with it"
    )
    assert PredictionList(['{"a":1}', '{"b":2}']).model_dump() == b'[{"a":1},{"b":2}]'
    assert SessionBatchInput.model_json_schema().get("root_input") is True, (
        "BentoML upgrade: the __root_input__ flag is no longer read; revisit mark_root_input"
    )
    import _bentoml_impl.server.app as server_app

    assert "__root_input__" in inspect.getsource(server_app), (
        "BentoML upgrade: its server no longer reads __root_input__; /predict_batch bodies"
        " would be parsed as an object"
    )


def test_a_model_store_is_opened_by_its_folder(tmp_path: Path) -> None:
    import bentoml

    from service.bentoml_adapter import create_model, latest_bento_tag, models_named

    assert "_model_store" in inspect.signature(bentoml.models.create).parameters, (
        "BentoML upgrade: bentoml.models.create takes no _model_store; revisit create_model"
    )
    assert models_named(tmp_path, "probe") == []
    with create_model(tmp_path, "probe", {"mlflow_version": "1"}, {"n": 1}) as model:
        Path(model.path_of("file.txt")).write_text("x")
    stored = models_named(tmp_path, "probe")
    assert [m.info.labels["mlflow_version"] for m in stored] == ["1"]
    assert (tmp_path / "models" / "probe").is_dir(), "BentoML upgrade: the store's layout moved"
    assert latest_bento_tag(tmp_path, "no_such_service") is None


def test_refused_requests_are_logged_where_the_filter_listens() -> None:
    import _bentoml_impl.server.app as server_app
    from bentoml._internal.server import http_app

    from service.bentoml_adapter import REFUSED_REQUESTS_LOGGER

    assert REFUSED_REQUESTS_LOGGER == "bentoml._internal.server.http_app"
    assert server_app.log_exception is http_app.log_exception, (
        "BentoML upgrade: refused requests are logged elsewhere; the one-line filter"
        " (service.refusals.OneLineExpectedErrors) would no longer apply"
    )
