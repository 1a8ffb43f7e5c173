"""The text line of the demo: intents, NER, financial sentiment and sentence embeddings."""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from mmserve.demo.common import DemoContext, banner, latency_ms

CUSTOMER_MESSAGES = (
    "Hi, my package was supposed to arrive on Monday and it still hasn't shown up.",
    "I want my money back for the broken blender.",
    "how do i change the password on my account",
    "Can I talk to a real person please?",
    "您好，我想取消我的订单",
)
NEWS = (
    "Angela Schmidt, chief executive of Northwind Bank, will open a new office in Lisbon next spring.",
    "Fans travelled from Brazil to Tokyo for the World Cup qualifier on Sunday.",
)
HEADLINES = (
    "Shares of Contoso Robotics jumped 9% after quarterly profit beat analyst estimates.",
    "Fabrikam Energy will hold its annual general meeting in Oslo on 14 May.",
    "Litware Foods cut its full-year outlook as raw material costs soared.",
)


def prepare(context: DemoContext) -> None:
    from mmserve.exporters.text import export_text
    from mmserve.training.defaults import default_text_base, embedded_data
    from mmserve.training.text import TextTrainConfig, evaluate_text, train_text

    banner("Text: fine-tuning all-MiniLM-L6-v2 (CPU)")
    base = default_text_base()
    jobs = {
        "intents": TextTrainConfig(
            base=str(base), task="classify", data=str(embedded_data("intents")), out=str(context.checkpoint("intents"))
        ),
        "ner": TextTrainConfig(
            base=str(base),
            task="ner",
            data=str(embedded_data("ner/train")),
            dev_data=str(embedded_data("ner/dev")),
            out=str(context.checkpoint("ner")),
        ),
        "sentiment": TextTrainConfig(
            base=str(base), task="classify", data=str(embedded_data("sentiment")), out=str(context.checkpoint("sentiment"))
        ),
    }
    for name, config in jobs.items():
        if context.needs_training(name):
            print(f"-- training {name} ({config.task}) on {config.data}")
            train_text(dataclasses.replace(config, overwrite=True))  # retraining is decided above
        else:
            print(f"-- reusing {context.checkpoint(name)} (pass --fresh to retrain)")

    intents = json.loads((context.checkpoint("intents") / "metrics.json").read_text())
    sentiment = json.loads((context.checkpoint("sentiment") / "metrics.json").read_text())
    ner_dev = json.loads((context.checkpoint("ner") / "metrics.json").read_text())
    ner_test = evaluate_text(context.checkpoint("ner"), embedded_data("ner/test"))
    context.summary += [
        f"intent classification: held-out accuracy {100 * intents['dev_accuracy']:.1f}% "
        f"({intents['n_dev']} examples, best epoch {intents['best_epoch']} of {len(intents['history'])})",
        f"sentiment: held-out accuracy {100 * sentiment['dev_accuracy']:.1f}% ({sentiment['n_dev']} examples)",
        f"NER: entity micro-F1 dev {100 * ner_dev['dev_f1']:.1f}, test {100 * ner_test.metrics['f1']:.1f}",
    ]
    print(f"NER on the test split:\n{ner_test.report}")

    banner("Text: export to ONNX and the Triton repository")
    exports = [
        (base, "text_embed"),
        (context.checkpoint("intents"), "text_classify"),
        (context.checkpoint("ner"), "text_ner"),
        (context.checkpoint("sentiment"), "sentiment"),
    ]
    for checkpoint, pipeline in exports:
        context.record_checkpoint(pipeline, checkpoint)
        if context.needs_export(checkpoint, pipeline):
            print(export_text(checkpoint, context.repository, name=pipeline).summary())
        else:
            print(f"-- {pipeline} is up to date in {context.repository}")


def show(context: DemoContext, client) -> None:
    banner("Text: text_classify (customer-service intents)")
    for message, result in zip(CUSTOMER_MESSAGES, client.classify_text(list(CUSTOMER_MESSAGES))):
        print(f"  {result.label:<24} {result.score:.2f}  {message}")
    served = _served_accuracy(context, client, "intents", "text_classify")
    if served is not None:
        context.summary.append(f"intent accuracy through the server on the held-out split: {100 * served:.1f}%")

    banner("Text: sentiment (financial news, same tensor names as text_classify)")
    for headline, result in zip(HEADLINES, client.classify_text(list(HEADLINES), pipeline="sentiment")):
        print(f"  {result.label:<9} {result.score:.2f}  {headline}")

    banner("Text: text_ner")
    for sentence, entities in zip(NEWS, client.extract_entities(list(NEWS))):
        print(f"  {sentence}")
        for entity in entities:
            print(f"      {entity.label:<5} {entity.text!r} [{entity.start}:{entity.end}] {entity.score:.2f}")

    banner("Text: text_embed (cosine similarity of served embeddings)")
    sentences = ["Where is my order?", "My parcel has not arrived yet.", "The stock market fell sharply today."]
    embeddings = client.embed_text(sentences)
    similarity = embeddings @ embeddings.T
    for i, sentence in enumerate(sentences):
        print(f"  {sentence:<40} " + " ".join(f"{v:5.2f}" for v in similarity[i]))

    banner("Text: latency per call through gRPC (batch of 1, p50 / p90)")
    calls = {
        "text_classify": lambda: client.classify_text(CUSTOMER_MESSAGES[0]),
        "sentiment": lambda: client.classify_text(HEADLINES[0], pipeline="sentiment"),
        "text_ner": lambda: client.extract_entities(NEWS[0]),
        "text_embed": lambda: client.embed_text(sentences[0]),
    }
    for pipeline, call in calls.items():
        p50, p90 = latency_ms(call)
        print(f"  {pipeline:<14} p50 {p50:6.2f} ms   p90 {p90:6.2f} ms")
        context.summary.append(f"{pipeline}: p50 {p50:.2f} ms per call (batch 1)")


def _served_accuracy(context: DemoContext, client, checkpoint: str, pipeline: str) -> float | None:
    """The held-out split classified through the server, to show serving matches training."""
    dev = context.checkpoint(checkpoint) / "dev.jsonl"
    if not dev.exists():
        return None
    records = [json.loads(line) for line in dev.read_text(encoding="utf-8").splitlines() if line.strip()]
    results = client.classify_text([r["text"] for r in records], pipeline=pipeline)
    return float(np.mean([res.label == r["label"] for res, r in zip(results, records)]))
