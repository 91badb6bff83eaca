"""Classification metrics: accuracy, macro-F1, per-class precision/recall/F1 and a confusion matrix (NumPy only),
a confusion-matrix PNG (matplotlib, optional) and JSON / Markdown reports; plus a reader for prediction files."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError
from ..files import atomic_path, atomic_write_text
from ..jsonl import read_jsonl


@dataclass
class ClassificationReport:
    labels: list[str]                    # class names, in matrix order
    confusion: np.ndarray                # (n_labels, n_labels) int: rows = true label, columns = predicted
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict]           # label -> {"precision", "recall", "f1", "support"}

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    def to_dict(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy, "macro_f1": self.macro_f1, "labels": self.labels,
                "per_class": self.per_class, "confusion_matrix": self.confusion.tolist()}


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)


def classification_report(y_true, y_pred, labels: list[str] | None = None) -> ClassificationReport:
    """Metrics of predictions against true labels (any hashable values, compared as strings).

    labels: the classes and their order (default: sorted union of true and predicted values). A class with no
    true and no predicted example has precision = recall = F1 = 0; macro-F1 averages over all `labels`, like
    scikit-learn's f1_score(average="macro", zero_division=0).
    """
    y_true, y_pred = [str(y) for y in y_true], [str(y) for y in y_pred]
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no examples to score")
    labels = sorted(set(y_true) | set(y_pred)) if labels is None else [str(x) for x in labels]
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted((set(y_true) | set(y_pred)) - index.keys())
    if unknown:
        raise ValueError(f"label {unknown[0]!r} is not among the given labels")
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(confusion, ([index[y] for y in y_true], [index[y] for y in y_pred]), 1)
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    precision = _safe_div(tp, confusion.sum(axis=0))
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    per_class = {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                         "support": int(support[i])} for i, label in enumerate(labels)}
    return ClassificationReport(labels, confusion, float(tp.sum() / confusion.sum()), float(f1.mean()), per_class)


def read_predictions(path: str | Path, label_key: str = "label", prediction_key: str = "prediction"):
    """(true labels, predictions) from a .csv (header row) or .jsonl file with `label` and `prediction` columns."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = [row for _, row in read_jsonl(path)]
    else:
        raise ValueError(f"{path}: predictions must be a .csv or .jsonl file")
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or label_key not in row or prediction_key not in row:
            raise ValueError(f"{path}: row {n} lacks a {label_key!r} or {prediction_key!r} column")
    if not rows:
        raise ValueError(f"{path}: no rows")
    return [row[label_key] for row in rows], [row[prediction_key] for row in rows]


def markdown_report(report: ClassificationReport, title: str = "Classification report") -> str:
    lines = [f"# {title}", "", f"{report.n} examples, {len(report.labels)} classes.", "",
             f"- accuracy: {100 * report.accuracy:.2f}%", f"- macro-F1: {100 * report.macro_f1:.2f}%", "",
             "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
              for label, m in report.per_class.items()]
    if len(report.labels) <= 20:               # a readable table; bigger matrices are in the JSON and the PNG
        lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
                  "| | " + " | ".join(report.labels) + " |", "|---" * (len(report.labels) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(str(v) for v in row) + " |"
                  for label, row in zip(report.labels, report.confusion.tolist())]
    return "\n".join(lines) + "\n"


def plot_confusion_matrix(report: ClassificationReport, path: str | Path, title: str = "Confusion matrix") -> Path:
    """Save the confusion matrix (row-normalized colours, counts written in cells when few classes) as a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("the confusion-matrix PNG needs matplotlib: pip install 'tinygemma[eval]'") from None
    k = len(report.labels)
    rates = _safe_div(report.confusion.astype(float), report.confusion.sum(axis=1, keepdims=True))
    size = min(4 + 0.35 * k, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = range(k)
    fontsize = 8 if k <= 30 else 4
    ax.set_xticks(ticks, report.labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, report.labels, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (accuracy {100 * report.accuracy:.1f}%, macro-F1 {100 * report.macro_f1:.1f}%)")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(report.confusion[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def write_reports(report: ClassificationReport, out_dir: str | Path, png: bool = True) -> dict[str, Path]:
    """Write classification.json, classification.md and (if `png`) confusion_matrix.png into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "classification.json", "markdown": out / "classification.md"}
    atomic_write_text(paths["json"], json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(paths["markdown"], markdown_report(report))
    if png:
        paths["png"] = plot_confusion_matrix(report, out / "confusion_matrix.png")
    return paths
