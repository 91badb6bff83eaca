"""The chat model's recipe on tiny models and data made here: the seeded mixture, length-grouped batches, the
chat task, and `tinygemma chat-train` end to end (CI's tiny-model version of the recipe that made the shipped
adapter), including resuming it with the same command."""

import json

import pytest
import torch

import tinygemma
from tinygemma import cli
from tinygemma.export.gguf import save_gguf
from tinygemma.train.recipe import build_mixture, kind_matches
from tinygemma.train.trainer import TrainConfig, Trainer

from tinymodels import random_tensors, tiny_config, tiny_tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_row(i, source, constrained=False, words=3):
    row = {"messages": [{"role": "user", "content": f"question {i} " + "the cat " * words},
                        {"role": "assistant", "content": f"answer {i}"}], "source": source}
    if constrained:
        row["constraints"] = ["punctuation:no_comma"]
    return row


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipe")
    cfg = tiny_config()
    save_gguf(d / "tiny.gguf", cfg, random_tensors(cfg, 0), tiny_tokenizer())
    return d / "tiny.gguf"


def test_mixture_takes_each_kind_once_seeded(tmp_path):
    rows = ([chat_row(i, "flan_cot/gsm8k") for i in range(10)] + [chat_row(i, "flan_cot/creak", True) for i in range(6)]
            + [chat_row(i, "stories") for i in range(4)] + [chat_row(i, "flan_cot_extra") for i in range(3)])
    src = write_jsonl(tmp_path / "train.jsonl", rows)
    mixture = {"flan_cot+c": 4, "flan_cot/gsm8k": 3, "flan_cot": 5, "stories": 9}
    report = build_mixture(src, tmp_path / "a.jsonl", seed=1, mixture=mixture)
    assert report.taken == {"flan_cot+c": 4, "flan_cot/gsm8k": 3, "flan_cot": 5, "stories": 4}
    picked = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(picked) == report.total == 16
    assert len({json.dumps(r, sort_keys=True) for r in picked}) == 16              # no row twice
    assert not any(r["source"] == "flan_cot_extra" for r in picked)                 # a prefix means a sub-source
    assert sum(bool(r.get("constraints")) for r in picked) == 4
    build_mixture(src, tmp_path / "b.jsonl", seed=1, mixture=mixture)
    build_mixture(src, tmp_path / "c.jsonl", seed=2, mixture=mixture)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert (tmp_path / "a.jsonl").read_text() != (tmp_path / "c.jsonl").read_text()
    half = build_mixture(src, tmp_path / "d.jsonl", seed=1, scale=0.5, mixture=mixture)
    assert half.taken == {"flan_cot+c": 2, "flan_cot/gsm8k": 2, "flan_cot": 2, "stories": 4}
    assert kind_matches("flan_cot+c", rows[10]) and not kind_matches("flan_cot", rows[10])


def test_length_grouped_batches_pad_less_and_keep_every_example(tiny_gguf, tmp_path):
    rows = [chat_row(i, "x", words=(i * 7) % 23) for i in range(64)]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)

    def trainer(group, seed=0):
        return Trainer(TrainConfig(data=str(data), out=str(tmp_path / f"o{group}{seed}"), model=str(tiny_gguf),
                                   task="chat", batch_size=4, eval_fraction=0.0, group_by_length=group, seed=seed,
                                   progress=False, bf16=False))

    plain, grouped = trainer(False), trainer(True)

    def padding(t):
        order = t.epoch_order(0)
        assert sorted(order) == list(range(len(t.train)))
        lengths = [len(t.train[i].ids) for i in order]
        return sum(max(lengths[k:k + 4]) * 4 - sum(lengths[k:k + 4]) for k in range(0, len(lengths), 4))

    assert padding(grouped) < 0.5 * padding(plain)
    assert grouped.epoch_order(0) == trainer(True).epoch_order(0)             # seeded: a resumed run agrees
    assert grouped.epoch_order(0) != grouped.epoch_order(1)
    assert grouped.epoch_order(0) != trainer(True, seed=1).epoch_order(0)


