"""Containers, Compose, Kubernetes and the Grafana dashboard, checked with real tools.

No image can be built and no cluster reached here, so what runs is what can: hadolint on
every Dockerfile, yamllint on every YAML file, `kubectl kustomize` on both overlays and
kubernetes-validate (the API's own OpenAPI schemas, strict) on every rendered object; the
CRDs the schemas do not hold (ServiceMonitor) and the Compose files are checked for shape
here. The dashboard's queries are checked against the metric names a real Triton 2.51
exports, scraped from the bundled tritonserver with summary latencies on.
"""
from __future__ import annotations

import argparse
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


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's `!override` tag: the list it marks replaces the base file's list."""


class _Override(list):
    """A list tagged `!override` in a Compose file."""


_ComposeLoader.add_constructor("!override", lambda loader, node: _Override(loader.construct_sequence(node)))


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


# ---- Compose ----------------------------------------------------------------------------------


def _compose(name: str) -> dict[str, Any]:
    return yaml.load((DOCKER / name).read_text(), Loader=_ComposeLoader)  # noqa: S506 - SafeLoader subclass


def test_compose_has_server_console_gateway_and_a_bench_job():
    compose = _compose("compose.yaml")
    services = compose["services"]
    assert set(services) == {"server", "console", "gateway", "bench"}
    for name, service in services.items():
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "user" not in service  # the image's non-root USER
        assert not [v for k, v in (service.get("environment") or {}).items() if "KEY" in k], name  # keys are files
        for secret in service.get("secrets", []):
            source = compose["secrets"][secret]["file"]
            assert source.startswith("./secrets/")  # docker/secrets/, ignored by git
    server = services["server"]
    assert server["build"]["dockerfile"] == "docker/Dockerfile.cpu" and server["build"]["target"] == "server"
    assert server["shm_size"] and "--admin-key-file=/run/secrets/mmserve_admin_key" in server["command"]
    assert services["console"]["command"][:3] == ["console", "--server=server:8001", "--port=8080"]
    assert services["console"]["depends_on"]["server"]["condition"] == "service_healthy"
    bench = services["bench"]
    assert bench["profiles"] == ["bench"] and bench["command"][:2] == ["bench", "--url=server:8001"]
    assert set(compose["volumes"]) >= {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}


def test_compose_overrides_change_only_what_they_say():
    base = _compose("compose.yaml")["services"]
    gpu = _compose("compose.gpu.yaml")["services"]
    assert set(gpu) == {"server"}
    assert gpu["server"]["build"]["dockerfile"] == "docker/Dockerfile" and gpu["server"]["build"]["target"] == "server"
    (device,) = gpu["server"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    bench = _compose("compose.bench.yaml")["services"]
    assert set(bench) == {"server", "console", "gateway"}
    assert not [a for a in bench["server"]["command"] if a.startswith("--tls")]
    assert bench["server"]["ports"] == ["127.0.0.1:8001:8001"]  # plaintext gRPC stays on this host
    # plaintext for a benchmark, but the admin key still; no inference key (perf_analyzer sends none)
    assert [a for a in bench["server"]["command"] if a.startswith("--admin-key")] == [
        a for a in base["server"]["command"] if a.startswith("--admin-key")] != []
    assert not [a for a in bench["server"]["command"] if a.startswith("--api-key")]
    # Replaced, not merged into the base's lists (which hold the TLS flags and the public port).
    for overridden in (bench["server"]["command"], bench["server"]["ports"], bench["console"]["command"],
                       bench["gateway"]["command"]):
        assert isinstance(overridden, _Override)


def _compose_variants() -> Iterator[tuple[str, dict[str, Any]]]:
    """Each way the Compose files run, as (files, services): an override's service replaces the
    base's command (Compose replaces `command:`; the bench file also says `!override`)."""
    base = _compose("compose.yaml")["services"]
    yield "compose.yaml", base
    bench = json.loads(json.dumps(base))
    for name, service in _compose("compose.bench.yaml")["services"].items():
        bench[name].update(service)
    yield "compose.yaml + compose.bench.yaml", bench


