"""Shared helpers of the data set generator: seed, output folder, template expansion, styling, CSV/CoNLL writers."""
import csv
import os
import re

SEED = 20240601
# where the checked-in data sets live: training/data/ beside the tools/ folder that holds this package
HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "training", "data")

ALT_RE = re.compile(r"\[([^\[\]]*)\]")
SLOT_RE = re.compile(r"\{(\w+)\}")

def expand(rng, template, slot_fn):
    """Expand inline alternatives `[a|b|c]` and `{slot}` placeholders."""
    text = ALT_RE.sub(lambda m: rng.choice(m.group(1).split("|")), template)
    text = SLOT_RE.sub(lambda m: slot_fn(rng, m.group(1)), text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.?!;:])", r"\1", text)
    text = re.sub(r"^[,;:]\s*", "", text)
    text = re.sub(r"\b([Aa]) (?=[aeioAEIO])", r"\1n ", text)
    return text


PREFIXES = ["Hi,", "Hello,", "Hey,", "Hi there,", "Good morning,", "Hello team,",
            "Excuse me,", "Quick question:", "Hello, hope you're well.", "Um,",
            "Hey there,", "Hi support,", "Sorry to bother you,", "Good afternoon.",
            "Help!", "Hiya,", "Ok so", "Urgent:", "Hi, I need help.", "So,"]
SUFFIXES = ["Thanks.", "Thank you!", "thx", "Please help.", "Appreciate it.",
            "asap please", "Cheers.", "Thanks in advance.", "Any help appreciated.",
            "Many thanks.", "ty", "Thanks!!", "Please advise.", "Kind regards."]


def add_typo(rng, text):
    words = text.split(" ")
    idxs = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not idxs:
        return text
    i = rng.choice(idxs)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    op = rng.choice(["swap", "drop", "double"])
    if op == "swap":
        w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    elif op == "drop":
        w = w[:j] + w[j + 1:]
    else:
        w = w[:j] + w[j] + w[j:]
    words[i] = w
    return " ".join(words)


def casual(rng, text):
    subs = [(r"\bplease\b", "pls"), (r"\byou\b", "u"), (r"\bthanks\b", "thx"),
            (r"\bbecause\b", "cos"), (r"\bI am\b", "im"), (r"\bI'm\b", "im"),
            (r"\bdon't\b", "dont"), (r"\bcan't\b", "cant"), (r"\bit's\b", "its")]
    for pat, rep in subs:
        if rng.random() < 0.6:
            text = re.sub(pat, rep, text)
    return text


def stylise(rng, text, allow_wrap=True):
    if allow_wrap:
        if rng.random() < 0.28:
            p = rng.choice(PREFIXES)
            if p[-1] == "," or p in ("Ok so", "Um,", "So,"):
                if not (text.startswith("I ") or text.startswith("I'")):
                    text = text[0].lower() + text[1:]
            text = p + " " + text
        if rng.random() < 0.18:
            suf = rng.choice(SUFFIXES)
            if text[-1] in ".?!":
                text = text + " " + suf
            elif rng.random() < 0.6:
                text = text + ". " + suf
            else:
                text = text + ", " + suf[0].lower() + suf[1:]
    r = rng.random()
    if r < 0.15:
        text = casual(rng, text.lower())
    elif r < 0.25:
        text = text.lower()
    if rng.random() < 0.2 and text[-1] in ".":
        text = text[:-1]
    elif rng.random() < 0.05 and text[-1] == "?":
        text = text + "??"
    elif rng.random() < 0.04 and text[-1] == "!":
        text = text + "!"
    if rng.random() < 0.1:
        text = add_typo(rng, text)
    return text


def write_csv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerow(["text", "label"])
        w.writerows(rows)


def write_conll(path, sents):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("-DOCSTART- -X- -X- O\n\n")
        for s in sents:
            for tok, p, c, tag in s:
                f.write("{} {} {} {}\n".format(tok, p, c, tag))
            f.write("\n")
