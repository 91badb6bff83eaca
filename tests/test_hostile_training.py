"""Hostile inputs and faults for fine-tuning, classify, export and eval: bad output paths fail before anything
loads, a full disk gives one line and leaves the previous files, wrong config types and degenerate data are
refused by name, and a checkpoint cannot run code. Full disks are real: a subprocess with a lowered
RLIMIT_FSIZE (writes fail with EFBIG) or a small tmpfs (ENOSPC)."""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinygemma import cli
from tinygemma.export.gguf import save_gguf
from tinygemma.train import data as D
from tinygemma.train.checkpoint import CheckpointError, load_checkpoint
from tinygemma.train.lora import AdapterError, read_adapter
from tinygemma.train.trainer import ConfigError, TrainConfig

from tinymodels import random_tensors, tiny_config, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MISSING = "/nonexistent/model.gguf"     # a model path that fails if anything tries to load it


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    cfg = tiny_config()
    save_gguf(d / "tiny.gguf", cfg, random_tensors(cfg, 0), tiny_tokenizer())
    write_jsonl(d / "pc.jsonl", [{"prompt": f"the cat {w}", "completion": f" {w}{w}"} for w in "abcdefgh" * 2])
    write_jsonl(d / "cls.jsonl", [{"text": f"{w} the cat", "label": "animal" if i % 2 else "place"}
                                  for i, w in enumerate("abcdefgh")])
    write_jsonl(d / "one_class.jsonl", [{"text": f"{w} the cat", "label": "animal"} for w in "abcdefgh"])
    return d


def one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinygemma: error:"), err
    for needle in needles:
        assert needle in err[0], err
    return err[0]


def finetune_argv(files, out, *extra, model=None):
    return ["finetune", "--data", str(files / "pc.jsonl"), "--model", model or str(files / "tiny.gguf"),
            "--out", str(out), "--batch-size", "4", "--eval-fraction", "0", "--no-bf16", "--no-progress", *extra]


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders that a failed write left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


def run_limited(argv: list[str], limit_bytes: int) -> subprocess.CompletedProcess:
    """`python -m tinygemma ARGV` where no file may grow past `limit_bytes` (writes fail with EFBIG, as on a
    full disk). stdout and stderr are pipes, which the limit does not touch."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return subprocess.run([sys.executable, "-m", "tinygemma", *argv], cwd=ROOT, preexec_fn=limit,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_failure(proc: subprocess.CompletedProcess, *needles) -> None:
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and err[0].startswith("tinygemma: error:"), proc.stderr
    for needle in needles:
        assert needle in err[0], err


# ---------------------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("case", ["out_is_file", "adapter_is_file", "checkpoint_is_dir", "resume_without"])
def test_finetune_output_problems_fail_before_data_and_model_load(files, tmp_path, capsys, case):
    """The model path does not exist: an error about it would mean the output was checked too late."""
    out = tmp_path / "out"
    extra = []
    if case == "out_is_file":
        out.write_text("not a folder")
        needle = "not a directory"
    elif case == "adapter_is_file":
        out.mkdir()
        (out / "adapter").write_text("x")
        needle = "adapter: is a file"
    elif case == "checkpoint_is_dir":
        (out / "checkpoint.pt").mkdir(parents=True)
        needle = "checkpoint.pt: is a directory"
    else:
        extra = ["--resume"]
        needle = "no checkpoint to resume from"
    assert cli.main(finetune_argv(files, out, *extra, model=MISSING)) == 1
    one_line_error(capsys, needle)


def test_export_output_problems_fail_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "dir.gguf").mkdir()
    assert cli.main(["export", str(tmp_path / "dir.gguf"), "--model", MISSING]) == 1
    one_line_error(capsys, "dir.gguf", "is a directory")
    (tmp_path / "file").write_text("x")
    assert cli.main(["export", str(tmp_path / "file"), "--format", "hf", "--type", "f32", "--model", MISSING]) == 1
    one_line_error(capsys, "is not a directory")
    assert cli.main(["export", str(tmp_path / "file" / "m.gguf"), "--model", MISSING]) == 1
    one_line_error(capsys, "is not a directory")


def test_eval_and_classify_outputs_checked_first(files, tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    (tmp_path / "dir.csv").mkdir()
    assert cli.main(["classify", str(files / "cls.jsonl"), "--labels", "a,b", "--model", MISSING,
                     "--out", str(tmp_path / "dir.csv")]) == 1
    one_line_error(capsys, "is a directory")
    preds = tmp_path / "preds.csv"
    preds.write_text("label,prediction\na,a\nb,a\n")
    assert cli.main(["eval", "classify", "--predictions", str(preds), "--out", str(tmp_path / "taken"),
                     "--no-png"]) == 1
    one_line_error(capsys, "not a directory")
    assert cli.main(["eval", "extract", "--data", str(tmp_path / "nope.json"), "--prepare",
                     str(tmp_path / "dir.csv")]) == 1
    one_line_error(capsys, "is a directory")


# ---------------------------------------------------------------------------------------- full disks


def test_finetune_full_disk_keeps_the_previous_checkpoint(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(finetune_argv(files, out, "--steps", "2", "--save-every", "0")) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in [out / "checkpoint.pt", out / "adapter" / "adapter.safetensors",
                                              out / "metrics.jsonl", out / "summary.json"]}
    proc = run_limited(finetune_argv(files, out, "--steps", "4", "--save-every", "0", "--resume"), 4096)
    assert_one_line_failure(proc, "checkpoint.pt", "file too large")
    after = {p.name: p.read_bytes() for p in [out / "checkpoint.pt", out / "adapter" / "adapter.safetensors",
                                             out / "metrics.jsonl", out / "summary.json"]}
    assert after == before and leftovers(out) == [] and leftovers(out / "adapter") == []
    assert load_checkpoint(out / "checkpoint.pt")["state"]["step"] == 2


def test_outputs_of_a_run_are_atomic_under_a_full_disk(files, tmp_path):
    """Adapter, Hugging Face directory, metrics, loss curve and checkpoint each: a write that fails leaves
    the previous version whole and no temporary file."""
    script = f"""
