"""Loading GGUF files and Hugging Face directories: round trips across tensor types and configs, strict errors."""

import json
import shutil
import struct
import tracemalloc

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize

from tinygemma.errors import WeightsError
from tinygemma.export.gguf import save_gguf
from tinygemma.export.safetensors import save_hf_dir
from tinygemma.lm import LM, load
from tinygemma.weights import load_weights
from tinygemma.weights.gguf import GGUFFile
from tinygemma.weights.names import tensor_table

from test_model import CONFIGS, ids_for
from tinymodels import random_kquant, random_tensors, tiny_config, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config()
    return cfg, random_tensors(cfg, seed=7), tiny_tokenizer()


@pytest.fixture
def tiny_gguf(tiny, tmp_path):
    cfg, tensors, tok = tiny
    path = tmp_path / "tiny.gguf"
    save_gguf(path, cfg, tensors, tok)
    return path


def test_gguf_round_trip_is_exact(tiny, tiny_gguf):
    cfg, tensors, tok = tiny
    w = load_weights(tiny_gguf)
    assert w.config == cfg
    assert w.format == "gguf" and w.tensor_types == {"F32": len(tensors)}
    assert w.tokenizer.encode("Hello world") == tok.encode("Hello world")
    for name, t in tensors.items():
        # Norm gains are stored as 1 + w in float32, which rounds w to a multiple of ulp(1) / 2.
        tol = 2 ** -23 if t.ndim == 1 else 0.0
        torch.testing.assert_close(w.tensors[name], t, atol=tol, rtol=0, msg=name)