def _cli_args(name: str, service: dict[str, Any]):  # noqa: ANN202 - an argparse.Namespace
    """A service's command as the real `mmserve` parser reads it: the tools image's entrypoint is
    `mmserve`, the server images' is `mmserve serve ...` (Dockerfile.cpu), to which `command:` is appended."""
    from mmserve.cli import build_parser

    argv = [str(a) for a in service["command"]]
    if name == "server":
        (entrypoint,) = [json.loads(a) for i, a in _stages(DOCKER / "Dockerfile.cpu")[-1] if i == "ENTRYPOINT"]
        argv = entrypoint[1:] + argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"Compose service {name}: the real CLI refuses `mmserve {' '.join(argv)}` (its message above)")
    # Whole option names only: argparse also takes a prefix (`--metrics-key` for --metrics-key-file).
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
    options = commands.choices[argv[0]]._option_string_actions  # noqa: SLF001
    unknown = [a for a in argv if a.startswith("--") and a.partition("=")[0] not in options]
    assert not unknown, f"Compose service {name}: {unknown} are not whole options of `mmserve {argv[0]}`"
    return args


def test_compose_commands_are_what_the_cli_accepts():
    for files, services in _compose_variants():
        for name, service in services.items():
            args = _cli_args(name, service)
            assert args.command == ("serve" if name == "server" else name), (files, name)


def test_compose_keys_and_certificates_come_from_secret_files():
    """Every key, certificate or CA a command names is a file under /run/secrets/ that the
    service mounts (never a value on the command line, where `ps` shows it); the gateway never
    holds Triton's admin key."""
    for files, services in _compose_variants():
        for name, service in services.items():
            for arg in map(str, service["command"]):
                flag, _, value = arg.partition("=")
                if re.search(r"key|cert|-ca$", flag):
                    secret = value.removeprefix("/run/secrets/")
                    assert value.startswith("/run/secrets/") and secret in service.get("secrets", []), (files, name, arg)
                    assert flag not in ("--admin-key", "--api-key"), (files, name, arg)
        assert "mmserve_admin_key" not in services["gateway"].get("secrets", []), files


def test_compose_secrets_are_declared():
    """Every secret a service mounts is declared at the top level, from docker/secrets/ (git-ignored)."""
    declared = _compose("compose.yaml")["secrets"]
    for files, services in _compose_variants():
        for name, service in services.items():
            undeclared = set(service.get("secrets", [])) - set(declared)
            assert not undeclared, f"{files}: service {name} mounts {sorted(undeclared)}, not declared under `secrets:`"
    for secret, source in declared.items():
        assert source["file"].startswith("./secrets/"), (secret, source)


# The option by which each command that dials Triton for inference reads its inference key
# (a file). `mmserve bench` has none: perf_analyzer sends no header over gRPC, so the bench
# job runs only with compose.bench.yaml, whose server enforces no inference key.
INFERENCE_KEY_OPTIONS = {"console": "--api-key-file", "gateway": "--triton-api-key-file"}
BENCH_ONLY = {"bench"}


def test_compose_inference_needs_the_key_on_every_path():
    """Port 8001 is published: the server sets an inference key from a secret (without it anyone
    reaching the port would run inference past the gateway's keys, limits, quotas and usage),
    and every service that dials the server holds that same secret file. The benchmark
    override alone serves without it (plaintext, loopback-published), and then no service holds
    one (the console refuses a key Triton does not enforce); the bench job lists the
    pipelines with the admin key."""
    for files, services in _compose_variants():
        benchmark = "compose.bench.yaml" in files
        server = _cli_args("server", services["server"])
        assert server.api_key is None, files  # never the value on the command line
        if benchmark:
            assert server.api_key_file is None, files
        else:
            assert str(server.api_key_file) == "/run/secrets/mmserve_api_key", (
                f"{files}: the server sets no --api-key-file: anyone who reaches port 8001 runs inference without a key")
        clients = 0
        for name, service in services.items():
            if name == "server":
                continue
            args = _cli_args(name, service)
            dialed = getattr(args, "server", None) or getattr(args, "url", None)
            assert dialed and dialed.rpartition(":")[0] == "server", (files, name, dialed)  # each one is a client
            clients += 1
            if args.command in BENCH_ONLY:
                assert str(args.admin_key_file) == "/run/secrets/mmserve_admin_key", (files, name)
                continue
            option = INFERENCE_KEY_OPTIONS[args.command]
            value = getattr(args, option.lstrip("-").replace("-", "_"))
            assert value == server.api_key_file, (
                f"{files}: service {name} and the server disagree on the inference key: "
                f"{option}={value}, the server's --api-key-file={server.api_key_file}")
        assert clients == len(services) - 1 >= 3, files


