"""Containers, Compose, Kubernetes and the Grafana dashboard, checked with real tools.

No image can be built and no cluster reached here, so what runs is what can: hadolint on
every Dockerfile, yamllint on every YAML file, `kubectl kustomize` on both overlays and
kubernetes-validate (the API's own OpenAPI schemas, strict) on every rendered object; the
CRDs the schemas do not hold (ServiceMonitor) are checked for shape here, the Compose files
in tests/test_deploy_compose.py. The dashboard's queries are checked against the metric names a real Triton 2.51
exports, scraped from the bundled tritonserver with summary latencies on.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
OVERLAYS = ("cpu", "gpu")
DOCKERFILES = ("Dockerfile", "Dockerfile.cpu", "Dockerfile.models")
SERVER_DOCKERFILES = ("Dockerfile", "Dockerfile.cpu")  # the two that run tritonserver
# Kubernetes minor versions the manifests must be valid for: the oldest and newest schemas
# kubernetes-validate ships.
K8S_VERSIONS = ("1.25.0", "1.37.0")
# Triton's GPU gauges (nv_gpu_*, nv_energy_consumption) exist only where DCGM sees a GPU, so
# a CPU server cannot show them; their names are those Triton core registers (src/metrics.cc).
GPU_ONLY_METRICS = {
    "nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption",
}


def _missing(why: str) -> None:
    """A checker that is not installed: skipped on a developer's machine, a failure in CI, where
    `make setup` installs every one of them (issue 18: checks that run)."""
    if os.environ.get("CI"):
        pytest.fail(f"{why} -- CI runs `make setup`, which installs it")
    pytest.skip(why)


def _tool(name: str) -> str:
    """A linter from the venv (the dev extra installs them) or PATH; skip with why when absent."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        _missing(f"{name} is not installed (pip install -e '.[dev]' brings it)")
    return found


# ---- Dockerfiles ------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_finds_nothing(dockerfile: str):
    result = subprocess.run([_tool("hadolint"), "--format", "json", str(DOCKER / dockerfile)],
                            capture_output=True, text=True, check=False)
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0


def _stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments) with continuations joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_run_as_a_non_root_user(dockerfile: str):
    for stage in _stages(DOCKER / dockerfile):
        if not any(i in ("ENTRYPOINT", "CMD") for i, _ in stage):
            continue  # a stage only built upon
        users = [arguments for instruction, arguments in stage if instruction == "USER"]
        assert users, f"{dockerfile}: a stage with an entrypoint sets no USER"
        user = users[-1].split(":")[0]
        assert user not in ("root", "0") and user.isdigit(), f"{dockerfile}: USER {users[-1]} (numeric non-root, for runAsNonRoot)"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_no_secret_goes_into_an_image(dockerfile: str):
    for stage in _stages(DOCKER / dockerfile):
        for instruction, arguments in stage:
            if instruction in ("COPY", "ADD"):
                assert not re.search(r"secret|\.key\b|\.pem\b|\.crt\b|\.env\b|pki", arguments, re.I), arguments
            if instruction in ("ENV", "ARG"):
                for name in re.findall(r"([A-Z_][A-Z0-9_]*)=", arguments):
                    assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN(?!IZERS)", name), f"{dockerfile}: {instruction} {name}"
    # The build context is everything excluded but what the image copies: never docker/secrets/
    # (of docker/ only the script that strips local paths from the cards) and no audit log.
    ignore = (DOCKER / f"{dockerfile}.dockerignore").read_text().splitlines()
    assert "*" in ignore and not [line for line in ignore
                                  if line.startswith("!docker") and line != "!docker/strip_card_paths.py"]
    assert "**/.mmserve-audit.jsonl*" in ignore


@pytest.mark.parametrize("dockerfile", SERVER_DOCKERFILES)
def test_server_images_check_triton_readiness(dockerfile: str):
    final = _stages(DOCKER / dockerfile)[-1]
    (healthcheck,) = [arguments for instruction, arguments in final if instruction == "HEALTHCHECK"]
    assert "/v2/health/ready" in healthcheck
    (entrypoint,) = [json.loads(arguments) for instruction, arguments in final if instruction == "ENTRYPOINT"]
    assert entrypoint[:2] == ["mmserve", "serve"]


