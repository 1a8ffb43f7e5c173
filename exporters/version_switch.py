"""Switching the version a product serves, on disk and on a running server, with no failed
request (the scheme and why: mmserve/exporters/versions.py)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Mapping, Sequence

from mmserve.exporters.staging import RepositoryError, Staging, ensure_writable, staging
from mmserve.exporters.triton_config import ENSEMBLE, parse_config, print_config, read_config
from mmserve.exporters.version_reading import (
    VersionNotFoundError,
    active_version,
    pipelines_of,
    policy_versions,
    private_steps,
    product_versions,
    read_card,
    set_policy,
)
from mmserve.repository_layout import CONFIG_FILE, MODEL_ROOT

# --- switching the served version ---------------------------------------------------------


def set_active_version(
    repository: Path,
    product: str,
    version: int,
    load: Callable[[str], None] | None = None,
    unload: Callable[[str], None] | None = None,
) -> list[str]:
    """Make `version` the served version of the product (and of the products exported with
    it, which share its steps): rewrite the configs of its private steps, then its
    ensembles, each by an atomic rename. Returns the models a running server must load, in
    order (`reload_order`). Raises VersionNotFoundError for a version that cannot be served.

    With `load`/`unload` (a running server's model control, e.g. tritonclient's
    load_model/unload_model), the server is switched too, with no failed request
    (`serve_active`, from the version the disk named before).
    """
    repository = ensure_writable(repository)
    served = active_version(repository, product)
    ensembles = _activate(repository, product, version)
    if load is not None and unload is not None:
        return serve_active(repository, product, served, load, unload)
    return ensembles


def _activate(repository: Path, product: str, version: int, standby: bool = True) -> list[str]:
    """The disk side of set_active_version; `standby=False` never keeps the version it
    replaces loaded (one that just failed to load)."""
    card = read_card(repository, product, version)
    if not (repository / product / str(version)).is_dir():
        raise VersionNotFoundError(
            f"{product} has no version {version}; versions: {', '.join(map(str, product_versions(repository, product))) or 'none'}"
        )
    ensembles = pipelines_of(card, product)
    cards = {name: read_card(repository, name, version) for name in ensembles}
    private = list(dict.fromkeys(step for c in cards.values() for step in private_steps(c)))
    missing = [m for m in [*private, *ensembles] if not (repository / m / str(version) / MODEL_ROOT / CONFIG_FILE).is_file()]
    if missing:
        raise VersionNotFoundError(
            f"version {version} of {product} cannot be served again: {', '.join(missing)} lack "
            f"{version}/{MODEL_ROOT}/{CONFIG_FILE} (written before mmserve kept versions, or removed). "
            "Export the checkpoint again to get a new version."
        )
    with staging(repository) as stage:
        plan_activation(
            repository, stage, ensembles, private, version, lambda m: repository / m / str(version) / MODEL_ROOT, standby
        )
        stage.commit()
    return ensembles


# --- a running server ------------------------------------------------------------------------

COPY_MARK = "__v"  # <model>__v<N>: a model's version N under a name of its own, during a switch


class VersionLoadError(RepositoryError):
    """The new version failed to load on the server; the server and the repository still name
    the version served before."""


def serve_active(
    repository: Path,
    product: str,
    served: int | None,
    load: Callable[[str], None],
    unload: Callable[[str], None],
) -> list[str]:
    """Make a running server that serves version `served` of the product serve the version
    the disk names, without failing a request; returns the ensembles loaded.

    1. Preflight: the new version is loaded under names of its own (`<model>__v<N>`, hard
       links) and unloaded again. If it does not load, the disk is switched back to
       `served` and VersionLoadError is raised: Triton unloads an ensemble whose new
       step fails to load, so the real switch must not be tried.
    2. Bridge: a step whose new config cannot keep `served` loaded beside the new version
       (another label set, INT8 on or off) would leave the ensemble still serving `served`
       pinned to a version Triton has just unloaded (measured: 1,720 of 3,841 requests
       failed). Such steps are loaded under their own names at `served` and the ensembles
       reloaded, still at `served`, calling them.
    3. Switch: the ensembles are loaded as the disk names them; Triton reloads their changed
       steps first and swaps each model only once its new version is ready.
    4. The copies are unloaded and removed.
    """
    repository = Path(repository).resolve()
    active = active_version(repository, product)
    ensembles = pipelines_of(read_card(repository, product, active) if active is not None else {}, product)
    if served is not None and active is not None and served != active and _recorded(repository, ensembles, active):
        _preflight(repository, product, ensembles, served, active, load, unload)
        bridges = _bridges_needed(repository, ensembles, served)
        if bridges:
            with staging(repository) as stage:
                _plan_copies(repository, stage, bridges, served)
                for ensemble in ensembles:
                    stage.write_file(repository / ensemble / CONFIG_FILE, _renamed_ensemble(repository, ensemble, served, bridges))
                stage.commit()
            try:
                for ensemble in ensembles:
                    load(ensemble)  # still `served`, now through the bridges
            finally:
                with staging(repository) as stage:  # the disk names the active version again
                    for ensemble in ensembles:
                        stage.write_file(repository / ensemble / CONFIG_FILE, _snapshot_bytes(repository, ensemble, active))
                    stage.commit()
    for ensemble in ensembles:
        load(ensemble)
    # Only now does no ensemble call a copy (after a failed load one may still: they stay).
    _remove_copies(repository, _copy_folders(repository, ensembles, served, active), unload)
    return ensembles


def _recorded(repository: Path, ensembles: Sequence[str], version: int) -> bool:
    return all((repository / e / str(version) / MODEL_ROOT / CONFIG_FILE).is_file() for e in ensembles)


def _preflight(
    repository: Path,
    product: str,
    ensembles: Sequence[str],
    served: int,
    active: int,
    load: Callable[[str], None],
    unload: Callable[[str], None],
) -> None:
    """Load version `active` under names of its own; on failure name `served` on disk again."""
    steps = {step: _copy_name(step, active) for e in ensembles for step in private_steps(read_card(repository, e, active))}
    copies = {**steps, **{e: _copy_name(e, active) for e in ensembles}}
    with staging(repository) as stage:
        _plan_copies(repository, stage, steps, active)
        for ensemble in ensembles:
            folder = stage.stage(copies[ensemble])
            source = repository / ensemble / str(active)
            if _is_ensemble_at(repository, ensemble, active):
                (folder / str(active)).mkdir(parents=True)
            else:  # a fused pipeline: its version folder holds its steps (exporters/fused.py)
                _link_tree(source, folder / str(active))
                for file_name, content in _root_files(source / MODEL_ROOT).items():
                    (folder / file_name).write_bytes(content)
            (folder / CONFIG_FILE).write_bytes(_renamed_ensemble(repository, ensemble, active, copies))
            stage.replace(folder, repository / copies[ensemble])
        stage.commit()
    try:
        for ensemble in ensembles:
            load(copies[ensemble])
    except Exception as error:
        _remove_copies(repository, set(copies.values()), unload)
        try:
            _activate(repository, product, served, standby=False)
            disk = f"the repository names version {served} again"
        except RepositoryError as restore_error:
            disk = f"the repository still names version {active} ({restore_error})"
        raise VersionLoadError(
            f"version {active} of {product} failed to load on the server, so it was not switched: it "
            f"still serves version {served}, and {disk}. Triton said: {error}"
        ) from error
    _remove_copies(repository, set(copies.values()), unload)


def _is_ensemble_at(repository: Path, pipeline: str, version: int) -> bool:
    """Whether the pipeline's `version` is an ensemble (else a fused model, exporters/fused.py)."""
    return parse_config(_snapshot_bytes(repository, pipeline, version).decode("utf-8")).platform == ENSEMBLE


