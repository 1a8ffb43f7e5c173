"""`mmserve products|load|unload|reload|rollback` as an operator meets them: real
subprocesses against a real server, messages and exit codes, the audit log, and a new
export reloaded (then rolled back) under load with zero failed requests.

Its own TritonServer over a copy of the session's repository, so nothing here disturbs
the other tests.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from certificates import make_certificates
from mmserve.client import Client
from mmserve.lifecycle import Lifecycle
from mmserve.server import ServerPorts, TritonServer

MMSERVE = str(Path(sys.executable).parent / "mmserve")
LOADED = ["text_embed", "sentiment"]
ADMIN_KEY = "lifecycle-test-key"


@pytest.fixture(scope="module")
def repo(repository: Path, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("cli-lifecycle") / "repository"
    shutil.copytree(repository, copy, ignore=shutil.ignore_patterns(".mmserve-audit.jsonl"))
    return copy


@pytest.fixture(scope="module")
def own_server(repo: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("cli-lifecycle-log") / "triton.log"
    with TritonServer(repo, ServerPorts.free(), models=LOADED, log_file=log) as running:
        yield running


def mmserve(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MMSERVE_") or k == "MMSERVE_STATE_DIR"}
    return subprocess.run(
        [MMSERVE, *args], capture_output=True, text=True, timeout=600, env={**environment, **(env or {})},
        stdin=subprocess.DEVNULL, cwd=cwd,  # not a terminal: what asks for confirmation needs --yes
    )


def against(server: TritonServer, repo: Path) -> tuple[str, ...]:
    return ("--server", server.grpc_url, "--repository", str(repo))


def products_json(server: TritonServer, repo: Path) -> dict[str, dict]:
    result = mmserve("products", "--json", *against(server, repo))
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)}


def _ensembles(repo: Path) -> set[str]:
    return {p.parent.name for p in repo.glob("*/config.pbtxt") if 'platform: "ensemble"' in p.read_text()}


def test_products_lists_products_not_steps_with_kind_version_state_and_headline(own_server, repo: Path):
    result = mmserve("products", *against(own_server, repo))

    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["PRODUCT", "KIND", "SERVING", "ON-DISK", "STATE", "HEADLINE"]
    rows = {line.split()[0]: line.split() for line in lines if line.split()[0] in _ensembles(repo)}
    assert set(rows) == _ensembles(repo)
    assert not any(line.startswith(("text_tokenize", "sentiment_encoder")) for line in lines)
    assert rows["sentiment"][1:5] == ["text_classify", "1", "1", "READY"]  # served 1, active on disk 1
    assert rows["audio_classify"][2:5] == ["-", "1", "UNLOADED"]
    metrics = json.loads((repo / "sentiment" / "1" / "card.json").read_text())["metrics"]
    accuracy = metrics["dev_metrics"]["accuracy"]
    assert " ".join(rows["sentiment"][5:]) == f"dev accuracy {accuracy:.3f}"  # from the product card


def test_products_json_has_steps_versions_and_cards(own_server, repo: Path):
    products = products_json(own_server, repo)

    sentiment = products["sentiment"]
    assert sentiment["kind"] == "text_classify" and sentiment["state"] == "READY"
    assert [(s["name"], s["shared"]) for s in sentiment["steps"]] == [
        ("text_tokenize", True), ("sentiment_encoder", False), ("sentiment_postprocess", False),
    ]
    assert [t["name"] for t in sentiment["outputs"]] == ["PROBS", "LABEL"]
    (version,) = sentiment["versions"]
    assert version["active"] and version["card"]["kind"] == "text_classify"


def test_products_offline_reads_the_repository_only(repo: Path):
    result = mmserve("products", "--offline", "--json", "--repository", str(repo), "--server", "127.0.0.1:1")

    assert result.returncode == 0, result.stderr
    assert {p["state"] for p in json.loads(result.stdout)} == {"UNKNOWN"}


def test_an_unknown_product_exits_2_and_lists_the_products(own_server, repo: Path):
    result = mmserve("reload", "sentimnt", *against(own_server, repo))
    assert result.returncode == 2
    assert "no product 'sentimnt'" in result.stderr and "sentiment" in result.stderr and "Traceback" not in result.stderr

    step = mmserve("unload", "text_tokenize", *against(own_server, repo))
    assert step.returncode == 2 and "internal step of" in step.stderr
    refused = Lifecycle(repo).audit(limit=2)  # refusals are on record too
    assert [(e.action, e.product, e.result.split(":")[0]) for e in refused] == [
        ("unload", "text_tokenize", "UnknownProductError"), ("reload", "sentimnt", "UnknownProductError"),
    ]


def test_no_server_exits_3_and_says_how_to_start_one(repo: Path):
    port = ServerPorts.free().grpc  # nobody listens there
    result = mmserve("load", "text_embed", "--server", f"127.0.0.1:{port}", "--repository", str(repo))

    assert result.returncode == 3
    assert f"no server reachable at 127.0.0.1:{port}" in result.stderr and "mmserve serve" in result.stderr
    listing = mmserve("products", "--server", f"127.0.0.1:{port}", "--repository", str(repo))
    assert listing.returncode == 3 and "--offline" in listing.stderr


def test_unload_and_load_through_the_cli_are_audited_as_the_user(own_server, repo: Path):
    unasked = mmserve("unload", "sentiment", *against(own_server, repo))  # stdin is not a terminal
    assert unasked.returncode == 2 and "requests to sentiment will fail" in unasked.stderr and "--yes" in unasked.stderr
    assert products_json(own_server, repo)["sentiment"]["state"] == "READY"  # nothing done

    unload = mmserve("unload", "sentiment", *against(own_server, repo), "--yes")
    assert unload.returncode == 0, unload.stderr
    assert "unloaded sentiment" in unload.stdout and "kept text_tokenize" in unload.stdout
    assert products_json(own_server, repo)["sentiment"]["state"] == "UNLOADED"

    load = mmserve("load", "sentiment", *against(own_server, repo))
    assert load.returncode == 0, load.stderr
    assert products_json(own_server, repo)["sentiment"]["state"] == "READY"

    actor = f"{getpass.getuser()}@{socket.gethostname()}"
    entries = Lifecycle(repo).audit(limit=3)
    assert [(e.action, e.product, e.actor, e.result) for e in entries] == [
        ("load", "sentiment", actor, "ok"), ("unload", "sentiment", actor, "ok"),
        ("unload", "sentiment", actor, "refused: not confirmed (--yes not given)"),
    ]


def test_a_mutual_tls_server_with_an_admin_key_refuses_with_the_cause_exit_4(repo: Path, tmp_path: Path):
    pki = make_certificates(tmp_path / "pki")
    restricted = TritonServer(
        repo, ServerPorts.free(), models=["text_embed"], log_file=tmp_path / "triton.log", admin_key=ADMIN_KEY,
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca,
    )
    certificate = ("--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key))
    with restricted:
        anonymous = mmserve("products", *against(restricted, repo), "--tls-ca", str(pki.ca), "--admin-key", ADMIN_KEY)
        assert anonymous.returncode == 4, anonymous.stderr
        assert "requires a client certificate" in anonymous.stderr and "--tls-cert" in anonymous.stderr
        assert "no server reachable" not in anonymous.stderr and "attempt" not in anonymous.stderr
        plaintext = mmserve("reload", "text_embed", *against(restricted, repo), "--admin-key", ADMIN_KEY)
        assert plaintext.returncode == 4 and "speaks TLS only" in plaintext.stderr and "--tls-ca" in plaintext.stderr

        refused = mmserve("reload", "text_embed", *against(restricted, repo), *certificate)
        assert refused.returncode == 4, refused.stderr
        assert "refused" in refused.stderr and "MMSERVE_ADMIN_KEY" in refused.stderr

        wrong = mmserve("reload", "text_embed", *against(restricted, repo), *certificate, "--admin-key", "not-the-key")
        assert wrong.returncode == 4

        with_key = mmserve("reload", "text_embed", *against(restricted, repo), *certificate,
                           env={"MMSERVE_ADMIN_KEY": ADMIN_KEY})
        assert with_key.returncode == 0, with_key.stderr
        listing = mmserve("products", *against(restricted, repo), *certificate, "--admin-key", ADMIN_KEY)
        assert listing.returncode == 0 and "text_embed" in listing.stdout
    # Every attempt is on record with its result: the refusals (exit 4) as well as the reload.
    results = [(e.action, e.result.split(":")[0]) for e in Lifecycle(repo).audit(limit=4)]
    assert results == [
        ("reload", "ok"), ("reload", "PermissionDeniedError"), ("reload", "PermissionDeniedError"),
        ("reload", "TLSRequiredError"),
    ]


def test_a_repository_the_server_does_not_serve_is_refused_and_not_written_to(own_server, repo: Path, tmp_path: Path):
    other = tmp_path / "other"
    shutil.copytree(repo, other, ignore=shutil.ignore_patterns(".mmserve-audit.jsonl"))  # a copy, id file and all
    listing = mmserve("products", *against(own_server, other))
    assert listing.returncode == 2 and f"serves {repo}" in listing.stderr and f"--repository {repo}" in listing.stderr
    reload = mmserve("reload", "sentiment", *against(own_server, other))
    assert reload.returncode == 2 and "not" in reload.stderr and "failed to poll" not in reload.stderr
    unload = mmserve("unload", "sentiment", *against(own_server, other), "--yes")
    assert unload.returncode == 2
    assert not (other / ".mmserve-audit.jsonl").exists()  # no audit line in the wrong repository
    assert products_json(own_server, repo)["sentiment"]["state"] == "READY"  # and nothing done

    # Not this user's server on this host (no registry): the id the server reports decides.
    elsewhere = {"MMSERVE_STATE_DIR": str(tmp_path / "no-registry")}
    by_id = mmserve("products", *against(own_server, other), env=elsewhere)
    assert by_id.returncode == 2 and "serves the repository with id" in by_id.stderr and "a copy" in by_id.stderr
    same = mmserve("products", *against(own_server, repo), env=elsewhere)
    assert same.returncode == 0, same.stderr


def test_the_server_alone_is_enough_to_list_what_it_serves(own_server, repo: Path, tmp_path: Path):
    # From another folder, no --repository: this user's server on this host names its repository.
    found = mmserve("products", "--json", "--server", own_server.grpc_url, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert {p["name"] for p in json.loads(found.stdout)} == _ensembles(repo)
    # A server whose repository is not at hand: what it serves, from its own index and configs.
    elsewhere = {"MMSERVE_STATE_DIR": str(tmp_path / "no-registry")}
    served = mmserve("products", "--json", "--server", own_server.grpc_url, cwd=tmp_path, env=elsewhere)
    assert served.returncode == 0, served.stderr
    products = {p["name"]: p for p in json.loads(served.stdout)}
    assert LOADED[1] in products and "audio_classify" not in products  # loaded ones only
    sentiment = products["sentiment"]
    assert (sentiment["kind"], sentiment["state"], sentiment["served_version"]) == ("text_classify", "READY", 1)
    assert [t["name"] for t in sentiment["outputs"]] == ["PROBS", "LABEL"] and sentiment["versions"] == []
    table = mmserve("products", "--server", own_server.grpc_url, cwd=tmp_path, env=elsewhere)
    assert table.returncode == 0 and "its repository is not at hand" in table.stdout and "No products" not in table.stdout
    reload = mmserve("reload", "sentiment", "--server", own_server.grpc_url, cwd=tmp_path, env=elsewhere)
    assert reload.returncode == 2 and "pass --repository" in reload.stderr


# --- a new export reloaded, then rolled back, under load ----------------------------------


@dataclass
class Traffic:
    """Client threads calling one product in a loop, counting every request and failure."""

    url: str
    product: str
    text: str
    threads: int = 4
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> "Traffic":
        self._workers = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=120)

    def _loop(self) -> None:
        with Client(self.url, timeout=60.0, retry=None) as client:
            while not self._stop.is_set():
                try:
                    client.embed_text(self.text, pipeline=self.product)
                    error = None
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    error = f"{type(exc).__name__}: {exc}"
                with self._changed:
                    self.sent += 1
                    if error is not None:
                        self.failed += 1
                        self.errors.append(error)
                    self._changed.notify_all()

    def wait_for(self, more: int) -> None:
        """Block until `more` further requests have been answered (a count, not a time)."""
        with self._changed:
            target = self.sent + more
            assert self._changed.wait_for(lambda: self.sent >= target, timeout=300), "the load threads stalled"


def embedding(url: str, text: str) -> np.ndarray:
    with Client(url, timeout=60.0) as client:
        return client.embed_text(text)


def test_reload_and_rollback_under_load_fail_no_request(own_server, repo: Path, tmp_path: Path):
    from mmserve.exporters.text import export_text
    from mmserve.training.text_tiny import make_tiny_bert

    text = "the same words before and after the new version"
    url = own_server.grpc_url
    lifecycle = Lifecycle(repo)
    first = lifecycle.product("text_embed").active_version
    served_first = embedding(url, text)

    with Traffic(url, "text_embed", text) as traffic:
        traffic.wait_for(40)
        export_text(make_tiny_bert(tmp_path / "other-bert", seed=1), repo)  # other weights, same shapes
        assert lifecycle.product("text_embed").active_version == first + 1  # the export made it active on disk
        # Not served yet: products says what is served, what is on disk and how to reconcile them.
        exported = products_json(own_server, repo)["text_embed"]
        assert (exported["served_version"], exported["active_version"]) == (first, first + 1)
        assert exported["drift"] == f"v{first + 1} exported, v{first} serving — run `mmserve reload text_embed`"
        table = mmserve("products", *against(own_server, repo)).stdout
        assert f"text_embed: {exported['drift']}" in table
        reload = mmserve("reload", "text_embed", *against(own_server, repo))
        assert reload.returncode == 0, reload.stderr
        assert f"version {first} -> {first + 1}" in reload.stdout
        traffic.wait_for(40)
        served_new = embedding(url, text)

        rollback = mmserve("rollback", "text_embed", *against(own_server, repo))
        assert rollback.returncode == 0, rollback.stderr
        traffic.wait_for(40)
        served_back = embedding(url, text)

    print(f"\nreload + rollback under load: {traffic.sent} requests from {traffic.threads} threads, "
          f"{traffic.failed} failed")
    assert traffic.failed == 0, traffic.errors[:5]
    assert not np.allclose(served_new, served_first, atol=1e-3)  # the new export is what is served
    np.testing.assert_allclose(served_back, served_first, atol=1e-6)  # and the rollback brought back the first
    assert f"version {first + 1} -> {first}" in rollback.stdout
    product = Lifecycle(repo, Client(url)).product("text_embed")
    assert (product.active_version, product.state) == (first, "READY")
    assert [v.version for v in product.versions][-2:] == [first, first + 1]
    actions = [(e.action, e.product, e.result) for e in lifecycle.audit(limit=3)]
    assert actions == [("rollback", "text_embed", "ok"), ("reload", "text_embed", "ok"), ("export", "text_embed", "ok")]
    assert f"version {first + 1} of text_embed" in lifecycle.audit(limit=3)[2].detail
    assert products_json(own_server, repo)["text_embed"]["drift"] == ""


def test_rollback_to_a_version_that_is_not_there_exits_2(own_server, repo: Path):
    versions = [v.version for v in Lifecycle(repo).product("text_embed").versions]
    result = mmserve("rollback", "text_embed", "--to", str(max(versions) + 5), *against(own_server, repo))

    assert result.returncode == 2
    assert f"no version {max(versions) + 5}" in result.stderr and ", ".join(map(str, versions)) in result.stderr


# --- help ---------------------------------------------------------------------------------


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_top_level_help_names_every_command_and_each_help_shows_its_defaults():
    import argparse

    from mmserve.cli import build_parser

    parser = build_parser()
    commands = dict(_subparsers(parser))
    assert {"train", "export", "serve", "bench", "demo", "products", "reload", "rollback"} <= set(commands)
    description = parser.description or ""
    assert [name for name in commands if name not in description] == []

    def squeeze(text: str) -> str:
        return "".join(text.split())  # argparse wraps long values at spaces and hyphens

    pending = list(commands.items())
    checked = 0
    while pending:
        name, sub = pending.pop()
        pending += [(f"{name} {child}", p) for child, p in _subparsers(sub)]
        text = squeeze(sub.format_help())
        for action in sub._actions:
            default = action.default
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if default is None or default is False or default == [] or default == argparse.SUPPRESS:
                continue
            shown = "$" in (action.help or "")  # a default from the environment is named, not printed
            assert shown or squeeze(str(default)) in text, f"mmserve {name} --help hides {action.dest}={default!r}"
            checked += 1
    assert checked > 20
    undescribed = [name for name, sub in _all_subparsers(parser) if not sub.description]
    assert undescribed == []  # every subcommand's --help says what it does


def _all_subparsers(parser, prefix: str = ""):
    for name, sub in _subparsers(parser):
        yield f"{prefix}{name}", sub
        yield from _all_subparsers(sub, f"{prefix}{name} ")


def test_version_admin_key_exit_codes_and_training_defaults_are_in_the_help():
    from mmserve.cli import build_parser
    from mmserve.training.text import TextTrainConfig

    version = mmserve("--version")
    assert version.returncode == 0 and version.stdout.split()[0] == "mmserve" and version.stdout.split()[1][0].isdigit()
    commands = dict(_subparsers(build_parser()))
    for name in ("products", "load", "unload", "reload", "rollback"):
        text = " ".join(commands[name].format_help().split())
        assert "Needs the server's admin key" in text and "4 permission denied" in text, name
    assert "--yes" in commands["unload"].format_help()
    bench = " ".join(commands["bench"].format_help().split())
    assert "--fail-on-target" in bench and "venv-peers" in bench and "--skip-peers" in bench and "exit codes" in bench
    assert "Triton's verbose log" in commands["serve"].format_help()
    train = " ".join(dict(_subparsers(commands["train"]))["text"].format_help().split())
    defaults = TextTrainConfig(base="b", task="classify", data="d", out="o")
    for option, value in (("--epochs", defaults.epochs), ("--batch-size", defaults.batch_size),
                          ("--max-length", defaults.max_length), ("--seed", defaults.seed)):
        assert f"(default: {value})" in train.split(option)[-1].split("--")[0], option
