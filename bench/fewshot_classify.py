"""Baseline for the classification fine-tunes: few-shot prompting of the base model, no training.

The prompt lists the labels, then `--shots` labelled training examples per label ("Message: ...\\nLabel: ...");
each test text follows as "Message: {text}\\nLabel:" and the model continues greedily with its output
constrained to " {label}" for one of the labels (llguidance, as the server's guided_choice), so every answer
is a valid label. The shared prefix is computed once; each test text starts from a copy of its cache.

    python bench/fewshot_classify.py ../shared/data/banking77 --label-column category --every 8
    python bench/fewshot_classify.py ../shared/data/sms_spam --shots 4

Writes bench/results/fewshot_<dataset>.json (accuracy, macro-F1, prompt tokens, seconds).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch

import tinygemma
from tinygemma.cache import make_cache
from tinygemma.eval.classification import classification_report
from tinygemma.generate import prefill
from tinygemma.structured import Constraint, grammar_for
from tinygemma.train.data import read_rows

ROOT = Path(__file__).resolve().parents[1]
MAX_LABEL_TOKENS = 32


def build_prefix(train: list[dict], labels: list[str], shots: int, text_column: str, label_column: str,
                 seed: int) -> str:
    """The label list and `shots` examples per label, in a shuffled order."""
    rng = random.Random(seed)
    by_label: dict[str, list[dict]] = {}
    for row in train:
        by_label.setdefault(row[label_column], []).append(row)
    chosen = [r for label in labels for r in rng.sample(by_label[label], min(shots, len(by_label[label])))]
    rng.shuffle(chosen)
    lines = [f"Each message is labelled with one of these labels: {', '.join(labels)}.", ""]
    for r in chosen:
        lines += [f"Message: {' '.join(r[text_column].split())}", f"Label: {r[label_column]}", ""]
    return "\n".join(lines) + "\n"


@torch.inference_mode()
def classify(lm, prefix_ids: list[int], cache: list, text: str, grammar: str) -> str:
    """Greedy constrained continuation of the prefix + "Message: {text}\\nLabel:"."""
    model, tok = lm.model, lm.tokenizer
    cache = copy.deepcopy(cache)
    ids = tok.encode(f"Message: {' '.join(text.split())}\nLabel:", add_bos=False)
    logits = prefill(model, ids, cache)
    constraint, out = Constraint(grammar, tok), []
    for _ in range(MAX_LABEL_TOKENS):
        constraint.mask(logits)
        token = int(logits.argmax())
        if token in tok.stop_ids:
            break
        constraint.advance(token)
        out.append(token)
        logits = model(torch.tensor([[token]]), cache=cache)[0, -1]
    return tok.decode(out).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="folder with train.csv and test.csv")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--shots", type=int, default=1, help="training examples per label in the prompt (default 1)")
    ap.add_argument("--every", type=int, default=1, help="score every N-th test row (default 1: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = Path(args.data)
    train, test = read_rows(data / "train.csv"), read_rows(data / "test.csv")[::args.every]
    labels = sorted({r[args.label_column] for r in train})
    prefix = build_prefix(train, labels, args.shots, args.text_column, args.label_column, args.seed)

    t0 = time.perf_counter()
    lm = tinygemma.load()
    prefix_ids = lm.tokenizer.encode(prefix, add_bos=True)
    cache = make_cache(lm.model.config, dtype=lm.model.dtype, capacity=len(prefix_ids) + 512)
    with torch.inference_mode():
        prefill(lm.model, prefix_ids, cache)
    grammar = grammar_for(choices=[" " + label for label in labels])
    t_prefix = time.perf_counter() - t0
    preds = []
    for i, row in enumerate(test, 1):
        preds.append(classify(lm, prefix_ids, cache, row[args.text_column], grammar))
        if i % 50 == 0:
            print(f"{i}/{len(test)} rows, {time.perf_counter() - t0:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    report = classification_report([r[args.label_column] for r in test], preds, labels)
    result = {"data": data.name, "test_rows": len(test), "every": args.every, "shots_per_label": args.shots,
              "prefix_tokens": len(prefix_ids), "accuracy": round(report.accuracy, 4),
              "macro_f1": round(report.macro_f1, 4), "load_and_prefix_seconds": round(t_prefix, 1),
              "seconds": round(seconds, 1), "model": "embedded Gemma 3 270M base, fast path"}
    out = ROOT / "bench" / "results" / f"fewshot_{data.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
