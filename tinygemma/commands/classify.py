"""tinygemma classify FILE: predict a label for every row of a .csv/.jsonl file, in batches.

The adapter decides the method: a classification head (trained with --task classify-head) or generative
labels (--task classify-lm, or --labels with any model: the base model scored on the label set).
The output has `label` (when the input has labels), `prediction` and `confidence` columns, ready for
`tinygemma eval classify --predictions`.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from ..files import atomic_open, atomic_write_text, check_writable_file
from .common import add_model_args, load_model

DEFAULT_BATCH = 32
DEFAULT_OUT = "predictions.csv"


def build_parser(p):
    p.add_argument("file", help=".csv (header row) or .jsonl with a text column")
    add_model_args(p)
    p.set_defaults(dtype="float32")     # the weights the adapter was trained on, exactly
    p.add_argument("--labels", help="comma-separated label set (at least two, distinct, non-empty) for generative "
                   "scoring without a trained adapter")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label", help="true labels, copied to the output's label column if present")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="sequences per forward pass")
    p.add_argument("--max-length", type=int, default=512, help="tokens per text at most")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N rows")
    p.add_argument("--out", default=DEFAULT_OUT, help="predictions file (.csv or .jsonl)")
    return p


def main(args) -> int:
    from tqdm import tqdm

    from ..train.classifier import SequenceClassifier, predict_head, score_labels
    from ..train.data import classification_texts, read_rows

    for flag, value in (("--batch-size", args.batch_size), ("--max-length", args.max_length), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    given_labels = parse_labels(args.labels) if args.labels is not None else None
    check_writable_file(args.out, "predictions file (--out)")      # before the model loads
    rows = read_rows(args.file)[:args.limit]
    texts = classification_texts(args.file, rows, args.text_column)
    lm = load_model(args)
    adapter = lm.adapter
    bar = tqdm(total=len(texts), desc="classify", unit="text", file=sys.stderr)
    if adapter is not None and adapter.config.task == "classification":
        labels = adapter.config.labels
        classifier = SequenceClassifier(lm.model, len(labels))
        classifier.score.weight.data = adapter.head.to(classifier.score.weight.dtype)
        scores = predict_head(classifier, lm.tokenizer, texts, args.batch_size, args.max_length, bar.update)
    else:
        labels = given_labels or (adapter.config.labels if adapter is not None else [])
        if not labels:
            raise ValueError("no label set: pass --adapter from a classification fine-tune, or --labels a,b,c")
        scores = score_labels(lm.model, lm.tokenizer, texts, labels, args.batch_size, args.max_length,
                              bar.update).softmax(-1)
    bar.close()
    confidence, best = scores.max(-1)
    out_rows = []
    for row, i, c in zip(rows, best.tolist(), confidence.tolist()):
        out = {"label": str(row[args.label_column]).strip()} if args.label_column in row else {}
        out_rows.append({**out, "prediction": labels[i], "confidence": round(c, 4)})
    write_rows(args.out, out_rows)
    if all("label" in r for r in out_rows):
        accuracy = sum(r["label"] == r["prediction"] for r in out_rows) / len(out_rows)
        print(f"accuracy {100 * accuracy:.2f}% on {len(out_rows)} rows")
    print(f"predictions: {args.out}")
    return 0


def parse_labels(text: str) -> list[str]:
    """The --labels set: comma-separated, each non-empty (spaces around it dropped), distinct, at least two."""
    labels = [label.strip() for label in text.split(",")]
    if any(not label for label in labels):
        raise ValueError(f"--labels {text!r}: every label must be non-empty (comma-separated: a,b,c)")
    duplicate = next((label for i, label in enumerate(labels) if label in labels[:i]), None)
    if duplicate is not None:
        raise ValueError(f"--labels {text!r}: label {duplicate!r} is given twice")
    if len(labels) < 2:
        raise ValueError(f"--labels {text!r}: at least 2 labels are needed to choose between")
    return labels


def write_rows(path: str, rows: list[dict]) -> None:
    """The predictions as .jsonl or .csv, written to a temporary name and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".jsonl":
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
