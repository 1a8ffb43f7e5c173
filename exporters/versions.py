"""Product versions on disk: which versions a product has, which one is served, its card,
and switching the served version.

Layout (REPO the model repository, V a version number, U the version served before V):

    REPO/<product>/config.pbtxt      the ensemble as served: version_policy { specific { versions: [V] } },
                                     each product-private step named with `model_version: V`
    REPO/<product>/V/card.json       the product card of version V
    REPO/<product>/V/model_root/     config.pbtxt: what REPO/<product>/ holds while V is served
    REPO/<step>/V/                   a private step's version V (weights, model.py, tokenizer...)
    REPO/<step>/V/model_root/        config.pbtxt and labels.txt as REPO/<step>/ holds them while V is served
    REPO/<step>/config.pbtxt         version_policy { specific { versions: [U, V] } } (or [V], see below)
    REPO/<shared>/1/                 shared pre-processing (text_tokenize, image_preprocess, ...): one
                                     version, called by every product that tokenises/decodes the same way

Why this shape. The served version is written in the configs, never inferred from the
newest folder, so a server restart serves the same thing and a rollback survives it.
Triton keeps one config per model for all its versions, so each version carries its own
config (`model_root/`) and becoming active copies it to the model's root. Pinning the
ensemble's steps means a product version always runs with its own encoder and
post-processing (labels), never a mix.

Zero failed requests on a switch (measured: docs/architecture.md, "Versions"): when a
private step's new config equals the served one apart from the version policy and
instance count, and its root files (labels.txt) are the same, the step lists both
versions: the ensemble still pinned to U keeps finding U while V loads, and Triton swaps
the ensemble from U to V once V is ready. The previous version then stays loaded until the
next switch (an instant, failure-free rollback). When the configs differ (another label
set, INT8 on or off), only V is listed, and loading the ensemble (never a step on its
own first, see `reload_order`) reloads the step and the ensemble back to back.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from mmserve.exporters.staging import RepositoryError, Staging, ensure_writable, staging
from mmserve.exporters.triton_config import ENSEMBLE, parse_config, print_config, read_config
from mmserve.pipelines import Kind
from mmserve.repository_layout import CARD_FILE, CONFIG_FILE, MODEL_ROOT, Layout  # the names, re-exported here

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig, ModelEnsembling

    from mmserve.exporters.fp16 import Fp16Report
    from mmserve.exporters.onnx_export import ParityReport
    from mmserve.exporters.quantize import QuantizationReport

DEFAULT_KEEP = 3


class VersionNotFoundError(RepositoryError, LookupError):
    """The product has no such version on disk, or it cannot be made active."""


# --- version policies --------------------------------------------------------------------


def policy_versions(config: ModelConfig) -> list[int]:
    """The versions a `specific` version policy names ([] for latest/all/none)."""
    if config.version_policy.WhichOneof("policy_choice") != "specific":
        return []
    return sorted(config.version_policy.specific.versions)


def set_policy(config: ModelConfig, versions: Iterable[int]) -> None:
    config.version_policy.Clear()
    config.version_policy.specific.versions.extend(sorted(set(versions)))


def pin_steps(ensemble: ModelConfig, models: set[str], version: int) -> None:
    """Name `version` in every step of the ensemble that calls one of `models`."""
    for step in ensemble.ensemble_scheduling.step:
        if step.model_name in models:
            step.model_version = version


# --- reading ---------------------------------------------------------------------------


def version_folders(model_folder: Path) -> list[int]:
    """The numbered sub-folders Triton takes for versions (digits, no leading zero)."""
    if not model_folder.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_folder.iterdir()
        if p.is_dir() and p.name.isdigit() and (p.name == "0" or not p.name.startswith("0"))
    )


def recorded_versions(model_folder: Path) -> list[int]:
    """Versions written by this scheme (with their own config), not older single-version exports."""
    return [v for v in version_folders(model_folder) if (model_folder / str(v) / MODEL_ROOT / CONFIG_FILE).is_file()]


def product_versions(repository: Path, product: str) -> list[int]:
    """Every version of the product on disk, oldest first."""
    return version_folders(Path(repository) / product)


def active_version(repository: Path, product: str) -> int | None:
    """The version the product's config serves; None when the product has no config."""
    folder = Path(repository) / product
    config = read_config(folder / CONFIG_FILE)
    if config is None:
        return None
    named = policy_versions(config)
    if named:
        return max(named)
    on_disk = version_folders(folder)  # Triton's default policy: the newest folder
    return on_disk[-1] if on_disk else None


def step_version(repository: Path, step: ModelEnsembling.Step) -> int | None:
    """The version of a step's model that its ensemble runs: the version the ensemble pins
    (a product's own steps), else the model's served one (shared pre-processing)."""
    if step.model_version > 0:
        return step.model_version
    return active_version(repository, step.model_name)


