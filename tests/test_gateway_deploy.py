"""The front door on Kubernetes (docker/k8s/components/gateway, overlays/cpu-gateway):
rendered by `kubectl kustomize`, valid for the API, pods locked down, the gateway the only
public entry (Triton admits it as a client; Redis admits only it), TLS on both hops,
secrets only referenced."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

K8S = Path(__file__).resolve().parents[1] / "docker" / "k8s"
K8S_VERSIONS = ("1.25.0", "1.37.0")


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the overlays (docs/deploy.md)")
    result = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / "cpu-gateway")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def one(objects, kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_everything_is_valid_and_in_one_namespace(objects):
    import kubernetes_validate

    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("Deployment", "mmserve-gateway"), ("Service", "mmserve-gateway"), ("HorizontalPodAutoscaler",
            "mmserve-gateway"), ("NetworkPolicy", "mmserve-gateway"), ("Deployment", "mmserve-redis"),
            ("Service", "mmserve-redis"), ("NetworkPolicy", "mmserve-redis"), ("Deployment", "mmserve")} <= names
    assert {o["metadata"].get("namespace") for o in objects} == {"mmserve"}
    assert not [o for o in objects if o["kind"] == "Secret"]
    for obj in objects:
        if not obj["apiVersion"].startswith("monitoring.coreos.com/"):
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("name", ["mmserve-gateway", "mmserve-redis"])
def test_pods_are_locked_down(objects, name):
    pod = one(objects, "Deployment", name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_the_gateway_is_the_public_entry_with_tls_on_both_hops(objects):
    deployment = one(objects, "Deployment", "mmserve-gateway")
    pod = deployment["spec"]["template"]
    gateway = pod["spec"]["containers"][0]
    args = dict(a.split("=", 1) for a in gateway["args"])
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    assert args["--tls-cert"] == f"{mounts['tls']}/tls.crt" and args["--tls-key"] == f"{mounts['tls']}/tls.key"
    assert args["--triton-tls-ca"].startswith(mounts["triton-ca"]) and args["--server"] == "mmserve:8001"
    assert args["--store"].startswith("redis://mmserve-redis:") and args["--repository"] == mounts["models"]
    assert not any("admin" in a for a in gateway["args"])  # never the admin key
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
    assert set(secrets.values()) == {"mmserve-gateway-tls", "mmserve-tls-ca", "mmserve-api-key"}
    # Triton's inference key: the very Secret and key Triton's --api-key-file reads.
    triton = one(objects, "Deployment", "mmserve")["spec"]["template"]["spec"]
    triton_mounts = {m["name"]: m["mountPath"] for m in triton["containers"][0]["volumeMounts"]}
    triton_secrets = {v["name"]: v["secret"]["secretName"] for v in triton["volumes"] if "secret" in v}
    (triton_key,) = [a.split("=", 1)[1] for a in triton["containers"][0]["args"] if a.startswith("--api-key-file=")]
    (key_volume,) = [n for n, path in triton_mounts.items() if triton_key.startswith(path + "/")]
    (gateway_volume,) = [n for n, s in secrets.items() if s == triton_secrets[key_volume]]
    assert args.get("--triton-api-key-file") == mounts[gateway_volume] + triton_key.removeprefix(triton_mounts[key_volume]), (
        "the gateway dials Triton without its inference key: give it --triton-api-key-file from the Secret "
        f"{triton_secrets[key_volume]}")
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}

    # Triton's policy admits the gateway's pods as clients, on gRPC only.
    triton = one(objects, "NetworkPolicy", "mmserve")["spec"]
    grpc_from = [rule["from"] for rule in triton["ingress"] if {"protocol": "TCP", "port": "grpc"} in rule["ports"]]
    selectors = [s["podSelector"]["matchLabels"] for rules in grpc_from for s in rules if "podSelector" in s]
    assert any(sel.items() <= pod["metadata"]["labels"].items() for sel in selectors)
    # The gateway: anyone on its HTTPS port; out only to Triton's gRPC, Redis and DNS.
    policy = one(objects, "NetworkPolicy", "mmserve-gateway")["spec"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": "https"}]}]
    assert sorted(p["port"] for rule in policy["egress"] for p in rule["ports"]) == [53, 53, 6379, 8001]
    # Redis: the gateway only, nothing out.
    redis = one(objects, "NetworkPolicy", "mmserve-redis")["spec"]
    assert redis["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"app": "mmserve-gateway"}}}]
    assert redis["egress"] == []
    service = one(objects, "Service", "mmserve-gateway")["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert [p["targetPort"] for p in service["ports"]] == ["https"]
    hpa = one(objects, "HorizontalPodAutoscaler", "mmserve-gateway")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "mmserve-gateway" and 1 < hpa["minReplicas"] < hpa["maxReplicas"]


def test_the_grafana_dashboard_queries_the_gateways_own_counters():
    import json
    import re

    from mmserve.gateway.metrics import Metrics

    metrics = Metrics()
    metrics.count("acme", "text_embed", 200, 2, 100, 0.01)
    exported = {line.split("{")[0] for line in metrics.render().splitlines() if not line.startswith("#")}
    dashboard = json.loads((K8S.parent / "grafana" / "mmserve-gateway.json").read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert [p["id"] for p in dashboard["panels"]] == sorted({p["id"] for p in dashboard["panels"]})
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            names = set(re.findall(r"\b(mmserve_gateway_\w+)\b", target["expr"]))
            assert names and names <= exported, (panel["title"], names - exported)
            assert set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"} <= variables
