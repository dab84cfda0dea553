"""The Bento and the logged model install exactly what the project was tested with:
every package pinned in bentofile.yaml and in the model's pip requirements is pinned
to the version uv.lock holds."""

from __future__ import annotations

import re
import tomllib

import yaml

from fsp.settings import PROJECT_ROOT
from training.registry import PIP_REQUIREMENTS


def _locked() -> dict[str, str]:
    lock = tomllib.loads((PROJECT_ROOT / "uv.lock").read_text())
    return {_norm(p["name"]): p["version"] for p in lock["package"] if "version" in p}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pin(requirement: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]+\])?==([^;\s]+)", requirement.strip())
    assert match, f"{requirement!r} is not pinned with =="
    return _norm(match.group(1)), match.group(2)


def test_bentofile_pins_equal_the_lock() -> None:
    packages = yaml.safe_load((PROJECT_ROOT / "bentofile.yaml").read_text())["python"]["packages"]
    locked = _locked()
    for name, version in map(_pin, packages):
        assert locked.get(name) == version, (
            f"bentofile pins {name}=={version}, uv.lock {locked.get(name)}"
        )


def test_model_requirements_pin_the_locked_versions() -> None:
    locked = _locked()
    for name, version in map(_pin, PIP_REQUIREMENTS):
        assert locked.get(name) == version, (
            f"model pins {name}=={version}, uv.lock {locked.get(name)}"
        )
