"""Story compliance and GSM8K scoring (tinygemma.eval.chat_eval) by hand-checked cases, and both harnesses run
end to end on a tiny random model (the CLI included)."""

import json

import pytest

from tinygemma import cli
from tinygemma.eval import chat_eval
from tinygemma.export.gguf import save_gguf
from tinygemma.lm import LM
from tinygemma.story import StoryChoices

from tinymodels import random_tensors, tiny_config, tiny_tokenizer

CHOICES = StoryChoices("a curious cat", "in a magical forest", "finds a glowing key", "friendship", "short")


def test_score_story_by_hand():
    story = "Once upon a time, a curious cat lived in a magical forest. " + "It was a lovely day. " * 30
    s = chat_eval.score_story(CHOICES, story, "stop")
    assert s.names_character and s.names_setting and s.ended and s.length_ok and s.compliant
    assert s.words == chat_eval.count_words(story)
    cut = chat_eval.score_story(CHOICES, story, "length")
    assert not cut.ended and not cut.compliant
    short = chat_eval.score_story(CHOICES, "A cat in a forest. The End", "stop")
    assert not short.length_ok and short.story == "A cat in a forest."       # "The End" is not counted
    wrong = chat_eval.score_story(CHOICES, story.replace("forest", "city"), "stop")
    assert not wrong.names_setting and wrong.names_character


@pytest.mark.parametrize("response,want", [
    ("She sells 9 eggs, so 9 * 2 = 18.\nSo the answer is 18.", 18.0),
    ("... #### 1,234", 1234.0), ("The total is $42.50.", 42.5), ("no number here", None),
    ("First 3, then 5. The answer is -7", -7.0)])
def test_gsm8k_prediction(response, want):
    assert chat_eval.gsm8k_prediction(response) == want


def test_gsm8k_subset_is_fixed(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"x\n#### {i}"}) + "\n" for i in range(40)))
    a, b = chat_eval.gsm8k_subset(path, 10), chat_eval.gsm8k_subset(path, 10)
    assert a == b and len(a) == 10 and [r["question"] for r in a] == sorted((r["question"] for r in a),
                                                                          key=lambda q: int(q[1:]))
    assert chat_eval.gsm8k_subset(path, 100) == [json.loads(line) for line in path.read_text().splitlines()]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match="#### N"):
        chat_eval.gsm8k_subset(tmp_path / "bad.jsonl")


@pytest.fixture(scope="module")
def tiny_lm():
    cfg = tiny_config(tie_word_embeddings=False, max_position_embeddings=4096)   # the book prompt: ~800 tokens here
    return LM.from_tensors(cfg, random_tensors(cfg, 1), tiny_tokenizer())


def test_stories_harness_on_a_tiny_model(tiny_lm):
    sets = [CHOICES, StoryChoices("a wise owl", "on a tiny island", "finds a magic hat", "mystery", "short")]
    for tuned in (False, True):
        report = chat_eval.run_stories(tiny_lm, sets, instruction_tuned=tuned)
        assert len(report["results"]) == 2
        assert report["prompt_format"] == ("chat" if tuned else "story book")
        for r in report["results"]:
            assert r["compliant"] == (r["names_character"] and r["names_setting"] and r["ended"] and r["length_ok"])
        assert 0.0 <= report["metrics"]["compliant"] <= 1.0


def test_gsm8k_cli_on_a_tiny_model(tmp_path, capsys):
    cfg = tiny_config()
    save_gguf(tmp_path / "tiny.gguf", cfg, random_tensors(cfg, 0), tiny_tokenizer())
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"question": f"the cat has {i} hats", "answer": f"#### {i}"}) + "\n"
                            for i in range(5)))
    assert cli.main(["eval", "gsm8k", "--data", str(data), "--n", "3", "--max-tokens", "4", "--model",
                     str(tmp_path / "tiny.gguf"), "--dtype", "float32", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "gsm8k.json").read_text())
    assert len(report["results"]) == 3 and "accuracy" in capsys.readouterr().out
    assert report["metrics"]["accuracy"] == sum(r["correct"] for r in report["results"]) / 3
    assert cli.main(["eval", "gsm8k", "--data", str(tmp_path / "missing.jsonl"), "--model",
                     str(tmp_path / "tiny.gguf"), "--out", str(tmp_path / "out")]) == 1
    assert cli.main(["eval", "stories", "--limit", "0", "--model", str(tmp_path / "tiny.gguf")]) == 1