def test_the_cpu_image_bundles_the_same_triton_as_make_setup():
    """One pin for the bundled tritonserver: the image must install what the Makefile installs."""
    pins = re.findall(r"pip install -q --no-deps (nvidia-pytriton==[\d.]+)", (ROOT / "Makefile").read_text())
    assert pins, "the Makefile no longer pins nvidia-pytriton"
    text = (DOCKER / "Dockerfile.cpu").read_text()
    assert f"pip install --no-deps {pins[0]}" in text
    assert "FROM python:3.11-slim" in text  # the stub links libpython3.11


# ---- YAML -------------------------------------------------------------------------------------


def test_yamllint_passes_on_every_yaml_file():
    files = sorted(str(p) for p in DOCKER.rglob("*.yaml"))
    assert len(files) >= 15
    result = subprocess.run([_tool("yamllint"), "-f", "parsable", "-c", str(DOCKER / ".yamllint.yaml"), *files],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout


# ---- Kubernetes -------------------------------------------------------------------------------


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        _missing("kubectl is not installed: `kubectl kustomize` renders the overlays (docs/deploy.md)")
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [o for o in yaml.safe_load_all(result.stdout) if o]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, _kustomize(K8S / "overlays" / request.param)


def _one(objects: list[dict[str, Any]], kind: str, name: str = "mmserve") -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _validate(obj: dict[str, Any]) -> None:
    import kubernetes_validate

    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def test_every_rendered_object_is_valid_for_the_kubernetes_api(rendered):
    _, objects = rendered
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["Deployment", "Service", "Service", "Service", "PodDisruptionBudget",
                            "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor"])
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: its shape is checked below
        _validate(obj)


def test_the_validator_rejects_a_broken_object(rendered):
    """The check above can fail: a misspelt field in the Deployment is an error."""
    import kubernetes_validate

    _, objects = rendered
    broken = json.loads(json.dumps(_one(objects, "Deployment")))
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_pods_are_locked_down(rendered):
    _, objects = rendered
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the images' USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
    # What a read-only root still needs writable (measured: the Python backend unpacks into
    # /tmp, moves tensors through /dev/shm; mmserve serve keeps its runs under its home).
    triton = pod["containers"][0]
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", "/dev/shm", "/var/lib/mmserve"):
        assert "emptyDir" in volumes[mounts[path]["name"]] and not mounts[path].get("readOnly")
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"


def test_the_repository_comes_from_the_init_container(rendered):
    _, objects = rendered
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    target = next(m for m in init["volumeMounts"] if m["name"] == "models")["mountPath"]
    assert init["command"][-1].rstrip("/") == target and "mmserve-models" in init["image"]
    models = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "models")
    assert models["mountPath"] == "/models" and models["readOnly"] is True  # the image's --repository


def test_probes_use_tritons_health_endpoints(rendered):
    _, objects = rendered
    triton = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002, "supervisor": 8003}
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        assert triton[probe]["httpGet"] == {"path": path, "port": "http"}


def test_overlays_size_the_pods_for_their_device(rendered):
    overlay, objects = rendered
    triton = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    resources = triton["resources"]
    if overlay == "gpu":
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
        assert "-cpu" not in triton["image"]
    else:
        assert "nvidia.com/gpu" not in json.dumps(resources)
        for kind in ("cpu", "memory"):
            assert kind in resources["requests"] and kind in resources["limits"]
        assert "mmserve-cpu" in triton["image"]


def test_secrets_are_only_referenced(rendered):
    """Keys reach the pod as mounted Secrets named by the Deployment; no Secret is rendered."""
    _, objects = rendered
    assert not [o for o in objects if o["kind"] == "Secret"]
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"admin-key": "mmserve-admin-key", "api-key": "mmserve-api-key", "tls": "mmserve-tls"}
    triton = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in triton["volumeMounts"]}
    assert f"--admin-key-file={mounts['admin-key']}/admin-key" in triton["args"]
    # Inference needs a key too: the NetworkPolicy admits labelled pods to gRPC, and without
    # one they would bypass the gateway's tenants, limits, quotas and usage records.
    assert f"--api-key-file={mounts['api-key']}/api-key" in triton["args"], (
        "Triton sets no inference key: add --api-key-file from the Secret mmserve-api-key")
    assert f"--tls-cert={mounts['tls']}/tls.crt" in triton["args"] and f"--tls-key={mounts['tls']}/tls.key" in triton["args"]
    assert not [e for e in triton.get("env", []) if "value" in e and "KEY" in e["name"]]


