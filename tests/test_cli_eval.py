"""`tinygemma eval ...` through the real CLI: reports written, and bad input -> one-line error, non-zero exit."""

import json

from tinygemma.export.gguf import save_gguf

from test_cli import assert_one_line_error, run_many
from tinymodels import random_tensors, tiny_config, tiny_tokenizer


def test_eval_commands(tmp_path):
    data = tmp_path / "ifeval"
    data.mkdir()
    (data / "input_data.jsonl").write_text(json.dumps(
        {"key": 5, "prompt": "Quote it.", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]}) + "\n")
    (tmp_path / "responses.jsonl").write_text(json.dumps({"prompt": "Quote it.", "response": '"yes"'}) + "\n")
    (tmp_path / "preds.csv").write_text("label,prediction\nspam,spam\nham,spam\nham,ham\nham,ham\n")
    (tmp_path / "nolabel.csv").write_text("text,prediction\nhi,spam\n")
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog " * 20)
    cfg = tiny_config()
    save_gguf(tmp_path / "tiny.gguf", cfg, random_tensors(cfg, 0), tiny_tokenizer())
    out = tmp_path / "out"
    model = ["--model", tmp_path / "tiny.gguf", "--dtype", "float32"]
    r = run_many({
        "ifeval": (["eval", "ifeval", "--data", data, "--responses", tmp_path / "responses.jsonl", "--out", out], None),
        "classify": (["eval", "classify", "--predictions", tmp_path / "preds.csv", "--out", out, "--no-png"], None),
        "perplexity": (["eval", "perplexity", tmp_path / "text.txt", "--ctx", "16", "--max-chunks", "2", "--json",
                        *model], None),
        "no_responses_file": (["eval", "ifeval", "--data", data, "--responses", tmp_path / "none.jsonl"], None),
        "no_data": (["eval", "ifeval", "--data", tmp_path / "nowhere", "--responses", tmp_path / "r.jsonl"], None),
        "bad_limit": (["eval", "ifeval", "--data", data, "--limit", "0"], None),
        "bad_predictions": (["eval", "classify", "--predictions", tmp_path / "nolabel.csv", "--out", out], None),
        "ctx_too_long": (["eval", "perplexity", tmp_path / "text.txt", *model], None),
        "no_task": (["eval"], None),
    })
    rc, stdout, err = r["ifeval"]
    assert rc == 0, err
    assert "prompt level strict        100.00%" in stdout
    assert json.loads((out / "ifeval.json").read_text())["results"][0]["strict"] == [True]
    rc, stdout, err = r["classify"]
    assert rc == 0, err
    assert "accuracy 75.00%" in stdout and (out / "classification.md").is_file()
    rc, stdout, err = r["perplexity"]
    assert rc == 0, err
    result = json.loads(stdout)
    assert result["chunks"] == 2 and result["tokens_scored"] == 2 * 7 and result["ppl"] > 1
    for name in ("no_responses_file", "no_data", "bad_limit", "bad_predictions", "ctx_too_long"):
        assert_one_line_error(*r[name][::2])
    assert "IFEval prompts not found" in r["no_data"][2]
    assert "--limit must be at least 1" in r["bad_limit"][2]
    assert "ctx must be between 4 and 256, got 512" in r["ctx_too_long"][2]      # the tiny model's context
    assert_one_line_error(r["no_task"][0], r["no_task"][2], argparse_error=True)
