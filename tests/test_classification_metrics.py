"""Classification metrics against values computed by hand, the report writers and the prediction-file reader."""

import json

import numpy as np
import pytest

from tinygemma.eval.classification import classification_report, read_predictions, write_reports

# 3 classes, 8 examples.      true:  a a a b b c c c
#                             pred:  a a b b c c c a
# confusion (rows true a,b,c; cols pred a,b,c) = [[2,1,0],[0,1,1],[1,0,2]]
Y_TRUE = list("aaabbccc")
Y_PRED = list("aabbccca")


def test_hand_computed_metrics():
    r = classification_report(Y_TRUE, Y_PRED)
    assert r.labels == ["a", "b", "c"]
    assert r.confusion.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert r.accuracy == 5 / 8
    # a: P = 2/3, R = 2/3, F1 = 2/3.  b: P = 1/2, R = 1/2, F1 = 1/2.  c: P = 2/3, R = 2/3, F1 = 2/3.
    expected = {"a": (2 / 3, 2 / 3, 3), "b": (1 / 2, 1 / 2, 2), "c": (2 / 3, 2 / 3, 3)}
    for label, (p, rec, support) in expected.items():
        m = r.per_class[label]
        assert m["precision"] == pytest.approx(p) and m["recall"] == pytest.approx(rec)
        assert m["f1"] == pytest.approx(2 * p * rec / (p + rec)) and m["support"] == support
    assert r.macro_f1 == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)


def test_unequal_precision_and_recall_and_an_unpredicted_class():
    # true: x x x y ; pred: x y y y -> x: P 1/1, R 1/3, F1 1/2 ; y: P 1/3, R 1/1, F1 1/2 ; z never seen: all 0.
    r = classification_report(list("xxxy"), list("xyyy"), labels=["x", "y", "z"])
    assert r.per_class["x"] == {"precision": 1.0, "recall": pytest.approx(1 / 3), "f1": pytest.approx(0.5),
                                "support": 3}
    assert r.per_class["y"]["precision"] == pytest.approx(1 / 3) and r.per_class["y"]["f1"] == pytest.approx(0.5)
    assert r.per_class["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r.macro_f1 == pytest.approx(1 / 3)            # (0.5 + 0.5 + 0) / 3, as zero_division=0
    assert r.confusion.tolist() == [[1, 2, 0], [0, 1, 0], [0, 0, 0]]


def test_labels_compare_as_strings_and_errors():
    assert classification_report([1, 0, 1], ["1", "0", "0"]).accuracy == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 true labels but 2 predictions"):
        classification_report([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="no examples"):
        classification_report([], [])
    with pytest.raises(ValueError, match="'q' is not among the given labels"):
        classification_report(["a"], ["q"], labels=["a"])


def test_reports_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    paths = write_reports(classification_report(Y_TRUE, Y_PRED), tmp_path)
    doc = json.loads(paths["json"].read_text())
    assert doc["n"] == 8 and doc["accuracy"] == 5 / 8 and doc["confusion_matrix"][0] == [2, 1, 0]
    md = paths["markdown"].read_text()
    assert "- accuracy: 62.50%" in md and "| a | 2 | 1 | 0 |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_predictions_csv_and_jsonl(tmp_path):
    (tmp_path / "p.csv").write_text("text,label,prediction\nhi,spam,ham\nyo,ham,ham\n")
    assert read_predictions(tmp_path / "p.csv") == (["spam", "ham"], ["ham", "ham"])
    (tmp_path / "p.jsonl").write_text('{"label": 1, "prediction": 2}\n\n{"label": 3, "prediction": 3}\n')
    assert read_predictions(tmp_path / "p.jsonl") == ([1, 3], [2, 3])
    (tmp_path / "bad.csv").write_text("text,label\nhi,spam\n")
    with pytest.raises(ValueError, match="row 1 lacks a 'label' or 'prediction' column"):
        read_predictions(tmp_path / "bad.csv")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(ValueError, match="must be a .csv or .jsonl"):
        read_predictions(tmp_path / "p.txt")
    assert np.isclose(classification_report(*read_predictions(tmp_path / "p.jsonl")).accuracy, 0.5)