import sys, torch
from pathlib import Path
sys.path.insert(0, {str(ROOT / 'tests')!r})
from tinymodels import random_tensors, tiny_config, tiny_tokenizer
from tinygemma.errors import TinyGemmaError
from tinygemma.export.safetensors import save_hf_dir
from tinygemma.files import atomic_write_text
from tinygemma.train.checkpoint import save_checkpoint
from tinygemma.train.lora import AdapterConfig, save_adapter
from tinygemma.train.trainer import plot_losses
d = Path({str(tmp_path)!r})
cfg = tiny_config()
big = {{"x.lora_A": torch.zeros(64, 1024), "x.lora_B": torch.zeros(64, 64)}}
history = [{{"step": i, "loss": float(i % 7)}} for i in range(2000)]
for name, write in [
    ("adapter", lambda: save_adapter(d / "adapter", AdapterConfig(), big)),
    ("hf", lambda: save_hf_dir(d / "hf", cfg, random_tensors(cfg), tiny_tokenizer())),
    ("checkpoint", lambda: save_checkpoint(d / "checkpoint.pt", {{"trainable": big}})),
    ("metrics", lambda: atomic_write_text(d / "metrics.jsonl", "x" * 100_000)),
    ("png", lambda: plot_losses(history, d / "loss.png")),
]:
    try:
        write()
        print(name, "written")
    except TinyGemmaError as e:
        print(name, "refused:", e)