def test_compose_gateway_runs_the_gateway_extra_against_the_server():
    from mmserve.cli.gateway import listen_of
    from mmserve.gateway.store import STORE_ENV

    compose = _compose("compose.yaml")
    gateway = compose["services"]["gateway"]
    # The image: the console's (tools target), whose install names the gateway extra.
    assert gateway["build"] == compose["services"]["console"]["build"] and gateway["image"] == "mmserve-tools:latest"
    (tools,) = [s for s in _stages(DOCKER / "Dockerfile.cpu") if " AS tools" in s[0][1]]
    extras = re.findall(r'pip install "\.\[([\w,]+)\]"', " ".join(a for i, a in tools if i == "RUN"))
    assert extras and "gateway" in extras[0].split(","), extras
    # The store: SQLite on the service's named volume, declared at the top level.
    store = gateway["environment"][STORE_ENV]
    mounts = dict(v.split(":")[::-1] for v in gateway["volumes"])
    assert store.startswith("sqlite:///") and str(Path(store.removeprefix("sqlite://")).parent) in mounts, store
    assert set(mounts.values()) <= set(compose["volumes"])
    assert gateway["depends_on"]["server"]["condition"] == "service_healthy"
    for files, services in _compose_variants():
        args = _cli_args("gateway", services["gateway"])
        assert args.store is None and args.repository == Path("/models"), files  # the store from the environment
        host, _, port = args.server.rpartition(":")
        assert host == "server" and f"{port}:{port}" in str(compose["services"]["server"]["ports"]), (files, args.server)
        # TLS to Triton exactly when the server speaks it (the bench override drops it).
        server_tls = any(str(a).startswith("--tls-cert") for a in services["server"]["command"])
        assert (args.triton_tls_ca is not None) == server_tls, files
        listen_of(args, args.host, args.port).check()  # what `mmserve gateway` itself refuses at start
        # Published on this host's loopback only, on the port the gateway listens on.
        assert services["gateway"]["ports"] == [f"127.0.0.1:{args.port}:{args.port}"], files


def test_compose_gateway_healthcheck_asks_a_real_route(tmp_path):
    """The healthcheck's URL is the gateway's own port and a route the real app answers 200."""
    from urllib.parse import urlsplit

    from starlette.testclient import TestClient

    from mmserve.gateway.app import GatewayConfig, create_app
    from mmserve.gateway.catalog import Catalog
    from mmserve.gateway.store import open_store, run

    gateway = _compose("compose.yaml")["services"]["gateway"]
    args = _cli_args("gateway", gateway)
    check = gateway["healthcheck"]
    assert check["test"][:3] == ["CMD", "python3", "-c"]  # no curl in the tools image; its venv's python3
    (url,) = re.findall(r"'(https?://[^']+)'", check["test"][3])
    where = urlsplit(url)
    assert (where.scheme, where.hostname, where.port) == ("http", "127.0.0.1", args.port)
    for field in ("interval", "timeout", "start_period"):
        assert re.fullmatch(r"\d+s", check[field]), field
    store = open_store(tmp_path / "store.sqlite3")
    app = create_app(GatewayConfig(server=args.server, catalog=Catalog(tmp_path), store=store))
    client = TestClient(app)  # no lifespan: the route alone, no Triton needed
    try:
        assert client.get(where.path).status_code == 200
        assert client.get(where.path + "-not-a-route").status_code == 404  # (the check can fail)
    finally:
        run(store.close())


def test_compose_files_pass_docker_compose_config():
    """Compose's own validation, where a Compose v2 is installed (the docker CLI alone cannot)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode:
        pytest.skip("no Docker Compose v2 here (the docker CLI has no compose plugin, Debian 12 packages only "
                    "Compose v1.29, which predates `!override`); shapes are checked by the tests above")
    for files in (["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"], ["compose.yaml", "compose.bench.yaml"]):
        args = [a for f in files for a in ("-f", str(DOCKER / f))]
        result = subprocess.run([docker, "compose", *args, "--profile", "bench", "config", "--quiet"],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr


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