def test_services_policy_and_monitor_agree_on_ports(rendered):
    _, objects = rendered
    pod_labels = _one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for p in _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"]}

    assert [p["name"] for p in _one(objects, "Service")["spec"]["ports"]] == ["grpc"]  # HTTP has no TLS
    for service in (o for o in objects if o["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports

    policy = _one(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    admitted = {port["port"]: rule["from"] for rule in policy["ingress"] for port in rule["ports"]}
    assert set(admitted) == {"grpc", "metrics", "supervisor"}  # never http: the kubelet alone probes it
    assert all(p in container_ports for p in admitted)
    monitoring = [{"kubernetes.io/metadata.name": "monitoring"}]
    assert [s["namespaceSelector"]["matchLabels"] for s in admitted["metrics"]] == monitoring
    assert policy["egress"] == [] and "Egress" in policy["policyTypes"]

    budget = _one(objects, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items() and budget["maxUnavailable"] == 1

    # The ServiceMonitor (a CRD, outside the API's schemas): its shape, and what it points at.
    monitor = _one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    scraped = [s for s in objects if s["kind"] == "Service"
               and monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()]
    assert [s["metadata"]["name"] for s in scraped] == ["mmserve-metrics"]
    service_ports = {p["name"] for p in scraped[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings"}
        assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[sm]", endpoint["interval"]) and re.fullmatch(r"\d+[sm]", endpoint["scrapeTimeout"])


def _adapter_rules() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    config_map = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    return config_map, yaml.safe_load(config_map["data"]["config.yaml"])["rules"]


def test_the_hpa_scales_on_the_metric_the_adapter_serves(rendered):
    _, objects = rendered
    hpa = _one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mmserve"}
    assert 1 < hpa["minReplicas"] < hpa["maxReplicas"]
    (pods_metric,) = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
    config_map, rules = _adapter_rules()
    _validate(config_map)
    served = {rule["name"]["as"]: rule for rule in rules}
    rule = served[pods_metric["metric"]["name"]]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}  # a per-pod metric
    assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


def test_the_example_secrets_hold_placeholders_only():
    text = (K8S / "examples" / "secrets.example.yaml").read_text()
    secrets = [o for o in yaml.safe_load_all(text) if o]
    assert {s["metadata"]["name"] for s in secrets} == {"mmserve-admin-key", "mmserve-api-key", "mmserve-tls"}
    for secret in secrets:
        _validate(secret)
        assert all(value.startswith("PLACEHOLDER") for value in secret["stringData"].values())
    for kustomization in K8S.rglob("kustomization.yaml"):  # never applied by kustomize
        entries = yaml.safe_load(kustomization.read_text())
        assert not [r for r in entries.get("resources", []) + entries.get("components", []) if "examples" in r]


def test_no_key_material_anywhere_under_docker():
    for path in DOCKER.rglob("*"):
        if path.is_file() and "secrets" not in path.parts:
            assert "-----BEGIN" not in path.read_text(errors="replace"), path


# ---- Grafana ----------------------------------------------------------------------------------


def _expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def _metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b((?:nv|mmserve)_[a-z_]+)\b", expression))


@pytest.fixture(scope="module")
def triton_metric_names(tmp_path_factory) -> set[str]:
    """Metric names a real Triton 2.51 exports once a model has served: bundled tritonserver,
    summary latencies on, a one-line Python model that answers one request and fails one."""
    import tritonclient.grpc as grpcclient

    from mmserve.server import ServerPorts, TritonServer

    repository = tmp_path_factory.mktemp("metrics-repository")
    model = repository / "echo"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "echo"\nbackend: "python"\nmax_batch_size: 8\ndynamic_batching {}\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    (model / "1" / "model.py").write_text(
        "import triton_python_backend_utils as pb_utils\n"
        "class TritonPythonModel:\n"
        "    def execute(self, requests):\n"
        "        return [pb_utils.InferenceResponse([pb_utils.Tensor('Y', pb_utils.get_input_tensor_by_name(r, 'X').as_numpy())])\n"
        "                for r in requests]\n"
    )
    try:
        server = TritonServer(repository, ServerPorts.free(), extra_args=("--metrics-config=summary_latencies=true",))
        server.start()
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"no tritonserver to scrape here: {error}")
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        value = grpcclient.InferInput("X", [1, 1], "FP32")
        value.set_data_from_numpy(np.ones((1, 1), np.float32))
        client.infer("echo", [value])
        wrong = grpcclient.InferInput("X", [1, 2], "FP32")  # a request Triton rejects: a failure series
        wrong.set_data_from_numpy(np.ones((1, 2), np.float32))
        with pytest.raises(Exception):
            client.infer("echo", [wrong])
        with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
            text = response.read().decode()
    finally:
        server.stop()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_dashboard_is_a_sound_grafana_dashboard():
    dashboard = json.loads((DOCKER / "grafana" / "mmserve.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__interval"}
            assert used <= set(variables), (panel["title"], used - set(variables))
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for subject in ("requests per second", "failures", "p50", "p99", "queue vs compute", "gpu"):
        assert subject in titles


def test_every_query_names_a_metric_triton_exports(triton_metric_names):
    dashboard = json.loads((DOCKER / "grafana" / "mmserve.json").read_text())
    known = triton_metric_names | GPU_ONLY_METRICS
    assert "nv_inference_request_summary_us" in triton_metric_names  # summaries were on: p50/p99 exist
    assert not GPU_ONLY_METRICS & triton_metric_names  # (a CPU server: these really are GPU-only)
    named = set()
    for title, expression in _expressions(dashboard):
        names = _metric_names(expression)
        assert names, f"{title}: {expression} names no metric"
        assert names <= known, f"{title}: {sorted(names - known)} not exported by Triton 2.51"
        named |= names
    for required in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_request_summary_us",
                     "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"):
        assert required in named
    _, rules = _adapter_rules()
    for rule in rules:
        assert _metric_names(rule["seriesQuery"] + rule["metricsQuery"]) <= triton_metric_names


# ---- checkov (a 300 MB tool in its own venv, made by `make setup`) -----------------------------

# Checks that do not apply, each with why. Any other failure fails the test.
CHECKOV_SKIPS = {
    "CKV_K8S_43": "images are pinned by version tag in the overlays; a digest is set at deploy time "
                  "(kustomize `images: digest:`) for the registry actually used",
    "CKV_K8S_15": "imagePullPolicy Always suits moving tags; ours are versions (IfNotPresent is right)",
    "CKV_DOCKER_7": "the NGC base is `${TRITON_IMAGE}`, whose default is a pinned YY.MM-py3 release",
}


def _checkov() -> str:
    local = ROOT / "artifacts" / "checkov-venv" / "bin" / "checkov"
    found = str(local) if local.exists() else shutil.which("checkov")
    if found is None:
        _missing("checkov is not installed (300 MB, kept out of the dev extra; `make setup` puts it in its own venv): python3.11 -m venv "
                    "artifacts/checkov-venv && artifacts/checkov-venv/bin/pip install checkov (docs/deploy.md)")
    return found


def _checkov_failures(*args: str) -> list[str]:
    result = subprocess.run([_checkov(), "--skip-download", "--compact", "-o", "json",
                             "--skip-check", ",".join(CHECKOV_SKIPS), *args], capture_output=True, text=True, check=False)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert sum(r["summary"]["passed"] for r in reports) > 0, result.stderr[-2000:]
    return [f"{c['check_id']} {c['check_name']} ({c['resource']})" for r in reports for c in r["results"]["failed_checks"]]


def test_checkov_passes_on_the_rendered_overlays(tmp_path):
    for overlay in OVERLAYS:
        objects = _kustomize(K8S / "overlays" / overlay)
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objects))
    assert _checkov_failures("--framework", "kubernetes", "-d", str(tmp_path)) == []


def test_checkov_passes_on_the_dockerfiles():
    files = [a for name in DOCKERFILES for a in ("-f", str(DOCKER / name))]
    assert _checkov_failures("--framework", "dockerfile", *files) == []
