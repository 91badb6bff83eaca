"""Baseline for the classification fine-tunes: TF-IDF (word 1-2-grams + character 2-5-grams) and logistic
regression, trained on train.csv and scored on test.csv with tinygemma's own metrics.

    pip install scikit-learn        # bench only, not a tinygemma dependency
    python bench/tfidf_baseline.py ../shared/data/banking77 --label-column category
    python bench/tfidf_baseline.py ../shared/data/sms_spam

Writes bench/results/tfidf_<dataset>.json (accuracy, macro-F1, fit seconds).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from tinygemma.eval.classification import classification_report

ROOT = Path(__file__).resolve().parents[1]


def read(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r[text_column] for r in rows], [r[label_column] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="folder with train.csv and test.csv")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    args = ap.parse_args()
    data = Path(args.data)
    train_x, train_y = read(data / "train.csv", args.text_column, args.label_column)
    test_x, test_y = read(data / "test.csv", args.text_column, args.label_column)
    start = time.perf_counter()
    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
    features = hstack([words.fit_transform(train_x), chars.fit_transform(train_x)]).tocsr()
    model = LogisticRegression(C=10.0, max_iter=2000).fit(features, train_y)
    seconds = time.perf_counter() - start
    predicted = model.predict(hstack([words.transform(test_x), chars.transform(test_x)]).tocsr())
    report = classification_report(test_y, predicted)
    result = {"dataset": data.name, "train": len(train_x), "test": len(test_x), "accuracy": report.accuracy,
              "macro_f1": report.macro_f1, "fit_seconds": round(seconds, 1),
              "per_class_f1": {k: v["f1"] for k, v in report.per_class.items()} if len(report.labels) <= 5 else None}
    out = ROOT / "bench" / "results" / f"tfidf_{data.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{data.name}: accuracy {100 * report.accuracy:.2f}%  macro-F1 {100 * report.macro_f1:.2f}%  "
          f"(fit {seconds:.1f} s on {len(train_x)} rows, {len(test_x)} test rows) -> {out}")


if __name__ == "__main__":
    main()
