"""Fine-tuning on tiny random models: learning, masking, LoRA merge, adapters, resume, Ctrl-C, classification,
export round trips, data parallelism and the CLI's errors. Real training runs throughout, nothing mocked."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

import tinygemma
from tinygemma import cli
from tinygemma.export.gguf import save_gguf
from tinygemma.train import data as D
from tinygemma.train.classifier import SequenceClassifier, predict_head, score_labels
from tinygemma.train.lora import AdapterConfig, LoRALinear, add_lora, lora_tensors, merge_adapter, read_adapter
from tinygemma.train.trainer import TrainConfig, Trainer

from serving import free_port
from tinymodels import random_tensors, tiny_config, tiny_tokenizer

WORDS = "abcdefghijklmnop"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("finetune")
    cfg = tiny_config()
    save_gguf(d / "tiny.gguf", cfg, random_tensors(cfg, 0), tiny_tokenizer())
    # A learnable map: each prompt's letter is repeated twice in the completion.
    write_jsonl(d / "pc.jsonl", [{"prompt": f"the cat {w}", "completion": f" {w}{w}"} for w in WORDS * 3])
    # Classification: the word decides the label.
    rows = [{"text": f"{w} the cat {x}", "label": "animal"} for w in WORDS[:8] for x in "ab"]
    rows += [{"text": f"{w} hello world {x}", "label": "place"} for w in WORDS[:8] for x in "ab"]
    write_jsonl(d / "cls.jsonl", rows)
    return d


def tiny_cfg(files, out, **kw) -> TrainConfig:
    base = dict(data=str(files / "pc.jsonl"), out=str(out), model=str(files / "tiny.gguf"), steps=8, lr=1e-2,
                batch_size=4, eval_every=0, eval_fraction=0.1, dropout=0.0, bf16=False, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def losses(history):
    return [r["loss"] for r in history if "loss" in r]


def test_loss_decreases_with_lora(files, tmp_path):
    summary = Trainer(tiny_cfg(files, tmp_path, steps=40, bf16=True)).run()
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = losses(history)
    assert sum(train[-5:]) / 5 < 0.5 * sum(train[:5]) / 5
    evals = [r["eval_loss"] for r in history if "eval_loss" in r]
    assert evals and evals[-1] == pytest.approx(summary["eval_loss"])
    assert (tmp_path / "adapter" / "adapter.safetensors").is_file() and (tmp_path / "loss.png").is_file()


def test_prompt_tokens_are_masked(files):
    tok = tiny_tokenizer()
    (ex,) = D.lm_examples("x", [{"_line": 1, "prompt": "the cat", "completion": " sat"}], tok, 64)
    prompt = tok.encode("the cat", add_bos=True)
    completion = tok.encode(" sat", add_bos=False) + [tok.eos_id]
    assert ex.ids == prompt + completion
    # Position t predicts token t + 1: only the predictions of completion tokens count.
    assert ex.targets == [D.IGNORE] * (len(prompt) - 1) + completion + [D.IGNORE]

    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "on"},
                {"role": "user", "content": "up"}, {"role": "assistant", "content": "at"}]
    (chat,) = D.lm_examples("x", [{"_line": 1, "messages": messages}], tok, 256)
    assert chat.ids == tok.encode_chat(messages, add_generation_prompt=False)
    trained = [tok.decode([t]) for t in chat.targets if t != D.IGNORE]
    assert "".join(trained) == "on<end_of_turn>\nat<end_of_turn>\n"


def test_loss_counts_only_completion_tokens(files, tmp_path):
    trainer = Trainer(tiny_cfg(files, tmp_path))
    batch = D.collate(trainer.train[:3], trainer.tokenizer.pad_id)
    with torch.no_grad():
        got = trainer.loss_sum(batch)
        logits = trainer.model(batch.ids)                       # full forward, every position
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="sum")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_lora_merge_equals_adapted_forward():
    cfg, tok = tiny_config(), tiny_tokenizer()
    tensors = random_tensors(cfg, 1)
    lm = tinygemma.LM.from_tensors(cfg, tensors, tok)
    ids = torch.tensor([tok.encode("the cat sat upon the world")])
    base = lm.model(ids)
    config = AdapterConfig(rank=4, alpha=8.0)
    add_lora(lm.model, config)
    torch.testing.assert_close(lm.model(ids), base, rtol=0, atol=0)          # B = 0: exactly the base model
    for m in lm.model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B, std=0.1)
    adapted = lm.model(ids)
    assert (adapted - base).abs().max() > 1e-2
    adapter = read_adapter(_save(config, lora_tensors(lm.model)))
    merged = tinygemma.LM.from_tensors(cfg, merge_adapter(tensors, adapter), tok)
    torch.testing.assert_close(merged.model(ids), adapted, rtol=1e-5, atol=1e-5)


def _save(config, factors):
    import tempfile

    from tinygemma.train.lora import save_adapter
    return save_adapter(tempfile.mkdtemp(), config, factors)


def test_adapter_round_trip_through_load(files, tmp_path, isolated_cache):
    trainer = Trainer(tiny_cfg(files, tmp_path))
    trainer.run()
    ids = trainer.tokenizer.encode("the cat c")
    with torch.no_grad():
        trained = trainer.model.eval()(torch.tensor([ids]))[0]
    loaded = tinygemma.load(files / "tiny.gguf", dtype="float32", adapter=tmp_path / "adapter")
    torch.testing.assert_close(loaded.logits(ids), trained, rtol=1e-5, atol=1e-5)
    assert loaded.adapter.config.rank == 16
    # The fast path merges first, then converts, and caches the result under a key of its own.
    fast_dir = os.path.join(isolated_cache, "fast")
    before = set(os.listdir(fast_dir)) if os.path.isdir(fast_dir) else set()
    fast = tinygemma.load(files / "tiny.gguf", adapter=tmp_path / "adapter")
    plain = tinygemma.load(files / "tiny.gguf")
    assert len(set(os.listdir(fast_dir)) - before) == 2
    assert (fast.logits(ids) - trained).abs().max() < 0.05 * trained.abs().max()
    assert (plain.logits(ids) - trained).abs().max() > (fast.logits(ids) - trained).abs().max()


def test_resume_after_interrupt_continues_identically(files, tmp_path):
    full = Trainer(tiny_cfg(files, tmp_path / "full", dropout=0.1, steps=6, eval_every=2))
    full.run()

    def interrupt(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    cut = tiny_cfg(files, tmp_path / "cut", dropout=0.1, steps=6, eval_every=2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cut).run(on_step=interrupt)
    # Ctrl-C leaves a usable checkpoint and adapter at the last finished step.
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["state"]["step"] == 3
    assert read_adapter(tmp_path / "cut" / "adapter").factors
    cut.resume = True
    resumed = Trainer(cut)
    resumed.run()
    assert losses(resumed.state.history) == pytest.approx(losses(full.state.history), rel=1e-6)
    for name, value in full.trainable_state().items():
        torch.testing.assert_close(resumed.trainable_state()[name], value, rtol=1e-6, atol=1e-7)


def test_gradient_checkpointing_gives_the_same_gradients(files, tmp_path):
    grads = []
    for checkpointing in (False, True):
        trainer = Trainer(tiny_cfg(files, tmp_path, gradient_checkpointing=checkpointing))
        batch = D.collate(trainer.train[:4], trainer.tokenizer.pad_id)
        trainer.net.train()
        trainer.loss_sum(batch).backward()
        grads.append([p.grad.clone() for p in trainer.params])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_classification_head_learns(files, tmp_path):
    cfg = tiny_cfg(files, tmp_path, data=str(files / "cls.jsonl"), task="classify-head", steps=25, lr=5e-3,
                   eval_fraction=0.0)
    trainer = Trainer(cfg)
    trainer.run()
    adapter = read_adapter(tmp_path / "adapter")
    assert adapter.config.task == "classification" and adapter.config.labels == ["animal", "place"]
    lm = tinygemma.load(files / "tiny.gguf", dtype="float32", adapter=tmp_path / "adapter")
    classifier = SequenceClassifier(lm.model, 2)
    classifier.score.weight.data = adapter.head
    rows = D.read_rows(files / "cls.jsonl")
    probs = predict_head(classifier, lm.tokenizer, [r["text"] for r in rows], batch_size=5)
    predicted = [adapter.config.labels[i] for i in probs.argmax(-1)]
    assert predicted == [r["label"] for r in rows]


def test_generative_labels_learn(files, tmp_path):
    cfg = tiny_cfg(files, tmp_path, data=str(files / "cls.jsonl"), task="classify-lm", steps=25, lr=5e-3,
                   eval_fraction=0.0)
    Trainer(cfg).run()
    lm = tinygemma.load(files / "tiny.gguf", dtype="float32", adapter=tmp_path / "adapter")
    assert lm.adapter.config.labels == ["animal", "place"]
    rows = D.read_rows(files / "cls.jsonl")
    scores = score_labels(lm.model, lm.tokenizer, [r["text"] for r in rows], ["animal", "place"], batch_size=6)
    assert [["animal", "place"][i] for i in scores.argmax(-1)] == [r["label"] for r in rows]
    # The scores are the summed log-probabilities of " label" <eos>, computed here from plain full passes.
    tok, text = lm.tokenizer, rows[0]["text"]
    prompt = tok.encode(D.CLASSIFY_PROMPT.format(text=text), add_bos=True)
    label = tok.encode(" animal", add_bos=False) + [tok.eos_id]
    logp = torch.log_softmax(lm.logits(prompt + label), -1)
    want = sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(label))
    assert float(scores[0, 0]) == pytest.approx(float(want), abs=1e-4)


def test_export_round_trips(files, tmp_path):
    Trainer(tiny_cfg(files, tmp_path / "run")).run()
    adapter = read_adapter(tmp_path / "run" / "adapter")
    base = tinygemma.load(files / "tiny.gguf", dtype="float32")
    merged = merge_adapter({k: v for k, v in base.model.state_dict().items()}, adapter)
    ids = base.tokenizer.encode("the cat sat upon")
    for ttype, dtype in (("F16", torch.float16), ("BF16", torch.bfloat16)):
        out = tmp_path / f"m-{ttype}.gguf"
        assert cli.main(["export", str(out), "--model", str(files / "tiny.gguf"), "--adapter",
                         str(tmp_path / "run" / "adapter"), "--type", ttype.lower()]) == 0
        rounded = {k: (v.to(dtype).float() if v.ndim == 2 else v) for k, v in merged.items()}
        want = tinygemma.LM.from_tensors(base.config, rounded, base.tokenizer).logits(ids)
        torch.testing.assert_close(tinygemma.load(out, dtype="float32").logits(ids), want, rtol=0, atol=0)
    exact = tinygemma.LM.from_tensors(base.config, merged, base.tokenizer).logits(ids)
    assert cli.main(["export", str(tmp_path / "q8.gguf"), "--model", str(files / "tiny.gguf"), "--adapter",
                     str(tmp_path / "run" / "adapter"), "--type", "q8_0"]) == 0
    q8 = tinygemma.load(tmp_path / "q8.gguf", dtype="float32").logits(ids)
    assert (q8 - exact).abs().max() < 0.02 * exact.abs().max()
    assert cli.main(["export", str(tmp_path / "hf"), "--format", "hf", "--type", "f32", "--model",
                     str(files / "tiny.gguf"), "--adapter", str(tmp_path / "run" / "adapter")]) == 0
    torch.testing.assert_close(tinygemma.load(tmp_path / "hf", dtype="float32").logits(ids), exact, rtol=0, atol=0)


def _ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    trainer = Trainer(cfg)
    try:
        trainer.run()
    finally:
        trainer.dist.close()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_data_parallel_equals_single_process(files, tmp_path, method):
    common = dict(steps=3, grad_accum=2, eval_every=2, method=method, lr=1e-3)
    Trainer(tiny_cfg(files, tmp_path / "single", batch_size=4, **common)).run()
    mp.spawn(_ddp_worker, args=(2, free_port(), tiny_cfg(files, tmp_path / "ddp", batch_size=2, **common)),
             nprocs=2, join=True)
    single = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=False)
    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert single["trainable"].keys() == ddp["trainable"].keys()
    # Float32 sums in another order differ by ~1e-9; Adam divides by sqrt(v), which lifts such differences on
    # near-zero gradients to a few 1e-6 after three steps.
    for name, value in single["trainable"].items():
        torch.testing.assert_close(ddp["trainable"][name], value, rtol=1e-5, atol=2e-5)
    assert losses(ddp["state"]["history"]) == pytest.approx(losses(single["state"]["history"]), rel=1e-5)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2


def test_precision_follows_the_cpu_unless_forced(files, tmp_path, capsys):
    """bfloat16 autocast only where the CPU has native bfloat16 (emulated, it costs ~30x float32); the CLI
    flags force either, and the choice is printed and recorded."""
    from tinygemma.kernels import native_bf16

    auto = Trainer(tiny_cfg(files, tmp_path / "auto", steps=1, bf16=None))
    assert auto.bf16 == native_bf16()
    assert auto.run()["precision"] == ("bfloat16 autocast" if native_bf16() else "float32")
    for flag, text in (("--bf16", "bfloat16 autocast (forced)"), ("--no-bf16", "float32 (forced)")):
        assert cli.main(["finetune", "--data", str(files / "pc.jsonl"), "--model", str(files / "tiny.gguf"),
                         "--out", str(tmp_path / flag), "--steps", "1", "--batch-size", "4", "--eval-every", "0",
                         "--no-progress", flag]) == 0
        assert text in capsys.readouterr().out


def test_cli_finetune_yaml_flags_and_classify(files, tmp_path, capsys):
    out = tmp_path / "run"
    (tmp_path / "cfg.yaml").write_text(f"data: {files / 'cls.jsonl'}\ntask: classify-head\nsteps: 2\n"
                                       f"batch_size: 4\nlr: 0.005\nbf16: false\nout: {out}\n")
    assert cli.main(["finetune", "--config", str(tmp_path / "cfg.yaml"), "--model", str(files / "tiny.gguf"),
                     "--steps", "3", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3          # the flag beat the YAML
    preds = tmp_path / "preds.csv"
    assert cli.main(["classify", str(files / "cls.jsonl"), "--model", str(files / "tiny.gguf"),
                     "--adapter", str(out / "adapter"), "--out", str(preds), "--batch-size", "7"]) == 0
    assert cli.main(["eval", "classify", "--predictions", str(preds), "--out", str(tmp_path / "ev"),
                     "--no-png"]) == 0
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("missing_file", "no such data file"),
    ("bad_json", "cls_bad.jsonl:2: not valid JSON"),
    ("missing_field", "bad_field.jsonl:3: field 'completion' is missing"),
    ("no_label_column", "field 'category' is missing or empty"),
    ("unknown_yaml_key", "unknown key 'stepz'"),
    ("missing_adapter", "no such adapter file"),
])
def test_cli_bad_inputs_give_one_line_errors(files, tmp_path, capsys, case, message):
    (tmp_path / "cls_bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": \n')
    write_jsonl(tmp_path / "bad_field.jsonl", [{"prompt": "a", "completion": "b"}] * 2 + [{"prompt": "a"}])
    (tmp_path / "bad.yaml").write_text("stepz: 3\n")
    model = ["--model", str(files / "tiny.gguf")]
    argv = {
        "missing_file": ["finetune", "--data", str(tmp_path / "nope.jsonl"), *model],
        "bad_json": ["finetune", "--data", str(tmp_path / "cls_bad.jsonl"), *model],
        "missing_field": ["finetune", "--data", str(tmp_path / "bad_field.jsonl"), *model],
        "no_label_column": ["finetune", "--data", str(files / "cls.jsonl"), "--task", "classify-head",
                            "--label-column", "category", *model],
        "unknown_yaml_key": ["finetune", "--config", str(tmp_path / "bad.yaml"), *model],
        "missing_adapter": ["generate", "hi", "--adapter", str(tmp_path / "none"), *model],
    }[case]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinygemma: error:") and message in err[0], err
