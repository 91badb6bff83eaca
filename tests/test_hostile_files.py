"""Crafted weight files, built here, must each be refused with a one-line WeightsError, quickly and cheaply.

Every case is also run through the CLI (`python -m tinygemma info --model X`) in a child process, which must
exit 1 with one stderr line and no traceback. What is measured there: wall time and peak RSS (VmHWM, read in the
child as it exits) against a baseline child that imports the same modules and is refused at once (a text file
passed as GGUF). The case may cost at most 5 s more than the baseline and at most max(300 MB, 2x its file size)
more peak RSS: the issue's bound, taken above the ~250 MB that importing torch costs every process.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tinygemma import kernels
from tinygemma.errors import WeightsError
from tinygemma.export.gguf import save_gguf
from tinygemma.export.safetensors import save_hf_dir
from tinygemma.weights import load_weights

from tinymodels import random_tensors, tiny_config, tiny_tokenizer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS from /proc, FIFOs")

MB = 1 << 20
TIME_LIMIT = 5.0          # seconds beyond the baseline child
RSS_LIMIT = 300 * MB      # or twice the file size, whichever is larger, beyond the baseline child
ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------- raw GGUF writing

U8, I32, U32, F32, BOOL, STRING, ARRAY, U64, F64 = 0, 5, 4, 6, 7, 8, 9, 10, 12


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", vtype) + payload


def u32(key: str, value: int) -> bytes:
    return kv(key, U32, struct.pack("<I", value))


def string(key: str, value: str) -> bytes:
    return kv(key, STRING, _str(value))


def array(key: str, item_type: int, count: int, payload: bytes = b"") -> bytes:
    return kv(key, ARRAY, struct.pack("<IQ", item_type, count) + payload)


def header(n_kv: int, n_tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def gguf(path: Path, kvs: list[bytes], n_tensors: int = 0, tail: bytes = b"") -> Path:
    path.write_bytes(header(len(kvs), n_tensors) + b"".join(kvs) + tail)
    return path


def gemma3_keys(**sizes) -> list[bytes]:
    """The keys of a plausible gemma3 file (the tiny test model's sizes), any of them overridden."""
    values = {"block_count": 4, "embedding_length": 64, "feed_forward_length": 96, "attention.head_count": 4,
              "attention.head_count_kv": 2, "attention.key_length": 24, "attention.value_length": 24,
              "context_length": 256, "attention.sliding_window": 8, **sizes}
    return [string("general.architecture", "gemma3"), *(u32(f"gemma3.{k}", v) for k, v in values.items()),
            string("tokenizer.ggml.model", "llama")]


def short_strings(count: int, width: int) -> bytes:
    """`count` GGUF strings of `width` bytes each, built as one numpy buffer (a Python loop would take seconds)."""
    rec = np.zeros(count, dtype=[("n", "<u8"), ("s", f"S{width}")])
    rec["n"] = width
    rec["s"] = b"x" * width
    return rec.tobytes()


# ---------------------------------------------------------------------------------------- measuring


class Run:
    def __init__(self, rc: int, stderr: str, seconds: float, peak: int):
        self.rc, self.stderr, self.seconds, self.peak = rc, stderr, seconds, peak


# `python -m tinygemma ARGS`, which also writes its peak RSS (VmHWM) at exit to the file named first. Measured
# inside the child: ru_maxrss from wait4 would include the pytest process's own size, copied at fork.
LAUNCH = """
import atexit, runpy, sys
peak_file = sys.argv.pop(1)
def write_peak():
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(peak_file, "w") as f:
        f.write(str(kib * 1024))
atexit.register(write_peak)
sys.argv[0] = "tinygemma"
runpy.run_module("tinygemma", run_name="__main__", alter_sys=True)
"""


def run_cli(*args: str, timeout: float = 60.0) -> Run:
    """`python -m tinygemma ARGS` in a child: exit code, stderr, wall time and the child's own peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TINYGEMMA_KERNELS": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        peak, err = Path(tmp) / "peak", Path(tmp) / "stderr"
        start = time.perf_counter()
        with open(err, "wb") as err_file:
            proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(peak), *args], stdout=subprocess.DEVNULL,
                                    stderr=err_file, env=env, cwd=ROOT)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"tinygemma {' '.join(args)} still running after {timeout} s")
        seconds = time.perf_counter() - start
        return Run(rc, err.read_text(errors="replace"), seconds, int(peak.read_text()))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Run:
    """A child that imports what the others do and is refused at once: the cost every run pays anyway."""
    p = tmp_path_factory.mktemp("baseline") / "text.gguf"
    p.write_text("not a model\n" * 10)
    runs = [run_cli("info", "--model", str(p)) for _ in range(2)]
    assert all(r.rc == 1 for r in runs), runs[0].stderr
    return min(runs, key=lambda r: r.seconds)


def assert_refused(path: Path, baseline: Run | None, *words: str) -> None:
    """load_weights raises a one-line WeightsError naming `words`; with a baseline, so does the CLI (exit 1,
    one stderr line) within the time and memory bounds. Variants of a case skip the CLI (a child costs ~2 s):
    their time is checked in-process."""
    if baseline is not None:        # first: a regression that hangs (a FIFO) must not hang the suite
        _assert_cli_refuses(path, baseline, words)
    start = time.perf_counter()
    with pytest.raises(WeightsError) as e:
        load_weights(path)
    assert time.perf_counter() - start < TIME_LIMIT
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def _assert_cli_refuses(path: Path, baseline: Run, words) -> None:
    files = [f for f in path.iterdir() if f.is_file()] if path.is_dir() else [path]
    size = sum(f.stat().st_size for f in files)
    r = run_cli("info", "--model", str(path))
    lines = r.stderr.strip().splitlines()
    assert r.rc == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[0].startswith("tinygemma: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    extra_s, extra_rss = r.seconds - baseline.seconds, r.peak - baseline.peak
    print(f"\n{path.name}: {size / MB:.1f} MB file; {r.seconds:.2f} s (+{extra_s:.2f} s over the baseline "
          f"{baseline.seconds:.2f} s); peak RSS {r.peak / MB:.0f} MB (+{extra_rss / MB:.0f} MB over "
          f"{baseline.peak / MB:.0f} MB); {lines[0]}")
    assert extra_s < TIME_LIMIT, f"{extra_s:.1f} s"
    assert extra_rss <= max(RSS_LIMIT, 2 * size), f"{extra_rss / MB:.0f} MB"


# --------------------------------------------------------------------------------------------- GGUF


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    cfg = tiny_config()
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    save_gguf(path, cfg, random_tensors(cfg), tiny_tokenizer())
    return path


def patched(src: Path, dst: Path, key: bytes, value: bytes) -> Path:
    """A copy of src with the value after metadata key `key` (its 4-byte type, then the value) replaced."""
    data = bytearray(src.read_bytes())
    i = data.index(_str(key)) + len(_str(key)) + 4
    data[i:i + len(value)] = value
    dst.write_bytes(bytes(data))
    return dst


def test_block_count_0xffffffff(tiny_gguf, tmp_path, baseline):
    bad = patched(tiny_gguf, tmp_path / "blocks.gguf", b"gemma3.block_count", struct.pack("<I", 0xFFFFFFFF))
    assert_refused(bad, baseline, "gemma3.block_count", "4294967295")


@pytest.mark.parametrize("key", ["embedding_length", "feed_forward_length", "attention.head_count",
                                 "context_length", "attention.sliding_window"])
def test_implausible_sizes(tiny_gguf, tmp_path, key):
    bad = patched(tiny_gguf, tmp_path / f"{key}.gguf", f"gemma3.{key}".encode(), struct.pack("<I", 0xFFFFFFF0))
    assert_refused(bad, None, f"gemma3.{key}", "4294967280")


def test_huge_array_count(tmp_path, baseline):
    # Within the item limit but far beyond the bytes left, then far beyond the item limit.
    assert_refused(gguf(tmp_path / "count.gguf", [*gemma3_keys(), array("tokenizer.ggml.scores", F32, 1 << 20)]),
                   baseline, "tokenizer.ggml.scores", "truncated")
    assert_refused(gguf(tmp_path / "count2.gguf", [*gemma3_keys(), array("tokenizer.ggml.tokens", STRING, 1 << 62)]),
                   None, "tokenizer.ggml.tokens", "claims")


def test_huge_string_length(tmp_path, baseline):
    big = kv("general.name", STRING, struct.pack("<Q", 1 << 62))
    assert_refused(gguf(tmp_path / "string.gguf", [*gemma3_keys(), big]), baseline, "general.name", "claims")
    key = struct.pack("<Q", 1 << 40) + b"general.name"
    (tmp_path / "key.gguf").write_bytes(header(1) + key)
    assert_refused(tmp_path / "key.gguf", None, "metadata key #0", "claims")


def test_256_mb_of_metadata_arrays(tmp_path, baseline):
    """A gemma3 header, a 2^20-token vocabulary and ~250 MB of numeric and string arrays under other keys:
    walked without being decoded, refused at the tensor check. The old parser peaked at 5.6 GB here."""
    n = 1 << 20
    path = tmp_path / "arrays.gguf"
    kvs = [*gemma3_keys(), array("tokenizer.ggml.tokens", STRING, n, short_strings(n, 4)),
           array("tokenizer.ggml.scores", F32, n, np.zeros(n, "<f4").tobytes()),
           array("tokenizer.ggml.token_type", I32, n, np.ones(n, "<i4").tobytes())]
    kvs += [array(f"filler.f64.{i}", F64, n, np.full(n, 0.5).tobytes()) for i in range(24)]
    kvs += [array(f"filler.u8.{i}", U8, n, bytes(n)) for i in range(8)]
    kvs += [array(f"filler.str.{i}", STRING, n, short_strings(n, 8)) for i in range(2)]
    with open(path, "wb") as f:
        f.write(header(len(kvs)))
        for item in kvs:
            f.write(item)
    assert path.stat().st_size > 250 * MB
    del kvs
    assert_refused(path, baseline, "missing tensor token_embd.weight")


def test_many_metadata_strings(tmp_path, baseline):
    """As many array strings as the walk allows (2^22 in all): the slowest metadata to skip."""
    n = 1 << 20
    kvs = [*gemma3_keys(), *(array(f"filler.{i}", STRING, n, short_strings(n, 1)) for i in range(4))]
    assert_refused(gguf(tmp_path / "strings.gguf", kvs), baseline, "no tokenizer.ggml.tokens")
    kvs.append(array("filler.more", STRING, 1, short_strings(1, 1)))
    assert_refused(gguf(tmp_path / "strings2.gguf", kvs), None, "filler.more", "strings")


def test_wrong_architecture_is_checked_first(tmp_path, baseline):
    # After the architecture comes a value of unknown type: the architecture is what the error names.
    kvs = [string("general.architecture", "llama"), kv("llama.block_count", 77, b"\0" * 8),
           array("filler", F64, 1 << 20, np.zeros(1 << 20).tobytes())]
    assert_refused(gguf(tmp_path / "llama.gguf", kvs), baseline, "unsupported architecture 'llama'")
    kvs = [u32("gemma3.block_count", 4)]
    assert_refused(gguf(tmp_path / "none.gguf", kvs), None, "no general.architecture")


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.9])
def test_truncated_file(tiny_gguf, tmp_path, baseline, fraction):
    data = tiny_gguf.read_bytes()
    bad = tmp_path / f"cut{fraction}.gguf"
    bad.write_bytes(data[:int(len(data) * fraction)])
    assert_refused(bad, baseline if fraction == 0.3 else None, "truncated")


def tensor_info_at(data: bytes, name: str) -> int:
    """Offset of the tensor info of `name` (its name's length prefix)."""
    return data.index(_str(name))


def test_tensor_offset_beyond_the_file(tiny_gguf, tmp_path, baseline):
    data = bytearray(tiny_gguf.read_bytes())
    i = tensor_info_at(data, "blk.0.attn_q.weight") + len(_str("blk.0.attn_q.weight"))
    n_dims = struct.unpack_from("<I", data, i)[0]
    at = i + 4 + 8 * n_dims + 4
    data[at:at + 8] = struct.pack("<Q", 1 << 50)
    (tmp_path / "offset.gguf").write_bytes(bytes(data))
    assert_refused(tmp_path / "offset.gguf", baseline, "blk.0.attn_q.weight", "truncated")
    data[i + 4:i + 12] = struct.pack("<Q", 1 << 40)     # and a first dimension of 2^40
    data[at:at + 8] = struct.pack("<Q", 0)
    (tmp_path / "dims.gguf").write_bytes(bytes(data))
    assert_refused(tmp_path / "dims.gguf", None, "blk.0.attn_q.weight")


def test_fifo_as_model(tmp_path, baseline):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    assert_refused(fifo, baseline, "not a regular file")


# ------------------------------------------------------------------------------ Hugging Face folders


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    cfg = tiny_config()
    return save_hf_dir(tmp_path / "hf", cfg, random_tensors(cfg), tiny_tokenizer())


@pytest.mark.parametrize("value,words", [(1e9, ["num_hidden_layers", "1000000000"]),
                                         ("abc", ["num_hidden_layers", "'abc'"]),
                                         (-1, ["num_hidden_layers", "-1"]),
                                         (2.5, ["num_hidden_layers", "2.5"]),
                                         (True, ["num_hidden_layers", "True"])])
def test_config_json_num_hidden_layers(hf_dir, baseline, value, words):
    raw = json.loads((hf_dir / "config.json").read_text())
    raw["num_hidden_layers"] = value
    raw.pop("layer_types")
    raw["sliding_window_pattern"] = 6
    (hf_dir / "config.json").write_text(json.dumps(raw))
    assert_refused(hf_dir, baseline if value in (1e9, "abc", -1) else None, "config.json", *words)


@pytest.mark.parametrize("field,value", [("vocab_size", 1 << 40), ("hidden_size", "640"), ("rope_theta", "x"),
                                         ("rms_norm_eps", -1.0), ("head_dim", 0)])
def test_config_json_other_fields(hf_dir, field, value):
    raw = json.loads((hf_dir / "config.json").read_text())
    raw[field] = value
    (hf_dir / "config.json").write_text(json.dumps(raw))
    assert_refused(hf_dir, None, "config.json", field)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.model", "model.safetensors"])
def test_fifo_in_a_model_folder(hf_dir, baseline, name):
    (hf_dir / name).unlink()
    os.mkfifo(hf_dir / name)
    assert_refused(hf_dir, baseline, name, "not a regular file")


def write_index(folder: Path, shard: str) -> None:
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard for n in names}}))


