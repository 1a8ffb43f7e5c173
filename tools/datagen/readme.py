"""The data sets' README.md: per-label and per-split counts around a fixed description."""
import os
import re
from collections import Counter

from .common import HERE, SEED
from .ner import NER_HELDOUT_TEMPLATES, NER_TRAIN_TEMPLATES

def entity_counts(sents):
    c = Counter()
    for s in sents:
        for _, _, _, tag in s:
            if tag.startswith("B-"):
                c[tag[2:]] += 1
    return c


def md_table(counter, header):
    lines = ["| {} | count |".format(header), "|---|---:|"]
    for k in sorted(counter):
        lines.append("| `{}` | {} |".format(k, counter[k]))
    lines.append("| **total** | {} |".format(sum(counter.values())))
    return "\n".join(lines)


def write_readme(intents, sentiment, ner):
    ic = Counter(l for _, l in intents)
    zh = Counter(l for t, l in intents if re.search(r"[\u4e00-\u9fff]", t))
    sc = Counter(l for _, l in sentiment)
    train, dev, test = ner
    train_ents = set()
    for s in train:
        cur = []
        for tok, _, _, tag in s + [("", "", "", "O")]:
            if tag.startswith("B-") or tag == "O":
                if cur:
                    train_ents.add(" ".join(cur))
                cur = [tok] if tag.startswith("B-") else []
            else:
                cur.append(tok)

    def unseen_share(sents):
        tot = un = 0
        for s in sents:
            cur = []
            for tok, _, _, tag in s + [("", "", "", "O")]:
                if tag.startswith("B-") or tag == "O":
                    if cur:
                        tot += 1
                        un += " ".join(cur) not in train_ents
                    cur = [tok] if tag.startswith("B-") else []
                else:
                    cur.append(tok)
        return un, tot

    ner_lines = ["| split | sentences | tokens | PER | ORG | LOC | MISC | entity mentions unseen in train |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, sents in (("train", train), ("dev", dev), ("test", test)):
        ec = entity_counts(sents)
        un, tot = unseen_share(sents)
        ner_lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            name, len(sents), sum(len(s) for s in sents), ec["PER"], ec["ORG"],
            ec["LOC"], ec["MISC"], "{}/{} ({:.0f}%)".format(un, tot, 100.0 * un / tot) if tot else "0"))

    intent_lines = ["| label | total | of which Chinese |", "|---|---:|---:|"]
    for k in sorted(ic):
        intent_lines.append("| `{}` | {} | {} |".format(k, ic[k], zh[k]))
    intent_lines.append("| **total** | {} | {} |".format(sum(ic.values()), sum(zh.values())))

    text = """# mmserve default training datasets

Small, embedded default datasets used by the mmserve training / fine-tuning
pipelines when no customer data is supplied (smoke tests, demos, CI). They are
synthetic: every row was produced by `tools/make_datasets.py` from
hand-written templates, paraphrase alternatives and slot lists.

| file | task | format |
|---|---|---|
| `intents.csv` | customer-service intent classification (online shop + telecom support) | CSV, header `text,label`, UTF-8 |
| `sentiment.csv` | financial-news sentiment for public-opinion monitoring | CSV, header `text,label`, UTF-8 |
| `ner/train.conll`, `ner/dev.conll`, `ner/test.conll` | named-entity recognition | CoNLL-2003 style, `token POS CHUNK TAG` |

## intents.csv

{n_intents} rows, {n_labels} intents. English user messages with varied phrasing,
politeness, casing, occasional abbreviations ("pls", "thx") and occasional
typos, plus a small simplified-Chinese subset (5 rows per intent, same labels).
No exact duplicates (case-insensitive). Rows are shuffled.

Intents are designed to be separable (a word/char n-gram Naive Bayes baseline
scores roughly 90-93% on random 15% held-out splits; most of its errors are in
the tiny Chinese subset) without being keyword-identical: each intent has
18-28 templates with inline paraphrase alternatives, plus random greetings /
sign-offs, casing, abbreviations and typos. Note that English-only tokenizers
map many Chinese characters to `[UNK]`; use a multilingual checkpoint or
filter the Chinese rows if that matters.

{intent_table}

## sentiment.csv

{n_sent} rows. Financial headlines and short news sentences about **fictional**
companies (grouped by sector so products and business lines fit the
company); labels are exactly `positive`, `neutral`, `negative` (balanced).
Positive = beats, upgrades, raised guidance, contract wins, dividend hikes;
negative = misses, downgrades, recalls, lay-offs, probes, write-downs;
neutral = scheduling, appointments, filings, in-line results, flat trading.
No exact duplicates. Rows are shuffled.

{sent_table}

## ner/*.conll

CoNLL-2003 layout: each file starts with `-DOCSTART- -X- -X- O` and a blank
line; then one token per line as `token POS CHUNK TAG` (single spaces), and a
blank line between sentences. Punctuation is tokenised separately. NER tags use
BIO / IOB2 (`B-PER I-PER B-ORG I-ORG B-LOC I-LOC B-MISC I-MISC O`); an `I-X`
always follows `B-X` or `I-X`. POS tags are Penn-Treebank-style tags assigned
by a small lexicon plus heuristics, and CHUNK tags (IOB2 `B-NP`, `I-VP`, ...)
are derived from them, so both are plausible but not gold-standard.

Entities: PER (one- to four-token names), ORG (fictional companies such as
"Northwind Bank", sports clubs, international institutions), LOC (cities,
countries, regions, e.g. "New York", "Rio de Janeiro"), MISC (nationalities
and demonyms, events such as "World Cup", product names such as "Galaxy Phone").
Sentences mix news-wire style and customer-service messages.

Train uses only the "seen" entity pools and {n_train_tpl} sentence templates.
Dev and test draw about half of their entity mentions from pools never used in
train and about 40% of their sentences from {n_held_tpl} templates never used in
train, so entity-level F1 on test measures generalisation rather than
memorisation. No sentence is repeated across splits.

{ner_table}

## Regenerating

```
python tools/make_datasets.py
```

The script uses a fixed seed ({seed}) and only the Python standard library, so
the outputs are reproducible byte-for-byte. Edit the template / slot lists in
the script rather than the generated files.

## License

Written for this project. All text, templates and generated data are released
under CC0 1.0 (public-domain dedication). Company, product and most person
names are invented; any resemblance to real entities is coincidental. Real
place names, nationalities, events, sports clubs and international
institutions appear only as generic entity examples.
""".format(
        n_intents=len(intents), n_labels=len(ic), intent_table="\n".join(intent_lines),
        n_sent=len(sentiment), sent_table=md_table(sc, "label"),
        n_train_tpl=len(NER_TRAIN_TEMPLATES), n_held_tpl=len(NER_HELDOUT_TEMPLATES),
        ner_table="\n".join(ner_lines), seed=SEED)
    with open(os.path.join(HERE, "README.md"), "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
