"""Slot extraction (restaurant8k): reading the upstream format, prompts and fine-tuning rows, scoring by hand,
schema-constrained generation with a tiny random model, and the CLI on bad input."""

import json

import pytest

from tinygemma import LM, fast
from tinygemma.export.gguf import save_gguf
from tinygemma.eval import extraction as X
from tinygemma.structured import Constraint, grammar_for
from tinygemma.train import data as D

from test_cli import assert_one_line_error, run_many
from tinymodels import random_tensors, tiny_config, tiny_tokenizer

UPSTREAM = [
    {"userInput": {"text": "13"}, "context": {"requestedSlots": ["time"]},
     "labels": [{"slot": "time", "valueSpan": {"endIndex": 2}}]},                      # startIndex omitted = 0
    {"userInput": {"text": "Hi there"}},                                               # no labels, no context
    {"userInput": {"text": "Table for 4 tomorrow, name is Ana Ruiz"},
     "context": {"requestedSlots": ["first_name", "last_name", "last_name"]},
     "labels": [{"slot": "last_name", "valueSpan": {"startIndex": 34, "endIndex": 38}},
                {"slot": "people", "valueSpan": {"startIndex": 10, "endIndex": 12}},   # "4 ": stripped
                {"slot": "first_name", "valueSpan": {"startIndex": 30, "endIndex": 33}},
                {"slot": "date", "valueSpan": {"startIndex": 12, "endIndex": 20}},
                {"slot": "people", "valueSpan": {"startIndex": 0, "endIndex": 5}}]},   # twice: the first stays
    {"userInput": {"text": "at 7pm please"}, "context": {},
     "labels": [{"slot": "time", "valueSpan": {"startIndex": 3, "endIndex": 6}}]},
]


@pytest.fixture
def upstream(tmp_path):
    path = tmp_path / "r8k.json"
    path.write_text(json.dumps(UPSTREAM))
    return path


def test_reads_upstream_format(upstream):
    examples = X.restaurant8k_examples(upstream)
    assert examples == [
        X.SlotExample("13", {"time": "13"}, ("time",)),
        X.SlotExample("Hi there", {}, ()),
        X.SlotExample("Table for 4 tomorrow, name is Ana Ruiz",
                      {"last_name": "Ruiz", "people": "4", "first_name": "Ana", "date": "tomorrow"},
                      ("first_name", "last_name")),
        X.SlotExample("at 7pm please", {"time": "7pm"}, ()),
    ]
    assert X.restaurant8k_examples(upstream, limit=2) == examples[:2]
    assert X.prompt(examples[0]) == "Extract the booking details as JSON.\nAsked for: time\nText: 13\nJSON:"
    assert X.prompt(examples[1]) == "Extract the booking details as JSON.\nText: Hi there\nJSON:"
    assert X.completion(examples[1].slots) == "{}"
    assert X.completion(examples[2].slots) == \
        '{"people":"4","date":"tomorrow","first_name":"Ana","last_name":"Ruiz"}'       # SLOTS order


@pytest.mark.parametrize("content, message", [
    ("[{", "not valid JSON"),
    ('{"userInput": {"text": "x"}}', "expected a JSON array"),
    ('[{"userInput": {"text": "x"}}, {"text": "y"}]', "example 2: needs userInput.text"),
    ('[{"userInput": {"text": "ab"}, "labels": [{"slot": "table", "valueSpan": {"endIndex": 1}}]}]', "a slot among"),
    ('[{"userInput": {"text": "ab"}, "labels": [{"slot": "time", "valueSpan": {"endIndex": 3}}]}]', "0..3"),
])
def test_malformed_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        X.restaurant8k_examples(path)
    assert "\n" not in str(e.value)


