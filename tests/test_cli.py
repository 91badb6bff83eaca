"""The real CLI (`python -m tinygemma ...`) as a subprocess, against a tiny random GGUF written here."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import tinygemma
from tinygemma.export.gguf import save_gguf

from tinymodels import random_tensors, tiny_config, tiny_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, stdin: str | None = None, threads: int | None = 1, timeout: float = 120):
    """Run `python -m tinygemma ARGS`; returns (returncode, stdout str, stderr str), decoded as UTF-8 exactly."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)     # tiny models: avoid thread oversubscription on busy machines
    p = subprocess.run([sys.executable, "-m", "tinygemma", *map(str, args)], cwd=ROOT, env=env,
                       input=None if stdin is None else stdin.encode(), capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8")


def run_many(cases: dict, timeout: float = 180) -> dict:
    """Run several CLI invocations at once (each is mostly interpreter and torch start-up).

    cases: name -> (argv, stdin text or None); returns name -> (returncode, stdout, stderr)."""
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        futures = {name: pool.submit(run_cli, *argv, stdin=stdin, timeout=timeout)
                   for name, (argv, stdin) in cases.items()}
        return {name: f.result() for name, f in futures.items()}


def assert_one_line_error(rc, err, argparse_error=False):
    assert "Traceback" not in err, err
    if argparse_error:
        assert rc == 2, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("tinygemma") and ": error:" in last, err   # "tinygemma[ generate]: error: ..."
        assert err.startswith("usage: tinygemma"), err
    else:
        assert rc != 0, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("tinygemma: error:"), err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = tiny_config(tie_word_embeddings=False)      # untied: varied greedy output from a random model
    tensors = random_tensors(cfg, 0)
    save_gguf(d / "tiny.gguf", cfg, tensors, tiny_tokenizer())
    return d, cfg, tensors


@pytest.fixture(scope="module")
def gguf(model_dir):
    return model_dir[0] / "tiny.gguf"


@pytest.fixture(scope="module")
def lm(gguf):
    return tinygemma.load(gguf)


@pytest.fixture(scope="module")
def runs(gguf):
    """The successful invocations, started together; each test below checks one of them."""
    g = ["--model", gguf]
    return run_many({
        "greedy": (["generate", "Hello world", *g, "--temperature", "0", "--max-tokens", "5"], None),
        "stdin_verbose": (["generate", "-", *g, "--temperature", "0", "--max-tokens", "20", "--verbose"], "the cat"),
        "seed_a": (["generate", "Hello world", *g, "--temperature", "1.0", "--max-tokens", "12", "--seed", "7"], None),
        "seed_b": (["generate", "Hello world", *g, "--temperature", "1.0", "--max-tokens", "12", "--seed", "7"], None),
        "tiny_temperature": (["generate", "Hello world", *g, "--temperature", "1e-39", "--max-tokens", "5"], None),
        "tokenize_json": (["tokenize", "Hello world, the cat sat", *g, "--json"], None),
        "tokenize_plain": (["tokenize", "the cat sat", *g], None),
        "info_json": (["info", *g, "--json"], None),
        "info_plain": (["info", *g], None),
        "chat": (["chat", *g, "--temperature", "0", "--max-tokens", "8"], "hello\n/reset\nhi\n"),
    })


def test_generate_greedy_matches_library(runs, lm):
    rc, out, err = runs["greedy"]
    assert rc == 0, err
    assert "Traceback" not in err
    want = lm.generate("Hello world", max_tokens=5)
    assert want                                        # the tiny model does print something
    assert out == want + "\n"


def test_generate_prompt_from_stdin_verbose(runs, lm):
    rc, out, err = runs["stdin_verbose"]
    assert rc == 0, err
    assert out == lm.generate("the cat", max_tokens=20) + "\n"
    assert "generated: 20 tokens" in err and "finish: length" in err


def test_generate_seed_reproducible(runs, lm):
    runs = [runs["seed_a"], runs["seed_b"]]
    assert all(rc == 0 for rc, _, _ in runs), runs
    assert runs[0][1] == runs[1][1]
    # The CLI's defaults are Gemma's recommended top_k 64 / top_p 0.95; same draw as the library,
    # and a different seed would have drawn something else.
    kw = dict(max_tokens=12, temperature=1.0, top_k=64, top_p=0.95)
    assert runs[0][1] == lm.generate("Hello world", seed=7, **kw) + "\n"
    assert lm.generate("Hello world", seed=8, **kw) != lm.generate("Hello world", seed=7, **kw)


def test_generate_tiny_temperature_acts_greedy(runs, lm):
    """A valid but tiny temperature must not crash the sampler (regression: inf/NaN probabilities)."""
    rc, out, err = runs["tiny_temperature"]
    assert "Traceback" not in err, err
    assert rc == 0, err
    assert out == lm.generate("Hello world", max_tokens=5) + "\n"


def test_tokenize_json(runs, lm):
    text = "Hello world, the cat sat"
    rc, out, err = runs["tokenize_json"]
    assert rc == 0, err
    d = json.loads(out)
    ids = lm.tokenizer.encode(text)
    assert d["ids"] == ids and ids[0] == lm.tokenizer.bos_id
    assert d["count"] == len(ids)
    assert d["pieces"] == [lm.tokenizer.id_to_piece(i) for i in ids]


def test_tokenize_plain(runs, lm):
    rc, out, err = runs["tokenize_plain"]
    assert rc == 0, err
    assert out == " ".join(map(str, lm.tokenizer.encode("the cat sat"))) + "\n"


def test_info(runs, gguf, model_dir):
    _, cfg, tensors = model_dir
    rc, out, err = runs["info_json"]
    assert rc == 0, err
    d = json.loads(out)
    assert d["architecture"] == "gemma3"
    assert d["format"] == "gguf"
    assert d["file_size_bytes"] == os.path.getsize(gguf)
    assert d["tensor_types"] == {"F32": len(tensors)}
    total = sum(t.numel() for t in tensors.values())
    emb = cfg.vocab_size * cfg.hidden_size
    assert d["parameters"] == {"total": total, "embedding": emb, "non_embedding": total - emb}
    assert d["config"]["num_hidden_layers"] == cfg.num_hidden_layers
    assert d["config"]["sliding_window"] == 8
    assert d["tokenizer"]["vocab_size"] == cfg.vocab_size

    rc, out, err = runs["info_plain"]
    assert rc == 0, err
    assert "architecture gemma3" in out
    assert f"F32 x{len(tensors)}" in out
    assert f"{os.path.getsize(gguf) / 2**20:.1f} MiB" in out
    assert f"{total / 1e6:.1f} M total" in out


def test_chat_reads_stdin_lines(runs, lm):
    rc, out, err = runs["chat"]
    assert rc == 0, err
    assert "Traceback" not in err
    assert "base (pretrained) model" in err
    assert "(conversation reset)" in err
    # After /reset the second turn is a fresh conversation.
    first = lm.chat([{"role": "user", "content": "hello"}], max_tokens=8)
    second = lm.chat([{"role": "user", "content": "hi"}], max_tokens=8)
    assert out == first + "\n" + second + "\n"


def _bad_files(gguf, d):
    """Model files that must be rejected: a text file, a GGUF cut in half, a GGUF cut inside its header."""
    data = gguf.read_bytes()
    (d / "notes.gguf").write_text("this is not a model\n" * 20)
    (d / "half.gguf").write_bytes(data[:len(data) // 2])
    (d / "head.gguf").write_bytes(data[:200])
    return d


ERROR_CASES = {
    # name: (argv with {gguf} / {dir} placeholders, argparse error?, text the message must contain)
    "missing_model": (["generate", "hi", "--model", "/nonexistent.gguf"], False, "/nonexistent.gguf"),
    "text_file_generate": (["generate", "hi", "--model", "{dir}/notes.gguf"], False, "notes.gguf"),
    "text_file_info": (["info", "--model", "{dir}/notes.gguf"], False, "notes.gguf"),
    "truncated_generate": (["generate", "hi", "--model", "{dir}/half.gguf"], False, "half.gguf"),
    "truncated_info": (["info", "--model", "{dir}/half.gguf"], False, "half.gguf"),
    "truncated_header_tokenize": (["tokenize", "hi", "--model", "{dir}/head.gguf"], False, "head.gguf"),
    "negative_temperature": (["generate", "hi", "--model", "{gguf}", "--temperature", "-1"], False, "temperature"),
    "zero_top_p": (["generate", "hi", "--model", "{gguf}", "--top-p", "0"], False, "top_p"),
    "negative_max_tokens": (["generate", "hi", "--model", "{gguf}", "--max-tokens", "-1"], False, "max_tokens"),
    "unknown_subcommand": (["frobnicate"], True, "frobnicate"),
    "bad_flag_type": (["generate", "hi", "--model", "{gguf}", "--max-tokens", "many"], True, "--max-tokens"),
}


@pytest.fixture(scope="module")
def error_runs(gguf, tmp_path_factory):
    """All error cases, run concurrently (each is mostly interpreter and torch start-up)."""
    d = _bad_files(gguf, tmp_path_factory.mktemp("bad"))
    return run_many({name: ([a.format(gguf=gguf, dir=d) for a in argv], None)
                     for name, (argv, _, _) in ERROR_CASES.items()})


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_line_without_traceback(error_runs, case):
    _, argparse_error, needle = ERROR_CASES[case]
    rc, out, err = error_runs[case]
    assert_one_line_error(rc, err, argparse_error)
    assert needle in err
    assert out == ""


@pytest.fixture(scope="module")
def default_lm():
    return tinygemma.load()


@pytest.mark.golden
def test_generate_default_model(default_lm):
    prompt = "The capital of France is"
    rc, out, err = run_cli("generate", prompt, "--temperature", "0", "--max-tokens", "8", threads=None, timeout=300)
    assert rc == 0, err
    assert "Traceback" not in err
    want = default_lm.generate(prompt, max_tokens=8)
    assert want.strip()
    assert out == want + "\n"
