"""Products from examples: check the data, train (a head now, or a fine-tune as a queued job),
report, and publish only when asked.

One core for `mmserve products create`, `mmserve jobs` and the console's New product page.
Nothing here changes what a server serves until `publish`: that writes a new product
version through the exporters' version scheme and switches a live server to it through the
lifecycle core (no failed request; audited; `mmserve rollback` goes back).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mmserve.kinds import AnswerShape, InputShape, KindInfo, info
from mmserve.products import data as product_data
from mmserve.products.report import Report, score
from mmserve.repository_layout import CONFIG_FILE, LABELS_FILE, MODEL_ROOT
from mmserve.products.runs import FAILED, PUBLISHED, REPORTED, RUNNING, CreateRequest, Run, new_run

if TYPE_CHECKING:
    from mmserve.client import Client
    from mmserve.lifecycle import AuditEntry, Lifecycle

FACTS_CONFIG = "training_config.json"  # the card's facts, named as a checkpoint names them
FACTS_METRICS = "metrics.json"
CHECKPOINT_DIR = "checkpoint"
DRAFT_REPOSITORY = "draft_repository"


class CreateError(ValueError):
    """The product cannot be made or published as asked; the message says what to do."""


def classification_kind(kind: str) -> KindInfo:
    """The kind table's row for a kind products can be made of (a classification kind)."""
    try:
        row = info(kind)
    except ValueError:
        row = None
    if row is None or row.answer is not AnswerShape.CLASSIFICATION:
        from mmserve.kinds import answering

        choices = ", ".join(r.name for r in answering(AnswerShape.CLASSIFICATION))
        raise CreateError(f"kind {kind!r}: products are made from examples for {choices}")
    return row


def default_encoder(kind: KindInfo) -> str:
    from mmserve.exporters.head import encoder_kind_for

    return encoder_kind_for(kind).name


def create(request: CreateRequest, client: Client | None = None) -> Run:
    """Check and split the data into a new run; head mode trains and reports at once, finetune
    mode leaves the run queued for the job worker (mmserve/products/jobs.py)."""
    kind = classification_kind(request.kind)
    try:
        request.check()
    except ValueError as error:
        raise CreateError(str(error)) from None
    if request.mode == "head":
        from mmserve.exporters.head import check_encoder

        check_encoder(Path(request.repository), request.encoder or default_encoder(kind), kind)
    run = new_run(request)
    try:
        started = time.perf_counter()
        examples = product_data.prepare(kind, Path(request.data), run.folder,
                                        Path(request.heldout) if request.heldout else None, seed=request.seed)
        run.set_status(stage=f"data checked: {len(examples.train)} to train on, {len(examples.heldout)} held out, "
                             f"{len(examples.labels)} labels")
        (run.folder / "seconds.json").write_text(json.dumps({"data": time.perf_counter() - started}))
        if request.mode == "head":
            build_head(run, client)
    except Exception as error:
        run.set_status(state=FAILED, stage="", error=str(error))
        raise
    return run


# --- head ------------------------------------------------------------------------------------


def build_head(run: Run, client: Client | None = None) -> Report:
    """Embed, train the head, measure it on the held-out examples, write the report."""
    from mmserve.products.head import EncoderEmbeddings, train_head

    request = run.request
    kind = classification_kind(request.kind)
    encoder = request.encoder or default_encoder(kind)
    seconds = json.loads(run.path("seconds.json").read_text()) if run.path("seconds.json").exists() else {}
    run.set_status(state=RUNNING, stage=f"embedding the examples with {encoder}")
    started = time.perf_counter()
    embed = EncoderEmbeddings(Path(request.repository), encoder, kind)
    items, labels = product_data.read_split(run.path("train.csv"))
    held_items, held_labels = product_data.read_split(run.path("heldout.csv"))
    train_vectors, held_vectors = embed(items), embed(held_items)
    seconds["embed"] = time.perf_counter() - started
    run.set_status(stage=f"training a {request.head} head")
    classes = sorted(set(labels))
    head = train_head(train_vectors, labels, classes, request.head, request.seed)
    seconds["train"] = head.seconds
    head.save(run.folder)
    run.path(LABELS_FILE).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    predicted = [classes[i] for i in head.probabilities(held_vectors).argmax(axis=1)]
    report = Report(
        request.name, kind.name, "head", f"{request.head} head over {encoder}", score(held_labels, predicted, classes),
        len(items), seconds, notes=[f"head {head.method} ({head.detail}), embeddings {train_vectors.shape[1]}-d"],
    )
    report.current = current_version_scores(Path(request.repository), request.name, kind, held_items, held_labels, client)
    _write_facts(run, report, {"base": encoder, "head": head.method, "lora": None})
    report.write(run.folder)
    run.set_status(state=REPORTED, stage="reported: publish to serve it")
    return report