def _copy_name(model: str, version: int) -> str:
    return f"{model}{COPY_MARK}{version}"


def _snapshot_bytes(repository: Path, model: str, version: int | None) -> bytes:
    return (repository / model / str(version) / MODEL_ROOT / CONFIG_FILE).read_bytes()


def _renamed_ensemble(repository: Path, ensemble: str, version: int, renames: Mapping[str, str]) -> bytes:
    """The ensemble's config at `version`, under its own new name if renamed, calling the renamed steps."""
    config = parse_config(_snapshot_bytes(repository, ensemble, version).decode("utf-8"))
    config.name = renames.get(ensemble, ensemble)
    for step in config.ensemble_scheduling.step:
        step.model_name = renames.get(step.model_name, step.model_name)
    return print_config(config).encode("utf-8")


def _bridges_needed(repository: Path, ensembles: Sequence[str], served: int) -> dict[str, str]:
    """The private steps of `served` whose config on disk no longer loads `served`: step -> bridge name."""
    if not _recorded(repository, ensembles, served):
        return {}  # a version from before versions were kept: nothing to bridge with
    bridges = {}
    for ensemble in ensembles:
        for step in private_steps(read_card(repository, ensemble, served)):
            config = read_config(repository / step / CONFIG_FILE)
            snapshot = repository / step / str(served) / MODEL_ROOT / CONFIG_FILE
            if config is not None and served not in policy_versions(config) and snapshot.is_file():
                bridges[step] = _copy_name(step, served)
    return bridges


