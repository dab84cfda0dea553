"""Every private part of BentoML (1.4) this service touches, named once, here.

BentoML has no public way to:

- parse a request body and write an answer in bulk for one endpoint: the endpoint's
  IO models derive from `IORootModel` (`_bentoml_sdk.io_models`), the base BentoML
  itself gives a root-typed input or output, and an input whose body is its root
  (a JSON list, not an object naming the argument) carries BentoML's `__root_input__`
  flag (`mark_root_input`; used by `service.batchio`);
- address a model or Bento store by its folder in-process: its public functions use
  the store of BENTOML_HOME as read when bentoml is first imported, and the tests
  package into several stores from one process. `ModelStore` and `BentoStore`
  (`bentoml._internal`) open a store by path, and `bentoml.models.create` takes one
  through its private `_model_store` keyword;
- see the requests its endpoint wrapper refused: it logs them on the logger of
  `bentoml._internal.server.http_app` (`service.service` turns those into one line).

`tests/test_adapters_bentoml.py` fails, naming the part, when an upgrade moves one."""

# private-api: _bentoml_sdk.io_models.IORootModel, bentoml._internal (ModelStore,
# BentoStore, the http_app logger), bentoml.models.create(_model_store=...)

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bentoml
from _bentoml_sdk.io_models import IORootModel
from bentoml._internal.bento import BentoStore
from bentoml._internal.models import ModelStore
from bentoml._internal.server import http_app
from bentoml.exceptions import NotFound

__all__ = [
    "REFUSED_REQUESTS_LOGGER",
    "IORootModel",
    "create_model",
    "latest_bento_tag",
    "mark_root_input",
    "models_named",
]

REFUSED_REQUESTS_LOGGER: str = http_app.logger.name
"""The logger BentoML's endpoint wrapper logs each refused request on (with its traceback)."""


def mark_root_input(io_model: type[IORootModel]) -> None:
    """Tell BentoML the request body is the model's root itself (as it marks the input
    model it derives for a single positional argument)."""
    io_model.__root_input__ = True  # type: ignore[attr-defined]


def _model_store(home: Path) -> ModelStore:
    (home / "models").mkdir(parents=True, exist_ok=True)
    return ModelStore(home / "models")


def models_named(home: Path, name: str) -> list[Any]:
    """The models of that name in the store under `home` (none when there is none)."""
    try:
        return _model_store(home).list(name)
    except NotFound:  # BentoML's answer for a name it holds no model of
        return []


@contextmanager
def create_model(
    home: Path, name: str, labels: dict[str, str], metadata: dict[str, Any]
) -> Iterator[Any]:
    """`bentoml.models.create` into the store under `home`: the model is saved when the
    block ends without an error."""
    with bentoml.models.create(
        name, labels=labels, metadata=metadata, _model_store=_model_store(home)
    ) as model:
        yield model


def latest_bento_tag(home: Path, name: str) -> str | None:
    """The tag of the newest Bento of that name in the store under `home`, or None."""
    try:
        return str(BentoStore(home / "bentos").get(f"{name}:latest").tag)
    except (NotFound, FileNotFoundError):  # no Bento of that name, or no store folder yet
        return None