# --- the current version, on the same held-out examples ---------------------------------------


def current_version_scores(
    repository: Path, name: str, kind: KindInfo, items: Sequence[str], gold: Sequence[str], client: Client | None = None,
) -> dict[str, Any] | None:
    """The product's current version measured on the new held-out examples: through the server
    when one serves it, else its files run in this process. None when there is no such product."""
    from mmserve.exporters.versions import active_version

    version = active_version(repository, name)
    if version is None:
        return None
    labels = sorted(set(gold))
    try:
        predicted = _served_predictions(client, name, kind, items) if client is not None else None
        how = "through the server"
        if predicted is None:
            predicted, how = _in_process_predictions(repository, name, kind, items, version), "in process"
    except Exception as error:  # noqa: BLE001 - a comparison that cannot be made is said, not fatal
        return {"version": version, "error": f"could not be measured: {error}"}
    scores = score(gold, predicted, labels)
    return {"version": version, "accuracy": scores.accuracy, "macro_f1": scores.macro_f1, "measured": how}


def _served_predictions(client: Client, name: str, kind: KindInfo, items: Sequence[str]) -> list[str] | None:
    from mmserve.client.errors import MmserveError

    try:
        if kind.input is InputShape.TEXT:
            results = client.classify_text(list(items), pipeline=name)
        else:
            from mmserve.products.head import read_clip

            results = [client.classify_audio(*read_clip(Path(p)), pipeline=name) for p in items]
    except MmserveError:
        return None  # not loaded there, or no server: measure the files instead
    return [r.label for r in results]


def _in_process_predictions(repository: Path, name: str, kind: KindInfo, items: Sequence[str], version: int) -> list[str]:
    from mmserve.exporters.triton_config import read_config
    from mmserve.products.head import EncoderEmbeddings
    from mmserve.serving.head import HEAD_FILE, head_probabilities, load_head

    folder = repository / name / str(version)
    if (folder / HEAD_FILE).is_file():  # a head version: its weights over its encoder, here
        config = read_config(folder / MODEL_ROOT / CONFIG_FILE) or read_config(repository / name / CONFIG_FILE)
        encoder = config.parameters["encoder"].string_value
        weight, bias = load_head(folder / HEAD_FILE)
        labels = (folder / MODEL_ROOT / LABELS_FILE).read_text(encoding="utf-8").split()
        probs = head_probabilities(EncoderEmbeddings(repository, encoder, kind)(items), weight, bias)
        return [labels[i] for i in probs.argmax(axis=1)]
    return _pipeline_predictions(repository, name, kind, items)


def _pipeline_predictions(repository: Path, name: str, kind: KindInfo, items: Sequence[str]) -> list[str]:
    """LABEL of a pipeline's served files run in this process (the bench's in-process pipeline)."""
    from mmserve.bench.inprocess import InProcessPipeline
    from mmserve.pipelines import AUDIO, LABEL, SAMPLE_RATE, TEXT
    from mmserve.products.head import read_clip

    pipeline = InProcessPipeline(Path(repository), name)
    labels: list[str] = []
    if kind.input is InputShape.TEXT:
        for start in range(0, len(items), 32):
            batch = np.array([[t.encode("utf-8")] for t in items[start:start + 32]], dtype=np.object_)
            labels += [v.decode("utf-8") for v in pipeline({TEXT.name: batch})[LABEL.name].reshape(-1)]
    else:
        for path in items:
            samples, rate = read_clip(Path(path))
            out = pipeline({AUDIO.name: samples[None, :], SAMPLE_RATE.name: np.array([[rate]], dtype=np.int32)})
            labels.append(out[LABEL.name].reshape(-1)[0].decode("utf-8"))
    return labels


def _write_facts(run: Run, report: Report, training: dict[str, Any]) -> None:
    """training_config.json and metrics.json as a checkpoint has them, so the product card shows
    the base, the data and the held-out figures (exporters/versions.checkpoint_facts)."""
    request = run.request
    config = {**training, "kind": report.kind, "mode": report.mode, "data": request.data,
              "dev_data": request.heldout or str(run.path("heldout.csv")), "run": run.id}
    s = report.scores
    metrics = {
        "metric": "accuracy", "dev_accuracy": s.accuracy, "dev_macro_f1": s.macro_f1,
        "dev_metrics": {"accuracy": s.accuracy, "macro_f1": s.macro_f1},
        "n_train": report.train_examples, "n_dev": s.n, "mode": report.mode, "method": report.method,
    }
    (run.path(FACTS_CONFIG)).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (run.path(FACTS_METRICS)).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