def read_card(repository: Path, product: str, version: int) -> dict[str, Any]:
    """Version `version`'s product card; {} for a version written before cards existed."""
    path = Path(repository) / product / str(version) / CARD_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return {"product": product, "version": version, "error": f"unreadable {path}: {error}"}


def pipelines_of(card: Mapping[str, Any], product: str) -> list[str]:
    """The products exported together with this one (one CLIP export serves three)."""
    return list(card.get("pipelines") or [product])


def private_steps(card: Mapping[str, Any]) -> list[str]:
    """The card's steps that belong to its product version (not shared pre-processing)."""
    return [step["model"] for step in card.get("steps", ()) if not step.get("shared")]


def reload_order(repository: Path, product: str) -> list[str]:
    """What a running server must load to serve what the disk says, in order: the product
    and the products exported with it, ensembles only.

    Loading an ensemble makes Triton re-read its steps and reload the changed ones first, in
    one operation. Loading a private step on its own first is not safe: when its new policy
    drops the version the served ensemble pins, Triton unloads that ensemble until it is
    loaded again (measured: 256 failed of 989 requests in half a second).
    """
    active = active_version(repository, product)
    card = read_card(repository, product, active) if active is not None else {}
    return pipelines_of(card, product)


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


# --- numbering --------------------------------------------------------------------------


def next_version(repository: Path, models: Iterable[str]) -> int:
    """One above every version this scheme wrote for any of the models: a product version
    has one number across its ensemble(s) and private steps."""
    newest = [max(recorded_versions(Path(repository) / m), default=0) for m in models]
    return max(newest, default=0) + 1


# --- the product card ----------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """What an export knows about the version it writes: the facts of its product card."""

    checkpoint: Path
    kinds: Mapping[str, Kind]  # each pipeline (ensemble) of the export -> its kind
    profile: str
    parity: Mapping[str, ParityReport]  # graph ("encoder", "image_tower"...) -> parity figures
    quantization: Mapping[str, QuantizationReport] = field(default_factory=dict)  # when --int8
    layout: str = Layout.FUSED.value  # how the pipelines are served (a Layout; the cpu default is fused)
    fp16: Mapping[str, Fp16Report] = field(default_factory=dict)  # when --fp16: FP16 against FP32
    tensorrt: Mapping[str, Any] = field(default_factory=dict)  # when --tensorrt: each engine's record


def build_card(
    release: Release | None, product: str, version: int, pipelines: Sequence[str], steps: list[dict[str, Any]]
) -> dict[str, Any]:
    """The card of one product version: what it is, where it came from, how good it is."""
    card: dict[str, Any] = {
        "product": product,
        "kind": None,
        "version": version,
        "pipelines": list(pipelines),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mmserve_version": _mmserve_version(),
        "steps": steps,
    }
    if release is None:
        return card
    kind = release.kinds.get(product)
    card.update(
        kind=kind.value if kind is not None else None,
        profile=release.profile,
        layout=release.layout,
        **checkpoint_facts(Path(release.checkpoint)),
        parity={name: asdict(report) for name, report in release.parity.items()},
        int8={name: asdict(report) for name, report in release.quantization.items()} or None,
        fp16={name: asdict(report) for name, report in release.fp16.items()} or None,
        tensorrt=dict(release.tensorrt) or None,  # per graph: tensorrt.engine_record (profile, built by, parity)
    )
    return card


def checkpoint_facts(checkpoint: Path) -> dict[str, Any]:
    """Base model, training data and held-out metrics, as the checkpoint recorded them."""
    from mmserve.training.text_checkpoint import METRICS_FILE, TRAINING_CONFIG_FILE
    from mmserve.training.clip_checkpoint import SETTINGS_FILE as CLIP_SETTINGS_FILE

    checkpoint = checkpoint.resolve()
    clip_settings = _read_json(checkpoint / CLIP_SETTINGS_FILE) or {}
    training = _read_json(checkpoint / TRAINING_CONFIG_FILE) or clip_settings.get("training") or {}
    metrics = _read_json(checkpoint / METRICS_FILE)
    if training:
        base = training.get("base") or training.get("pretrained") or training.get("arch")
    else:  # a pretrained encoder exported as it is
        base = str(checkpoint)
    data = None
    if training.get("data"):
        metrics_or_empty = metrics or {}
        data = {
            "path": str(training["data"]),
            "held_out_path": _text(training.get("dev_data") or training.get("val_data")),
            "train_rows": metrics_or_empty.get("n_train"),
            "held_out_rows": metrics_or_empty.get("n_dev", metrics_or_empty.get("n_val")),
        }
    return {
        "checkpoint": str(checkpoint),
        "base_model": _text(base),
        "lora": training.get("lora"),
        "training_data": data,
        "metrics": metrics,
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _mmserve_version() -> str:
    try:
        return importlib.metadata.version("mmserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
