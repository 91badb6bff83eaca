"""Golden tests: the real default weights against reference outputs of other implementations.

Reference files are copies from ../shared/reference (see tests/data/README.md).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tinygemma
from tinygemma.cache import make_cache
from tinygemma.errors import ContextLengthError
from tinygemma.generate import prefill

pytestmark = pytest.mark.golden

REF = Path(__file__).parent / "data" / "reference"
HF_LOGITS = json.loads((REF / "hf_logits.json").read_text())["prompts"]
HF_GREEDY = json.loads((REF / "hf_greedy.json").read_text())["prompts"]


@pytest.fixture(scope="module")
def lm():
    return tinygemma.load(dtype="float32")


def test_default_model_facts(lm):
    cfg = lm.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim, cfg.vocab_size) == (18, 640, 256, 262144)
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert cfg.sliding_window == 512 and cfg.max_position_embeddings == 32768
    assert lm.weights.tensor_types == {"F32": 109, "Q5_0": 81, "Q4_K": 27, "Q8_0": 10, "Q6_K": 9}
    assert not lm.is_instruction_tuned


@pytest.mark.parametrize("name", ["capital_fr", "once"])
def test_logits_match_float64_reference_everywhere(lm, name):
    ref = np.load(REF / f"numpy_f64_logits_allpos_{name}.npy")
    ids = HF_LOGITS[name]["ids"]
    assert lm.tokenizer.encode({"capital_fr": "The capital of France is", "once": "Once upon a time"}[name]) == ids
    got = lm.logits(ids).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3


@pytest.mark.parametrize("name", list(HF_LOGITS))
def test_every_position_matches_transformers(lm, name):
    """Nine prompts, 1 to 1,031 tokens (two beyond the 512-token window): argmax and max logit everywhere."""
    p = HF_LOGITS[name]
    logits = lm.logits(p["ids"])
    assert logits.argmax(-1).tolist() == p["argmax_per_position"]
    ref_max = torch.tensor(p["max_logit_per_position"])
    assert (logits.max(-1).values - ref_max).abs().max() <= 1e-3
    top = torch.topk(logits[-1], 20)
    assert top.indices[:5].tolist() == p["top"]["ids"][:5]


def test_bfloat16_argmax_agreement():
    lm16 = tinygemma.load(dtype="bfloat16")
    assert lm16.dtype == torch.bfloat16
    agree = total = 0
    for p in HF_LOGITS.values():
        pred = lm16.logits(p["ids"]).argmax(-1).tolist()
        agree += sum(a == b for a, b in zip(pred, p["argmax_per_position"]))
        total += len(pred)
    assert total > 1900
    assert agree / total >= 0.99, f"bfloat16 argmax agreement {agree}/{total}"


def test_greedy_continuations_match_transformers(lm):
    """64 greedy tokens with the KV cache, for 8 prompts, equal transformers' float32 continuations."""
    for name, p in HF_GREEDY.items():
        ref = p["fp32"]["ids"]
        got = [c.token for c in lm.stream_generate(p["prompt_ids"], max_tokens=64)
               if c.token is not None]
        stop = p["fp32"]["first_stop_index"]
        n = len(ref) if stop is None else stop
        assert got[:n] == ref[:n], name


def test_cached_decode_past_the_window_equals_full_forward(lm):
    """Chunked prefill of a 612-token prompt, then teacher-forced decode, equals one full forward pass."""
    ids = HF_LOGITS["p700_needle"]["ids"] + HF_GREEDY["once"]["fp32"]["ids"][:6]
    full = lm.logits(ids)
    n = len(HF_LOGITS["p700_needle"]["ids"])
    cache = make_cache(lm.config)
    with torch.inference_mode():
        last = prefill(lm.model, ids[:n], cache, chunk=200)
        torch.testing.assert_close(last, full[n - 1], atol=1e-3, rtol=0)
        for i in range(n, len(ids)):
            step = lm.model(torch.tensor([[ids[i]]]), cache=cache)[0, -1]
            torch.testing.assert_close(step, full[i], atol=1e-3, rtol=0)


def test_context_limit(lm):
    with pytest.raises(ContextLengthError, match="32768"):
        next(lm.stream_generate([2] * 32768, max_tokens=1))
    with pytest.raises(ContextLengthError, match="32768"):
        lm.logits([2] * 32769)


def test_generate_api(lm):
    text = lm.generate("The capital of France is", max_tokens=8)
    assert text == lm.tokenizer.decode(HF_GREEDY["capital_fr"]["fp32"]["ids"][:8])
    pieces = list(lm.stream("Once upon a time", max_tokens=12))
    assert len(pieces) > 1 and "".join(pieces) == lm.generate("Once upon a time", max_tokens=12)
    a = lm.generate("Once upon a time", max_tokens=12, temperature=1.0, top_k=64, top_p=0.95, seed=7)
    b = lm.generate("Once upon a time", max_tokens=12, temperature=1.0, top_k=64, top_p=0.95, seed=7)
    assert a == b