def test_score_by_hand():
    golds = [{"people": "4", "time": "7pm"},        # pred: people right, time wrong, date extra
             {"first_name": "Ana"},                 # pred: right, with blanks around it -> exact
             {},                                    # pred: {} -> exact
             {"date": "friday"}]                    # did not parse -> {}
    preds = [{"people": "4", "time": "8pm", "date": "today"},
             {"first_name": " Ana "},
             {},
             None]
    metrics, per_slot = X.score(golds, preds)
    # (slot, value) pairs: tp = people, first_name = 2; fp = time 8pm, date today = 2; fn = time 7pm, date friday = 2
    assert metrics["exact_match"] == pytest.approx(2 / 4)
    assert metrics["precision"] == pytest.approx(2 / 4) and metrics["recall"] == pytest.approx(2 / 4)
    assert metrics["f1"] == pytest.approx(0.5)
    assert metrics["valid_json"] == pytest.approx(3 / 4)
    assert per_slot["people"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert per_slot["time"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # date: tp 0, fp 1, fn 1; last_name: nothing anywhere
    assert per_slot["date"]["f1"] == 0.0 and per_slot["date"]["support"] == 1
    assert per_slot["last_name"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}

    # precision 2/3, recall 2/4 -> F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = 4/7
    metrics, _ = X.score([{"people": "2", "date": "today"}, {"time": "6", "last_name": "Li"}],
                         [{"people": "2", "date": "today", "time": "6pm"}, {}])
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(1 / 2)
    assert metrics["f1"] == pytest.approx(4 / 7) and metrics["exact_match"] == 0.0
    with pytest.raises(ValueError, match="2 gold examples but 1"):
        X.score([{}, {}], [{}])


def test_parse_validates_against_the_schema():
    assert X.parse('{"people":"4"}') == {"people": "4"}
    assert X.parse("{}") == {}
    for bad in ('{"people":4}', '{"table":"1"}', '["people"]', '{"people":"4"', ""):
        assert X.parse(bad) is None, bad


def test_prepare_rows_read_by_the_finetune_reader(upstream, tmp_path):
    out = tmp_path / "train.jsonl"
    assert X.prepare(upstream, out, limit=3) == 3
    rows = D.read_rows(out)
    assert [r["completion"] for r in rows] == \
        ['{"time":"13"}', "{}", '{"people":"4","date":"tomorrow","first_name":"Ana","last_name":"Ruiz"}']
    tok = tiny_tokenizer()
    examples = D.lm_examples(out, rows, tok, 512)
    for row, ex in zip(rows, examples):
        # Only the completion and the final <eos> are trained, and they spell the completion.
        trained = [t for t in ex.targets if t != D.IGNORE]
        assert trained[-1] == tok.eos_id
        assert tok.decode(trained[:-1]) == row["completion"]
        assert ex.ids[:len(ex.ids) - len(trained)] == tok.encode(row["prompt"], add_bos=True, parse_special=False)


@pytest.fixture(scope="module")
def tiny_lm():
    cfg = tiny_config(max_position_embeddings=1024)       # this seed: some outputs end, some run on in a string
    return LM(fast.build_fast_model(cfg, random_tensors(cfg, 1)), tiny_tokenizer())


def test_predict_always_parses_and_validates(upstream, tiny_lm):
    examples = X.restaurant8k_examples(upstream) * 2
    outputs = X.predict(tiny_lm, examples, max_tokens=48, batch=3)
    assert len(outputs) == len(examples)
    assert outputs[:4] == outputs[4:]                        # greedy, batched: the same prompt, the same output
    parsed = [X.parse(o) for o in outputs]
    grammar = grammar_for(json_schema=X.SCHEMA)
    for out, obj in zip(outputs, parsed):
        if obj is None:
            # Only an output cut off by max_tokens fails to parse: it is inside the grammar, merely unfinished.
            constraint = Constraint(grammar, tiny_lm.tokenizer)
            for token in tiny_lm.tokenizer.encode(out, add_bos=False, parse_special=False):
                constraint.advance(token)
            assert not constraint.matcher.is_accepting(), out
    assert 0 < sum(p is not None for p in parsed) < len(parsed), outputs      # both kinds occur here
    report = X.evaluate(examples, outputs, {"model": "tiny"})
    assert report.metrics["valid_json"] == sum(p is not None for p in parsed) / len(parsed)
    assert len(report.rows) == len(examples) and "model = tiny" in X.markdown_report(report)


def test_cli(tmp_path, upstream):
    cfg = tiny_config()
    gguf = tmp_path / "tiny.gguf"
    save_gguf(gguf, cfg, random_tensors(cfg, 1), tiny_tokenizer())
    (tmp_path / "rows.json").write_text('[{"userInput": {"text": "hi"}, "labels": [{"slot": "people"}]}]')
    r = run_many({
        "missing": (["eval", "extract", "--data", tmp_path / "nowhere.json"], None),
        "malformed": (["eval", "extract", "--data", tmp_path / "rows.json", "--prepare", tmp_path / "o.jsonl"], None),
        "bad_limit": (["eval", "extract", "--data", upstream, "--limit", "0"], None),
        "prepare": (["eval", "extract", "--data", upstream, "--prepare", tmp_path / "ok.jsonl"], None),
        "evaluate": (["eval", "extract", "--data", upstream, "--limit", "2", "--max-tokens", "16",
                      "--model", gguf, "--dtype", "float32", "--out", tmp_path / "out"], None),
    })
    for name in ("missing", "malformed", "bad_limit"):
        assert_one_line_error(*r[name][::2])
    assert "nowhere.json: no such data file" in r["missing"][2]
    assert "example 1: a label needs a slot" in r["malformed"][2]
    assert "--limit must be at least 1" in r["bad_limit"][2]
    rc, stdout, err = r["prepare"]
    assert rc == 0, err
    assert "wrote 4 prompt/completion rows" in stdout and len(D.read_rows(tmp_path / "ok.jsonl")) == 4
    rc, stdout, err = r["evaluate"]
    assert rc == 0, err
    assert "exact match" in stdout and (tmp_path / "out" / "extraction.md").is_file()
    report = json.loads((tmp_path / "out" / "extraction.json").read_text())
    assert set(report["metrics"]) == set(X.METRICS) and len(report["rows"]) == 2
    assert report["rows"][0]["gold"] == {"time": "13"} and report["info"]["max_tokens"] == 16
