"""Offline checks of the deployment files: deploy/k8s/ against the Kubernetes schemas
(kubernetes-validate, bundled schemas, strict), and docker-compose.yml through
`docker-compose config -q` with .env.example plus the rules of the team stack
(no setting or secret in the file, health checks, restarts, loopback-only ports)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSIONS = ("1.30.0", "1.37.0")
ONE_SHOT = {"db-init", "bootstrap"}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


DOCS = _documents()


def _find(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("where", "doc"), DOCS, ids=[w for w, _ in DOCS])
def test_manifest_is_valid_kubernetes(where: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_bento_deployment_probes_resources_autoscaler_service() -> None:
    deployment = _find("Deployment", "fsp-bento")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    hpa = _find("HorizontalPodAutoscaler", "fsp-bento")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "fsp-bento"
    assert hpa["spec"]["minReplicas"] >= 2
    service = _find("Service", "fsp-bento")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_secrets_come_from_the_secret() -> None:
    secret_keys = set(_find("Secret", "fsp-secrets")["stringData"])
    for name in ("fsp-bento", "fsp-worker"):
        (container,) = _find("Deployment", name)["spec"]["template"]["spec"]["containers"]
        for env in container.get("env", []):
            assert env["name"] not in secret_keys or "valueFrom" in env, (name, env["name"])
    worker = _find("Deployment", "fsp-worker")["spec"]["template"]["spec"]
    (container,) = worker["containers"]
    assert {"secretRef": {"name": "fsp-secrets"}} in container["envFrom"]
    pool = {e["name"]: e.get("value") for e in container["env"]}
    assert pool["FSP_WORK_POOL_TYPE"] == "kubernetes"


def _compose_config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_config_is_valid() -> None:
    done = subprocess.run(
        [
            "docker-compose",
            "--env-file",
            ".env.example",
            "-f",
            "docker-compose.yml",
            "config",
            "-q",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_compose_holds_no_setting_or_secret() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    env_example = (ROOT / ".env.example").read_text()
    for key in ("POSTGRES_PASSWORD", "FSP_API_KEY"):
        value = re.search(rf"^{key}=(.+)$", env_example, re.M)
        assert value and value.group(1) not in text
    assert not re.search(r"postgres(ql)?(\+\w+)?://\w+:\w+@", text), "a literal credential"
    for name, service in _compose_config()["services"].items():
        image = service["image"]
        assert image.startswith("${"), (name, image)  # every image is a setting
        for port in service.get("ports", []):
            assert port.startswith("${FSP_BIND_ADDRESS"), (name, port)


def test_compose_health_checks_and_restarts() -> None:
    for name, service in _compose_config()["services"].items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
    services = _compose_config()["services"]
    for waiting in ("worker", "bento"):
        condition = services[waiting]["depends_on"]["bootstrap"]["condition"]
        assert condition == "service_completed_successfully"


def test_official_images_are_pinned_exactly() -> None:
    env = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#") and "=" in line
    )
    for key in ("FSP_POSTGRES_IMAGE", "FSP_MAIL_IMAGE", "FSP_BASE_IMAGE"):
        tag = env[key].rsplit(":", 1)[1]
        assert re.match(r"v?\d+\.\d+", tag), (key, env[key])  # major.minor at least