@pytest.mark.parametrize("ttype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_gguf_tensor_types(tiny, tmp_path, ttype):
    cfg, tensors, tok = tiny
    path = tmp_path / f"tiny-{ttype}.gguf"
    save_gguf(path, cfg, tensors, tok, tensor_type=ttype)
    w = load_weights(path)
    assert w.tensor_types[ttype] == sum(t.ndim == 2 for t in tensors.values())
    qtype = GGMLQuantizationType[ttype]
    for name, t in tensors.items():
        arr = t.numpy()
        if t.ndim == 2:
            stored = arr.astype(np.float16) if ttype == "F16" else quantize(arr, qtype)
            arr = stored.astype(np.float32) if ttype == "F16" else dequantize(stored, qtype)
        torch.testing.assert_close(w.tensors[name], torch.from_numpy(np.asarray(arr, np.float32)).reshape(t.shape),
                                   atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("ttype", ["Q4_K", "Q5_K", "Q6_K"])
def test_gguf_k_quants(tmp_path, ttype):
    cfg = tiny_config(hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=1,
                      head_dim=64, query_pre_attn_scalar=64.0)
    tensors = random_tensors(cfg)
    raw, expected = {}, dict(tensors)
    for i, (name, t) in enumerate(tensors.items()):
        if t.ndim == 2:
            data, deq = random_kquant(tuple(t.shape), ttype, seed=i)
            raw[name] = (data, GGMLQuantizationType[ttype])
            expected[name] = torch.from_numpy(deq)
    path = tmp_path / "k.gguf"
    save_gguf(path, cfg, tensors, tiny_tokenizer(), raw=raw)
    lm = load(path, dtype="float32")
    ref = LM.from_tensors(cfg, expected, tiny_tokenizer())
    ids = ids_for(cfg, 12)
    torch.testing.assert_close(lm.logits(ids), ref.logits(ids), atol=1e-5, rtol=0)
    assert lm.weights.tensor_types[ttype] == len(raw)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gguf_vs_safetensors_vs_memory(tmp_path, name):
    """Configs vary layer count, widths, heads, window, layer pattern: all three sources agree."""
    cfg = tiny_config(**CONFIGS[name])
    tensors, tok = random_tensors(cfg, seed=3), tiny_tokenizer()
    save_gguf(tmp_path / "m.gguf", cfg, tensors, tok)
    save_hf_dir(tmp_path / "hf", cfg, tensors, tok)
    from_gguf, from_hf = load(tmp_path / "m.gguf", dtype="float32"), load(tmp_path / "hf", dtype="float32")
    memory = LM.from_tensors(cfg, tensors, tok)
    assert from_gguf.config == cfg and from_hf.config == cfg
    ids = ids_for(cfg, 20)
    ref = memory.logits(ids)
    torch.testing.assert_close(from_gguf.logits(ids), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_hf.logits(ids), ref, atol=1e-5, rtol=0)
    assert from_hf.tokenizer.encode("Hello, the cat sat.") == tok.encode("Hello, the cat sat.")


def test_safetensors_bfloat16_and_sharded(tiny, tmp_path):
    cfg, tensors, tok = tiny
    d = save_hf_dir(tmp_path / "hf", cfg, tensors, tok, dtype=torch.bfloat16)
    w = load_weights(d)
    assert w.tensor_types == {"BF16": len(tensors)}          # as stored; loaded as float32 copies
    torch.testing.assert_close(w.tensors["layers.0.mlp.up_proj.weight"],
                               tensors["layers.0.mlp.up_proj.weight"].bfloat16().float())
    # Split into two shards with an index, as large checkpoints are.
    from safetensors.torch import load_file, save_file
    full = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    names = sorted(full)
    half = len(names) // 2
    save_file({k: full[k] for k in names[:half]}, str(d / "model-00001-of-00002.safetensors"))
    save_file({k: full[k] for k in names[half:]}, str(d / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {k: f"model-0000{1 + (i >= half)}-of-00002.safetensors" for i, k in enumerate(names)}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert set(load_weights(d).tensors) == set(tensors)


def test_hf_config_json_variants(tiny, tmp_path):
    """transformers >= 5 writes rope_parameters; multimodal checkpoints nest text_config."""
    cfg, tensors, tok = tiny
    d = save_hf_dir(tmp_path / "hf", cfg, tensors, tok)
    raw = json.loads((d / "config.json").read_text())
    raw["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": raw.pop("rope_theta")},
                              "sliding_attention": {"rope_type": "default",
                                                    "rope_theta": raw.pop("rope_local_base_freq")}}
    (d / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": raw}))
    assert load_weights(d).config == cfg


# ---------------------------------------------------------------------------------------------- errors


def rewrite_gguf(src, dst, arch="gemma3", drop=(), add=None, replace=None, meta=None, raw=None):
    """Copy a GGUF through GGUFWriter, changing tensors or metadata along the way."""
    gf = GGUFFile(src)
    w = GGUFWriter(str(dst), arch)
    for key, value in {**gf.metadata, **(meta or {})}.items():
        if key in ("general.architecture", "GGUF.version") or value is None:
            continue
        if isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_string(key, value)
    for name in gf.tensors:
        if name in drop:
            continue
        arr = (replace or {}).get(name, gf.load(name))
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    for name, arr in (add or {}).items():
        w.add_tensor(name, arr)
    for name, (data, qtype) in (raw or {}).items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def assert_one_line_error(path, *words):
    with pytest.raises(WeightsError) as e:
        load_weights(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for word in words:
        assert word in msg, msg
    return msg


def test_missing_tensor(tiny_gguf, tmp_path):
    bad = rewrite_gguf(tiny_gguf, tmp_path / "bad.gguf", drop={"blk.1.attn_k.weight"})
    assert_one_line_error(bad, "missing tensor blk.1.attn_k.weight")


def test_extra_tensor(tiny_gguf, tmp_path):
    bad = rewrite_gguf(tiny_gguf, tmp_path / "bad.gguf", add={"blk.9.attn_k.weight": np.zeros((4, 32), np.float32)})
    assert_one_line_error(bad, "unexpected tensor blk.9.attn_k.weight")


def test_wrong_shape(tiny_gguf, tmp_path):
    bad = rewrite_gguf(tiny_gguf, tmp_path / "bad.gguf", replace={"blk.0.ffn_up.weight": np.zeros((64, 64), np.float32)})
    assert_one_line_error(bad, "blk.0.ffn_up.weight", "shape [64, 64]", "expected [96, 64]")


def test_wrong_architecture(tiny_gguf, tmp_path):
    bad = rewrite_gguf(tiny_gguf, tmp_path / "bad.gguf", arch="llama")
    assert_one_line_error(bad, "unsupported architecture 'llama'")


def test_missing_metadata_key(tiny_gguf, tmp_path):
    bad = rewrite_gguf(tiny_gguf, tmp_path / "bad.gguf", meta={"gemma3.feed_forward_length": None})
    assert_one_line_error(bad, "missing metadata key gemma3.feed_forward_length")


def test_unsupported_tensor_type(tiny_gguf, tmp_path):
    data = np.zeros((64, 84), np.uint8)     # 64 rows of one Q2_K block (256 values, 84 bytes)
    bad = rewrite_gguf(tiny_gguf, tmp_path / "bad.gguf", raw={"extra.weight": (data, GGMLQuantizationType.Q2_K)})
    assert_one_line_error(bad, "extra.weight", "unsupported tensor type Q2_K")


def test_not_gguf(tmp_path):
    p = tmp_path / "notes.gguf"
    p.write_text("this is a text file, not a model\n" * 10)
    assert_one_line_error(p, "not a GGUF file")
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert_one_line_error(tmp_path / "empty.gguf", "not a GGUF file")


def test_missing_path(tmp_path):
    assert_one_line_error(tmp_path / "nope.gguf", "no such file")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_gguf(tiny_gguf, tmp_path, fraction):
    data = tiny_gguf.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: int(len(data) * fraction)])
    assert_one_line_error(bad, "truncated")


@pytest.mark.parametrize("offset,what", [(8, "absurd header counts"), (16, "absurd header counts"),
                                         (24, "claims")])
def test_absurd_counts_fail_fast_without_allocating(tiny_gguf, tmp_path, offset, what):
    data = bytearray(tiny_gguf.read_bytes())
    data[offset:offset + 8] = struct.pack("<Q", 1 << 60)
    bad = tmp_path / "absurd.gguf"
    bad.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        assert_one_line_error(bad, what)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_absurd_array_length(tmp_path):
    w = GGUFWriter(str(tmp_path / "a.gguf"), "gemma3")
    w.add_array("tokenizer.ggml.scores", [0.5] * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    data = bytearray((tmp_path / "a.gguf").read_bytes())
    i = data.index(b"tokenizer.ggml.scores") + len("tokenizer.ggml.scores") + 8   # value type + item type
    data[i:i + 8] = struct.pack("<Q", 1 << 40)
    (tmp_path / "a.gguf").write_bytes(bytes(data))
    assert_one_line_error(tmp_path / "a.gguf", "tokenizer.ggml.scores", "claims")


def test_bad_version_and_value_type(tiny_gguf, tmp_path):
    data = bytearray(tiny_gguf.read_bytes())
    data[4:8] = struct.pack("<I", 99)
    (tmp_path / "v.gguf").write_bytes(bytes(data))
    assert_one_line_error(tmp_path / "v.gguf", "unsupported GGUF version 99")
    data = bytearray(tiny_gguf.read_bytes())
    key_len = struct.unpack("<Q", data[24:32])[0]
    data[32 + key_len:36 + key_len] = struct.pack("<I", 77)
    (tmp_path / "t.gguf").write_bytes(bytes(data))
    assert_one_line_error(tmp_path / "t.gguf", "unknown value type 77")


def test_tokenizer_metadata_mismatch(tiny_gguf, tmp_path):
    gf = GGUFFile(tiny_gguf)
    scores = gf.metadata["tokenizer.ggml.scores"][:-1]
    bad = rewrite_gguf(tiny_gguf, tmp_path / "bad.gguf", meta={"tokenizer.ggml.scores": scores})
    assert_one_line_error(bad, "tokenizer")


def test_hf_dir_errors(tiny, tmp_path):
    cfg, tensors, tok = tiny
    d = save_hf_dir(tmp_path / "hf", cfg, tensors, tok)
    assert_one_line_error(tmp_path, "no config.json")
    # missing and mis-shaped tensors
    from safetensors.torch import load_file, save_file
    full = load_file(str(d / "model.safetensors"))
    save_file({k: v for k, v in full.items() if k != "model.layers.2.self_attn.o_proj.weight"},
              str(d / "model.safetensors"))
    assert_one_line_error(d, "missing tensor model.layers.2.self_attn.o_proj.weight")
    save_file({**full, "model.layers.0.mlp.up_proj.weight": torch.zeros(3, 3)}, str(d / "model.safetensors"))
    assert_one_line_error(d, "model.layers.0.mlp.up_proj.weight", "shape [3, 3]")
    save_file({**full, "model.layers.0.mlp.extra.weight": torch.zeros(3)}, str(d / "model.safetensors"))
    assert_one_line_error(d, "unexpected tensor model.layers.0.mlp.extra.weight")
    # truncated safetensors
    save_file(full, str(d / "model.safetensors"))
    blob = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    assert_one_line_error(d, "model.safetensors")
    # wrong model type, broken JSON, no tokenizer
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert_one_line_error(d, "unsupported model_type 'llama'")
    (d / "config.json").write_text("{not json")
    assert_one_line_error(d, "not valid JSON")
    (d / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    (d / "tokenizer.model").unlink()
    assert_one_line_error(d, "no tokenizer.json or tokenizer.model")


def test_table_covers_every_parameter(tiny):
    cfg, tensors, _ = tiny
    ours = {row[0] for row in tensor_table(cfg.num_hidden_layers)}
    assert ours == set(tensors)


def test_instruction_tuned_files_load_through_the_same_path(tiny, tmp_path):
    """Instruction-tuned weights are not installable here: files named like them stand in (GGUF and HF dir)."""
    from test_tokenizer import _hf_tokenizer_json

    cfg, tensors, tok = tiny
    save_gguf(tmp_path / "it.gguf", cfg, tensors, tok, name="Gemma 3 270m It")
    d = save_hf_dir(tmp_path / "gemma-3-270m-it", cfg, tensors, tok)
    (d / "tokenizer.model").unlink()    # as downloaded from the Hub: tokenizer.json only
    (d / "tokenizer.json").write_text(json.dumps(_hf_tokenizer_json(tok.pieces, tok.scores, tok.token_types)))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    replies = []
    for path in (tmp_path / "it.gguf", d):
        lm = load(path)
        assert lm.is_instruction_tuned
        assert lm.tokenizer.encode_chat(messages) == tok.encode_chat(messages)
        chunks = list(lm.chat_stream(messages, max_tokens=5))
        assert chunks[-1].finish_reason in ("stop", "length")
        replies.append("".join(c.text for c in chunks))
    assert replies[0] == replies[1]
    assert not LM.from_tensors(cfg, tensors, tok).is_instruction_tuned
