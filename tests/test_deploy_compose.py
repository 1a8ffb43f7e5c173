"""The Compose files, checked for shape without Docker (no Compose v2 here): every service's
command as the real `mmserve` parser reads it, keys only as mounted secrets, inference behind
the server's key on every path, the gateway's image, store, TLS and healthcheck, and Compose's
own validation where a Compose v2 is installed."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from test_deploy_files import DOCKER, _stages


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's `!override` tag: the list it marks replaces the base file's list."""


class _Override(list):
    """A list tagged `!override` in a Compose file."""


_ComposeLoader.add_constructor("!override", lambda loader, node: _Override(loader.construct_sequence(node)))


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