"""
    for sub in ("adapter", "hf"):
        (tmp_path / sub).mkdir()
    old = {tmp_path / "adapter" / "adapter.safetensors": b"old adapter", tmp_path / "adapter" / "adapter_config.json":
           b"{}", tmp_path / "hf" / "config.json": b"old config", tmp_path / "hf" / "README.md": b"mine",
           tmp_path / "checkpoint.pt": b"old checkpoint", tmp_path / "metrics.jsonl": b"old metrics",
           tmp_path / "loss.png": b"old png"}
    for path, data in old.items():
        path.write_bytes(data)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, preexec_fn=limit, capture_output=True,
                          text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 5, proc.stdout + proc.stderr
    assert all(" refused: " in line and "file too large" in line for line in lines), lines
    assert {path: path.read_bytes() for path in old} == old
    for folder in (tmp_path, tmp_path / "adapter", tmp_path / "hf"):
        assert leftovers(folder) == [], folder


def test_export_full_disk_keeps_the_old_file_then_replaces_it(files, tmp_path):
    gguf, hf = tmp_path / "m.gguf", tmp_path / "hf"
    gguf.write_bytes(b"old model")
    hf.mkdir()
    (hf / "config.json").write_text("old config")
    model = ["--model", str(files / "tiny.gguf"), "--type", "f32"]
    proc = run_limited(["export", str(gguf), *model], 64_000)
    assert_one_line_failure(proc, "m.gguf", "file too large")
    proc = run_limited(["export", str(hf), "--format", "hf", *model], 64_000)
    assert_one_line_failure(proc, "hf", "file too large")
    assert gguf.read_bytes() == b"old model" and (hf / "config.json").read_text() == "old config"
    assert leftovers(tmp_path) == [] and sorted(os.listdir(hf)) == ["config.json"]
    # With room, an existing output is replaced (as llama.cpp's converter and save_pretrained do).
    assert cli.main(["export", str(gguf), *model]) == 0
    assert cli.main(["export", str(hf), "--format", "hf", *model]) == 0
    import tinygemma
    ids = tiny_tokenizer().encode("the cat sat")
    base = tinygemma.load(files / "tiny.gguf", dtype="float32").logits(ids)
    for path in (gguf, hf):
        torch.testing.assert_close(tinygemma.load(path, dtype="float32").logits(ids), base, rtol=0, atol=0)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (real ENOSPC); skipped where mounting is not allowed."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_export_on_a_full_tmpfs(files, small_tmpfs, capsys):
    out = small_tmpfs / "m.gguf"
    out.write_bytes(b"old model")
    assert cli.main(["export", str(out), "--model", str(files / "tiny.gguf"), "--type", "f32"]) == 1
    one_line_error(capsys, "m.gguf", "no space left")
    assert out.read_bytes() == b"old model" and leftovers(small_tmpfs) == []


# ---------------------------------------------------------------------------------------- checkpoints


class _Payload:
    """Unpickling this creates a folder: the stand-in for arbitrary code in a hostile checkpoint."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_checkpoint_cannot_run_code(files, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"trainable": {}, "optimizer": {}, "rng": _Payload(str(marker)), "state": {}, "config": {}},
               out / "checkpoint.pt")
    assert cli.main(finetune_argv(files, out, "--steps", "2", "--resume")) == 1
    one_line_error(capsys, "checkpoint.pt", "refused", "posix.mkdir")
    assert not marker.exists()
    torch.load(out / "checkpoint.pt", weights_only=False)       # what the old loader did: the code runs
    assert marker.exists()