def _plan_copies(repository: Path, stage: Staging, steps: Mapping[str, str], version: int) -> None:
    """Model folders serving each step's `version` under its new name (hard links to its files)."""
    for step, name in steps.items():
        source = repository / step / str(version)
        folder = stage.stage(name)
        _link_tree(source, folder / str(version))
        config = parse_config((source / MODEL_ROOT / CONFIG_FILE).read_text(encoding="utf-8"))
        config.name = name
        set_policy(config, [version])
        (folder / CONFIG_FILE).write_text(print_config(config), encoding="utf-8")
        for file_name, content in _root_files(source / MODEL_ROOT).items():
            (folder / file_name).write_bytes(content)
        stage.replace(folder, repository / name)


def _remove_copies(repository: Path, copies: set[str], unload: Callable[[str], None]) -> None:
    """Unload the copies (ensembles first) and remove their folders."""
    def steps_last(name: str) -> bool:
        config = read_config(repository / name / CONFIG_FILE)
        return config is None or config.platform != ENSEMBLE

    for name in sorted(copies, key=steps_last):
        try:
            unload(name)
        except Exception:  # noqa: BLE001 - one that never loaded (a killed switch's); its folder goes all the same
            pass
    if copies:
        with staging(repository) as stage:
            for name in sorted(copies):
                stage.remove(repository / name)
            stage.commit()


def _copy_folders(repository: Path, ensembles: Sequence[str], *versions: int | None) -> set[str]:
    """Copies of the product's models on disk (this switch's, or a killed one's)."""
    models = set(ensembles)
    for version in versions:
        if version is not None:
            models.update(step for e in ensembles for step in private_steps(read_card(repository, e, version)))
    return {
        p.name for model in models for p in repository.glob(f"{model}{COPY_MARK}*")
        if p.is_dir() and p.name[len(model) + len(COPY_MARK):].isdigit()
    }


def _link_tree(source: Path, target: Path) -> None:
    """A copy of a folder made of hard links (no space, same filesystem), copies where links fail."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)


def plan_activation(
    repository: Path,
    stage: Staging,
    ensembles: Sequence[str],
    private: Sequence[str],
    version: int,
    snapshot: Callable[[str], Path],
    standby: bool = True,
) -> None:
    """Plan the root files that make `version` served: private steps first, ensembles last.

    `snapshot(model)` is the folder holding that model's `model_root` files for `version`
    (in the repository, or still in staging for an export). `standby`: keep the version
    served until now loaded beside it where the step's config allows.
    """
    current = active_version(repository, ensembles[0]) if ensembles else None
    for model in private:
        folder = repository / model
        new_root = snapshot(model)
        config = parse_config((new_root / CONFIG_FILE).read_text(encoding="utf-8"))
        old_root = folder / str(current) / MODEL_ROOT if current is not None and current != version else None
        if old_root is not None and not (old_root / CONFIG_FILE).is_file():
            old_root = None  # the product's served version did not have this step
        side_by_side = standby and old_root is not None and co_loadable(old_root, new_root)
        set_policy(config, [version, current] if side_by_side else [version])
        _plan_root_files(stage, folder, new_root, old_root)
        stage.write_file(folder / CONFIG_FILE, print_config(config).encode("utf-8"))
    for model in ensembles:
        folder = repository / model
        old_root = folder / str(current) / MODEL_ROOT if current is not None and current != version else None
        # A fused pipeline's root holds labels.txt (exporters/fused.py); an ensemble's holds none.
        _plan_root_files(stage, folder, snapshot(model), old_root if old_root is not None and old_root.is_dir() else None)
        stage.write_file(folder / CONFIG_FILE, (snapshot(model) / CONFIG_FILE).read_bytes())


def _plan_root_files(stage: Staging, folder: Path, new_root: Path, old_root: Path | None) -> None:
    """The model root's files (labels.txt) as `new_root` has them; the old version's extra ones go."""
    new_files = _root_files(new_root)
    for name, content in new_files.items():
        existing = folder / name
        if not (existing.is_file() and existing.read_bytes() == content):
            stage.write_file(existing, content)  # unchanged files keep their timestamps
    for name in _root_files(old_root) if old_root is not None else {}:
        if name not in new_files:
            stage.remove(folder / name)


def co_loadable(old_root: Path, new_root: Path) -> bool:
    """Whether two versions of a step can be loaded side by side under the new config.

    Triton reloads a loaded version whose config changed beyond version_policy and
    instance_group, or whose model folder's other files changed, under the new config: only
    a step whose config and labels are the same can keep its previous version serving.
    """
    configs = []
    for root in (old_root, new_root):
        config = read_config(root / CONFIG_FILE)
        if config is None:
            return False
        config.ClearField("version_policy")
        config.ClearField("instance_group")
        configs.append(config)
    return configs[0] == configs[1] and _root_files(old_root) == _root_files(new_root)


def _root_files(model_root: Path) -> dict[str, bytes]:
    """A version's model-root files other than the config (labels.txt), by name."""
    return {
        path.name: path.read_bytes()
        for path in sorted(model_root.iterdir())
        if path.is_file() and path.name != CONFIG_FILE
    }
