"""Exports that cannot go wrong halfway: a repository that is its own mount point (a volume,
a tmpfs), a read-only target, a full disk, a failed parity gate and a failed commit each
leave the repository, and a server reading it, as they were."""
from __future__ import annotations

import errno
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc.model_config_pb2 import ModelConfig

from mmserve.exporters import versions
from mmserve.exporters.onnx_export import ParityError, check_parity
from mmserve.exporters.repository import ModelFolder, write_models
from mmserve.exporters.staging import (
    STAGING_PREFIX,
    RepositoryError,
    RepositoryFullError,
    RepositoryNotWritableError,
    Staging,
    staging,
)
from mmserve.exporters.text import export_text
from mmserve.server import ServerPorts, TritonServer, repository_models

PRODUCT = "text_classify"


@pytest.fixture
def tmpfs(tmp_path: Path):
    """Mount a tmpfs (root with CAP_SYS_ADMIN, as in CI containers); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "64m", read_only: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'}): needs root with CAP_SYS_ADMIN")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def snapshot(repository: Path) -> dict[str, str]:
    """Every path under the repository with its content's hash (the writer's lock file aside, and
    the audit log, where a failed export is recorded as an attempt: see failed_export_recorded)."""
    tree = {}
    for path in sorted(repository.rglob("*")):
        relative = str(path.relative_to(repository))
        if relative in (".mmserve.lock", ".mmserve-audit.jsonl"):
            continue
        tree[relative] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return tree


def failed_export_recorded(repository: Path, error: str) -> None:
    """The served repository's audit log ends with the failed export and its error."""
    from mmserve.lifecycle import Lifecycle

    entry = Lifecycle(repository).audit(limit=1)[0]
    assert (entry.action, entry.result.split(":")[0]) == ("export", error)


def answers(server: TritonServer) -> int:
    """text_classify answers over gRPC: the number of classes."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"where is my order?"]], dtype=np.object_))
    try:
        return int(client.infer(PRODUCT, [text]).as_numpy("PROBS").shape[-1])
    finally:
        client.close()


def reload_and_serve(server: TritonServer) -> list[str]:
    """Reload the product as the disk names it; the versions the server then serves."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.load_model(PRODUCT)
        index = client.get_model_repository_index(as_json=True)["models"]
        return sorted(m["version"] for m in index if m["name"] == PRODUCT and m.get("state") == "READY")
    finally:
        client.close()


def test_staging_is_inside_the_repository_and_invisible_to_the_launcher(tmp_path: Path):
    repository = tmp_path / "repo"
    repository.mkdir()
    with staging(repository) as stage:
        assert stage.root.parent == repository and stage.root.name.startswith(STAGING_PREFIX)
        assert stage.root.stat().st_dev == repository.stat().st_dev  # rename(2) never crosses filesystems
        model = stage.stage("m")
        model.mkdir()
        (model / "config.pbtxt").write_text('name: "m"')
        (stage.root / "config.pbtxt").write_text('name: "x"')  # even a config directly inside is not a model
        assert repository_models(repository) == []
    assert list(repository.iterdir()) == [repository / ".mmserve.lock"]


def test_export_into_a_repository_that_is_its_own_mount_point(tmp_path: Path, tmpfs, text_checkpoints):
    volume = tmpfs(tmp_path / "volrepo")
    beside = tmp_path / "beside"
    beside.mkdir()
    with pytest.raises(OSError) as crossing:  # what staging beside the repository ran into
        os.rename(beside, volume / "beside")
    assert crossing.value.errno == errno.EXDEV
    result = export_text(text_checkpoints["classify"], volume)
    assert result.version == 1 and versions.active_version(volume, PRODUCT) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beside", "volrepo"]  # nothing staged outside
    assert not list(volume.glob(f"{STAGING_PREFIX}*"))


@pytest.fixture
def read_only_repository(tmp_path: Path, tmpfs) -> Path:
    """A read-only repository: chmod for a normal user, a read-only mount for root (whom
    permissions do not stop)."""
    repository = tmp_path / "readonly"
    if os.geteuid() != 0:
        repository.mkdir()
        repository.chmod(0o555)
        yield repository
        repository.chmod(0o755)
        return
    yield tmpfs(repository, read_only=True)