def test_index_names_shards_outside_the_folder(hf_dir, tmp_path, baseline):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(hf_dir / "model.safetensors", outside)
    write_index(hf_dir, "../outside.safetensors")
    assert_refused(hf_dir, baseline, "../outside.safetensors", "outside the model folder")
    write_index(hf_dir, str(outside))
    assert_refused(hf_dir, baseline, str(outside), "not a file name inside the model folder")
    write_index(hf_dir, "/etc/passwd")
    assert_refused(hf_dir, None, "/etc/passwd")
    (hf_dir / "link.safetensors").symlink_to(outside)
    write_index(hf_dir, "link.safetensors")
    assert_refused(hf_dir, None, "link.safetensors", "outside the model folder")
    # Without an index, a *.safetensors link out of the folder is refused too.
    (hf_dir / "model.safetensors.index.json").unlink()
    assert_refused(hf_dir, None, "link.safetensors", "outside the model folder")


def test_index_inside_the_folder_still_loads(hf_dir):
    (hf_dir / "sub").mkdir()
    (hf_dir / "model.safetensors").rename(hf_dir / "sub" / "model.safetensors")
    from safetensors import safe_open
    with safe_open(str(hf_dir / "sub" / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    (hf_dir / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: "sub/model.safetensors" for n in names}}))
    assert load_weights(hf_dir, tensors=False).config == tiny_config()