def test_chat_task_needs_messages_rows(tiny_gguf, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "the cat", "completion": " sat"}] * 8)
    rc = cli.main(["finetune", "--data", str(data), "--out", str(tmp_path / "o"), "--model", str(tiny_gguf),
                   "--task", "chat", "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.strip() == f"tinygemma: error: {data}:1: --task chat needs a 'messages' field in every row"


@pytest.fixture
def instruct(tmp_path):
    """A small source folder laid out as ../shared/data/instruct."""
    root = tmp_path / "instruct"
    (root / "flan_cot").mkdir(parents=True)
    rows = [f"Is {a} the cat {b}?\tyes\tThe cat {a} sat on {b}." for a in "abcdefgh" for b in "stuvw"]
    (root / "flan_cot" / "toy_train.tsv").write_text("\n".join(rows) + "\n")
    (root / "self_instruct").mkdir()
    (root / "self_instruct" / "tasks.jsonl").write_text("".join(json.dumps(
        {"instruction": f"Say {w}.", "instances": [{"input": "", "output": f"{w} {w}."}]}) + "\n" for w in ("hi", "ho", "ha") + tuple("hijklmnopqrstuvwxyz")))
    return root


def test_chat_train_recipe_end_to_end_and_resume(instruct, tiny_gguf, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["chat-train", "--source", str(instruct), "--out", str(out), "--model", str(tiny_gguf),
            "--scale", "0.02", "--stories", "0", "--no-progress"]
    assert cli.main([*args, "--steps", "4"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.splitlines()[0])
    assert summary["steps"] == 4 and summary["eval_loss"] > 0
    assert "[1/3]" in captured.err and "[2/3]" in captured.err and "[3/3] training" in captured.err
    card = (out / "data" / "DATA_CARD.md").read_text()
    assert "flan_cot/toy" in card
    mixture = json.loads((out / "mixture.json").read_text())
    assert mixture["taken"]["flan_cot+c"] >= 1 and mixture["taken"]["self_instruct"] >= 1
    mixed = (out / "mixture.jsonl").read_text()
    history = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history if "loss" in r] == [1, 2, 3, 4]
    assert any("eval_loss" in r for r in history)

    # The same command continues a stopped run: data and mixture are kept, training resumes at its checkpoint.
    assert cli.main([*args, "--steps", "6"]) == 0
    captured = capsys.readouterr()
    assert "resuming" in captured.err and "[1/3]" not in captured.err
    assert json.loads(captured.out.splitlines()[0])["steps"] == 6
    assert (out / "mixture.jsonl").read_text() == mixed
    history = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history if "loss" in r] == [1, 2, 3, 4, 5, 6]

    # The adapter is a chat model's: it loads over its base and answers through the chat template. The shipped
    # form (bfloat16 factors) gives the same model to bfloat16 rounding.
    lm = tinygemma.load(tiny_gguf, dtype="float32", adapter=out / "train" / "adapter")
    shipped = tinygemma.load(tiny_gguf, dtype="float32", adapter=out / "chat_adapter")
    assert (out / "chat_adapter" / "adapter.safetensors").stat().st_size < \
        0.6 * (out / "train" / "adapter" / "adapter.safetensors").stat().st_size
    base = tinygemma.load(tiny_gguf, dtype="float32")
    ids = lm.tokenizer.encode_chat([{"role": "user", "content": "Is a the cat s?"}], add_generation_prompt=True)
    assert not torch.allclose(lm.logits(ids), base.logits(ids))
    torch.testing.assert_close(shipped.logits(ids), lm.logits(ids), rtol=0.02, atol=0.02)


def test_chat_train_bad_input_is_one_line(instruct, tiny_gguf, tmp_path, capsys):
    for extra, message in ((["--scale", "0"], "--scale must be positive"),
                           (["--steps", "0"], "--steps must be at least 1")):
        rc = cli.main(["chat-train", "--source", str(instruct), "--out", str(tmp_path / "o"),
                       "--model", str(tiny_gguf), *extra])
        err = capsys.readouterr().err
        assert rc == 1 and message in err and len(err.strip().splitlines()) == 1
    rc = cli.main(["chat-train", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                   "--model", str(tiny_gguf)])
    err = capsys.readouterr().err
    assert rc == 1 and "not a directory of instruction data" in err and "Traceback" not in err