def test_damaged_or_foreign_checkpoints_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for content in (b"", b"\x80\x04garbage", os.urandom(2000)):
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="not a readable checkpoint|refused") as e:
            load_checkpoint(path)
        assert "\n" not in str(e.value)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a tinygemma checkpoint"):
        load_checkpoint(path)
    torch.save({"trainable": {"a": 1}, "optimizer": {}, "rng": torch.get_rng_state(), "state": {}, "config": {}},
               path)
    with pytest.raises(CheckpointError, match="'trainable' must map names to tensors"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("yaml_text, message", [
    ("lr: abc", "lr must be a finite number or null, got 'abc'"),
    ("steps: [1]", "steps must be an integer or null, got [1]"),
    ("batch_size: -3", "batch_size must be at least 1, got -3"),
    ("batch_size: 2.5", "batch_size must be an integer, got 2.5"),
    ("rank: true", "rank must be an integer, got True"),
    ("bf16: maybe", "bf16 must be true or false or null, got 'maybe'"),
    ("epochs: .nan", "epochs must be a finite number"),
    ("dropout: 1.5", "dropout must be in [0, 1)"),
    ("targets: [q_proj, qq_proj]", "targets must be some of"),
    ("data: 5", "data must be a string, got 5"),
    ("out: {a: 1}", "out must be a string"),
    ("stepz: 3", "unknown key 'stepz'"),
    ("- a list", "must be a mapping"),
    ("lr: [unclosed", "not valid YAML"),
])
def test_yaml_with_wrong_types_names_the_field(files, tmp_path, capsys, yaml_text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(f"data: {files / 'pc.jsonl'}\n{yaml_text}\n" if not yaml_text.startswith("-") else yaml_text)
    assert cli.main(["finetune", "--config", str(config), "--model", MISSING]) == 1
    one_line_error(capsys, message)


def test_yaml_numbers_without_a_dot_are_numbers():
    """PyYAML reads 2e-4 as a string; it is a learning rate all the same."""
    import yaml

    values = yaml.safe_load("lr: 2e-4\nalpha: 16\ntargets: q_proj,v_proj\n")
    cfg = TrainConfig.from_dict({"data": "x.jsonl", **values})
    assert cfg.lr == 2e-4 and cfg.alpha == 16.0 and isinstance(cfg.alpha, float)
    assert cfg.targets == ("q_proj", "v_proj")
    with pytest.raises(ConfigError, match="^lr must be positive"):
        TrainConfig(data="x.jsonl", lr=0).validate()


def test_non_utf8_yaml(files, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_bytes(b"steps: 2\nnote: caf\xe9\n")
    assert cli.main(["finetune", "--config", str(config), "--model", MISSING]) == 1
    one_line_error(capsys, "bad.yaml", "not UTF-8")


# ---------------------------------------------------------------------------------------- data


def test_one_class_classification_is_refused(files, tmp_path, capsys):
    for task in ("classify-head", "classify-lm"):
        argv = finetune_argv(files, tmp_path / task, "--task", task, "--steps", "2")
        argv[argv.index("--data") + 1] = str(files / "one_class.jsonl")
        assert cli.main(argv) == 1
        one_line_error(capsys, "only the label 'animal'", "at least 2 classes")


@pytest.mark.parametrize("name, content, message", [
    ("latin1.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "latin1.jsonl:2: not UTF-8 text (byte 0xe9)"),
    ("empty.jsonl", b"", "no rows"),
    ("blank.jsonl", b"\n  \n", "no rows"),
    ("empty.csv", b"", "empty csv file"),
    ("header_only.csv", b"text,label\n", "no rows"),
    ("huge_field.csv", b"text,label\n" + b"a" * 200_000 + b",x\n", "huge_field.csv:2: not valid CSV"),
    ("list.jsonl", b"[1, 2]\n", "a row must be a JSON object"),
    ("data.txt", b"hello\n", "must be .jsonl or .csv"),
])
def test_bad_data_files_give_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(D.DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        D.read_rows(path)
    assert "\n" not in str(e.value)


def test_csv_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,label\nhello,a\n".encode("utf-8"))
    assert D.read_rows(path) == [{"_line": 2, "text": "hello", "label": "a"}]


def test_jsonl_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "notepad.jsonl"
    path.write_bytes('\ufeff{"text": "hello", "label": "a"}\n'.encode("utf-8"))
    assert D.read_rows(path) == [{"_line": 1, "text": "hello", "label": "a"}]


def test_missing_text_column_via_cli(files, tmp_path, capsys):
    write_jsonl(tmp_path / "notext.jsonl", [{"sentence": "a", "label": "x"}, {"sentence": "b", "label": "y"}])
    assert cli.main(["classify", str(tmp_path / "notext.jsonl"), "--labels", "x,y", "--model", MISSING,
                     "--out", str(tmp_path / "p.csv")]) == 1
    one_line_error(capsys, "field 'text' is missing")


@pytest.mark.parametrize("flags, message", [
    (["--limit", "0"], "--limit must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--labels", ",,"], "every label must be non-empty"),
    (["--labels", ""], "every label must be non-empty"),
    (["--labels", "a, b,a"], "label 'a' is given twice"),
    (["--labels", "only"], "at least 2 labels"),
])
def test_classify_flags_are_checked_before_the_model_loads(files, tmp_path, capsys, flags, message):
    argv = ["classify", str(files / "cls.jsonl"), "--model", MISSING, "--out", str(tmp_path / "p.csv"), *flags]
    if "--labels" not in flags:
        argv += ["--labels", "a,b"]
    assert cli.main(argv) == 1
    one_line_error(capsys, message)


def test_eval_perplexity_of_non_utf8_text(tmp_path, capsys):
    (tmp_path / "t.txt").write_bytes(b"hello \xff world")
    assert cli.main(["eval", "perplexity", str(tmp_path / "t.txt"), "--model", MISSING]) == 1
    one_line_error(capsys, "t.txt: not UTF-8 text (byte 0xff at offset 6)")


@pytest.mark.parametrize("config, message", [
    ({"rank": "8"}, "rank must be an integer of at least 1, got '8'"),
    ({"rank": 0}, "rank must be an integer of at least 1"),
    ({"alpha": None}, "alpha must be a number"),
    ({"targets": "q_proj"}, "targets must be a list"),
    ({"task": "regression"}, "task must be 'causal_lm' or 'classification'"),
    ({"labels": [1, 2]}, "labels must be a list of strings"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ([1, 2], "must be a JSON object"),
])
def test_adapter_configs_with_wrong_types(tmp_path, config, message):
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match=message.replace("(", r"\(")):
        read_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_bytes(b'{"rank": 8, "base_model": "caf\xe9"}')
    with pytest.raises(AdapterError, match="not a valid adapter config"):
        read_adapter(tmp_path)