# ------------------------------------------------------------------------------------- compiled kernels


@pytest.mark.skipif(not kernels._compilers(), reason="no C compiler")
def test_tampered_cached_kernel_is_rebuilt_not_loaded(tmp_path):
    path = kernels.BY_NAME["scalar"]
    so, threaded = kernels.build(path, tmp_path / "kernels")
    assert kernels.verified(so)
    # A shared object whose loading would leave a mark: what a tampered cache could run.
    marker = tmp_path / "evil-ran"
    evil = tmp_path / "evil.c"
    evil.write_text('#include <stdio.h>\n__attribute__((constructor)) static void evil(void) '
                    f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    subprocess.run([kernels._compilers()[0], "-shared", "-fPIC", "-o", str(so), str(evil)], check=True)
    evil_bytes = so.read_bytes()
    assert not kernels.verified(so)
    with pytest.raises(RuntimeError, match="SHA-256"):
        kernels.Q8(so, path, threaded)              # refused before ctypes opens it
    rebuilt, threaded = kernels.build(path, tmp_path / "kernels")
    assert rebuilt == so and so.read_bytes() != evil_bytes and kernels.verified(so)
    q = kernels.Q8(rebuilt, path, threaded)
    assert hasattr(q.lib, "tg_matmul_rows")
    # A cached object without its recorded hash (or a link in its place) is rebuilt too.
    (so.parent / (so.name + ".sha256")).unlink()
    assert not kernels.verified(so)
    assert kernels.verified(kernels.build(path, tmp_path / "kernels")[0])
    assert not marker.exists()


# --------------------------------------------------------------------------------- converted weights


def test_converted_weight_cache_written_atomically_and_checked(tmp_path):
    import torch

    from tinygemma import fast

    cache = tmp_path / "x.weights"
    buffers = {"a": torch.arange(10, dtype=torch.int8), "b": torch.ones(3, 4)}
    fast.save_buffers(cache, buffers)
    assert [p.name for p in tmp_path.iterdir()] == ["x.weights"]      # no temporary left behind
    back = fast.map_buffers(cache)
    assert all(torch.equal(back[k], v) for k, v in buffers.items())
    data = bytearray(cache.read_bytes())
    n = int.from_bytes(data[:8], "little")
    data[8:8 + n] = json.dumps([1, 2]).encode().ljust(n)              # a header of the wrong kind
    cache.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        fast.map_buffers(cache)