# --- finetune: what the job does after training -------------------------------------------------


def report_finetune(run: Run, client: Client | None = None) -> Report:
    """The trained checkpoint exported into the run's own draft repository (the very files
    publish will serve), run in this process on the held-out examples."""
    from mmserve.products.runs import Status  # noqa: F401 - status fields named below

    request = run.request
    kind = classification_kind(request.kind)
    checkpoint = run.path(CHECKPOINT_DIR)
    seconds = json.loads(run.path("seconds.json").read_text()) if run.path("seconds.json").exists() else {}
    run.set_status(stage="exporting the checkpoint for the report")
    started = time.perf_counter()
    draft = run.path(DRAFT_REPOSITORY)
    export_checkpoint(kind, checkpoint, draft, request.name)
    seconds["export"] = time.perf_counter() - started
    held_items, held_labels = product_data.read_split(run.path("heldout.csv"))
    items, _ = product_data.read_split(run.path("train.csv"))
    predicted = _pipeline_predictions(draft, request.name, kind, held_items)
    classes = [line for line in (checkpoint / LABELS_FILE).read_text(encoding="utf-8").splitlines() if line]
    method = "LoRA fine-tune" if request.lora else "full fine-tune"
    report = Report(request.name, kind.name, "finetune", method, score(held_labels, predicted, classes), len(items), seconds)
    report.current = current_version_scores(Path(request.repository), request.name, kind, held_items, held_labels, client)
    report.write(run.folder)
    run.set_status(state=REPORTED, stage="reported: publish to serve it")
    return report


def export_checkpoint(kind: KindInfo, checkpoint: Path, repository: Path, name: str):
    """A fine-tuned classifier checkpoint exported as product `name` (the modality's exporter)."""
    if kind.input is InputShape.TEXT:
        from mmserve.exporters.text import export_text

        return export_text(checkpoint, repository, name=name)
    from mmserve.exporters.speech import export_speech

    return export_speech(checkpoint, repository, name=name)


# --- publish ------------------------------------------------------------------------------------


def publish(run: Run, lifecycle: Lifecycle) -> AuditEntry:
    """Write the run's product as a new version and, with a server, switch it live; audited.

    `lifecycle` is the repository's (with a client for a live switch; without one the new
    version is served from the server's next start)."""
    request = run.request
    status = run.status()
    if status.state == PUBLISHED:
        raise CreateError(f"run {run.id} is already published as version {status.published_version} of {request.name}")
    if status.state != REPORTED:
        raise CreateError(f"run {run.id} is {status.state}, not reported: only a measured product can be published"
                          + (f" ({status.error})" if status.error else ""))
    kind = classification_kind(request.kind)
    repository = Path(request.repository)

    def act() -> str:
        if request.mode == "head":
            from mmserve.exporters.head import export_head

            encoder = request.encoder or default_encoder(kind)
            written = export_head(repository, request.name, kind, encoder, run.path("head.npz"),
                                  run.path(LABELS_FILE).read_text(encoding="utf-8").split("\n")[:-1], run.folder)
            version = written.version
            if lifecycle.client is not None:
                _ensure_loaded(lifecycle.client, encoder)
        else:
            version = export_checkpoint(kind, run.path(CHECKPOINT_DIR), repository, request.name).version
        if lifecycle.client is None:
            detail = f"version {version} written from run {run.id}; no server given: served from its next start"
        else:
            detail = f"version {version} from run {run.id} ({request.mode}); {lifecycle.reload(request.name).detail}"
        run.set_status(state=PUBLISHED, published_version=version, stage=f"published as version {version}")
        return detail

    try:
        detail = act()
    except BaseException as error:
        lifecycle.record("publish", request.name, f"run {run.id} ({request.mode})", f"{type(error).__name__}: {error}")
        raise
    return lifecycle.record("publish", request.name, detail)


def _ensure_loaded(client: Client, model: str) -> None:
    """The encoder a head calls is loaded (a head's load does not load it: it is no ensemble step)."""
    if not any(m.name == model and m.state == "READY" for m in client.models()):
        client.load(model)