def test_a_read_only_target_fails_first_with_a_clear_message(read_only_repository: Path, tmp_path: Path, capsys):
    from mmserve.cli import main

    # No checkpoint exists: a CheckpointError would mean the repository was checked too late.
    with pytest.raises(RepositoryNotWritableError, match="cannot write to the model repository .*readonly"):
        export_text(tmp_path / "no-checkpoint-here", read_only_repository)
    code = main(["export", "text", str(tmp_path / "no-checkpoint-here"), "--repository", str(read_only_repository)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write to the model repository" in err and "--repository DIR" in err
    assert "Traceback" not in err
    assert list(read_only_repository.iterdir()) == []


@pytest.fixture
def served_repository(tmp_path: Path, text_checkpoints, request):
    """text_classify version 1 in a repository (on a small tmpfs when the test asks), served."""
    repository = tmp_path / "repo"
    if getattr(request, "param", None) == "tmpfs":
        request.getfixturevalue("tmpfs")(repository, size="24m")
    export_text(text_checkpoints["classify"], repository, layout="ensemble")
    with TritonServer(repository, ServerPorts.free(), log_file=tmp_path / "triton.log") as server:
        yield repository, server


@pytest.mark.parametrize("served_repository", ["tmpfs"], indirect=True)
def test_a_full_disk_leaves_the_repository_and_the_server_as_they_were(served_repository, text_checkpoints):
    repository, server = served_repository
    classes = answers(server)
    before = snapshot(repository)
    onnx_bytes = (repository / "text_classify_encoder" / "1" / "model.onnx").stat().st_size
    filler = repository / ".filler"  # a dot-file: neither Triton nor the launcher takes it for a model
    free = shutil.disk_usage(repository).free
    with filler.open("wb") as f:
        f.write(b"\0" * (free - onnx_bytes // 2))  # room for half an encoder
    with pytest.raises(RepositoryFullError, match="no space left on the filesystem of the model repository"):
        export_text(text_checkpoints["classify"], repository)
    filler.unlink()
    assert snapshot(repository) == before
    assert answers(server) == classes and reload_and_serve(server) == ["1"]
    assert export_text(text_checkpoints["classify"], repository).version == 2  # space back: it works


def test_a_failed_parity_gate_leaves_the_repository_and_the_server_as_they_were(
    served_repository, text_checkpoints, monkeypatch
):
    import mmserve.exporters.driver as export_driver

    repository, server = served_repository
    classes = answers(server)
    before = snapshot(repository)
    # A gate no real export passes: any difference, even 0, is above a negative tolerance.
    monkeypatch.setattr(export_driver, "check_parity", functools.partial(check_parity, tolerance=-1.0))
    with pytest.raises(ParityError, match="Nothing was written"):
        export_text(text_checkpoints["classify"], repository)
    assert snapshot(repository) == before
    failed_export_recorded(repository, "ParityError")
    assert answers(server) == classes and reload_and_serve(server) == ["1"]


def test_a_failed_commit_is_undone(tmp_path: Path):
    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / "model").mkdir()
    (repository / "model" / "config.pbtxt").write_text("old")
    (repository / "blocker").write_text("a file where a folder would go")
    before = snapshot(repository)
    stage = Staging(repository)
    try:
        stage.write_file(repository / "model" / "config.pbtxt", b"new")
        new_model = stage.stage("other")
        new_model.mkdir()
        stage.replace(new_model, repository / "new_model")
        stage.write_file(repository / "blocker" / "inside" / "config.pbtxt", b"cannot go under a file")
        with pytest.raises(RepositoryError, match="could not change the model repository"):
            stage.commit()
    finally:
        stage.close()
    assert snapshot(repository) == before


def test_what_a_killed_export_left_is_removed_by_the_next_one(tmp_path: Path):
    repository = tmp_path / "repo"
    leftover = repository / f"{STAGING_PREFIX}killed" / "0001" / "m"
    leftover.mkdir(parents=True)
    (leftover / "config.pbtxt").write_text('name: "m"')
    assert repository_models(repository) == []
    write_models(repository, [ModelFolder("m", ModelConfig(name="m"), {"1/weights.bin": b"w"})])
    assert sorted(p.name for p in repository.iterdir()) == [".mmserve.lock", "m"]
    assert repository_models(repository) == ["m"]
