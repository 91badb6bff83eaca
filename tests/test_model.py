"""Model equivalence oracles on tiny random configs: float64 reference, cache vs no cache, batch vs single."""

import numpy as np
import pytest
import torch

from tinygemma.cache import make_cache
from tinygemma.config import FULL, SLIDING
from tinygemma.generate import prefill
from tinygemma.lm import LM
from tinygemma.model import Gemma3Model

from reference_forward import reference_logits
from tinymodels import random_tensors, tiny_config, tiny_tokenizer, with_config

CONFIGS = {
    "default": {},
    "one_layer_full": dict(num_hidden_layers=1, layer_types=(FULL,)),
    "mqa_wide_heads": dict(num_attention_heads=2, num_key_value_heads=1, head_dim=48, query_pre_attn_scalar=48.0),
    "mha": dict(num_key_value_heads=4),
    "window3_pattern": dict(num_hidden_layers=6, sliding_window=3,
                            layer_types=(SLIDING, FULL, SLIDING, SLIDING, FULL, SLIDING)),
    "rope_scaled_softcap": dict(rope_scaling_factor=8.0, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                                query_pre_attn_scalar=16.0),
    "untied": dict(tie_word_embeddings=False),
}


def build(name="default", seed=0, dtype=torch.float32):
    cfg = tiny_config(**CONFIGS[name])
    tensors = random_tensors(cfg, seed)
    return LM.from_tensors(cfg, tensors, tiny_tokenizer(), dtype), tensors


def ids_for(cfg, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [cfg.bos_token_id] + torch.randint(3, cfg.vocab_size, (n - 1,), generator=g).tolist()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_float64_reference(name):
    lm, tensors = build(name)
    ids = ids_for(lm.config, 21)   # several windows long
    ref = reference_logits(lm.config, tensors, ids)
    got = lm.logits(ids).double().numpy()
    assert got.shape == (21, lm.config.vocab_size)
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=0)


def test_window_changes_result():
    """The oracle is sensitive: a different window gives different logits past the window."""
    lm, tensors = build()
    ids = ids_for(lm.config, 20)
    other = reference_logits(with_config(lm.config, sliding_window=16), tensors, ids)
    got = lm.logits(ids).double().numpy()
    assert np.abs(got[:8] - other[:8]).max() < 2e-4          # inside the window: identical
    assert np.abs(got[10:] - other[10:]).max() > 1e-2         # beyond it: different


@pytest.mark.parametrize("name", ["default", "window3_pattern"])
@pytest.mark.parametrize("chunk", [1, 3, 8, 13, 64])
def test_cache_equals_full_recompute(name, chunk):
    """Chunked prefill then one-token decode, far past the window, equals a full forward pass."""
    lm, _ = build(name)
    cfg = lm.config
    ids = ids_for(cfg, 40)
    full = lm.logits(ids)
    cache = make_cache(cfg, capacity=4)   # small capacity also exercises growth of the full cache
    with torch.inference_mode():
        last = prefill(lm.model, ids[:27], cache, chunk)
        torch.testing.assert_close(last, full[26], atol=1e-5, rtol=0)
        for i in range(27, 40):
            step = lm.model(torch.tensor([[ids[i]]]), cache=cache)[0, -1]
            torch.testing.assert_close(step, full[i], atol=1e-5, rtol=0)
    assert cache[0].offset == 40


def test_batch_with_left_padding_equals_single():
    lm, _ = build("window3_pattern")
    cfg = lm.config
    a, b = ids_for(cfg, 17, seed=2), ids_for(cfg, 11, seed=3)
    pad = len(a) - len(b)
    ids = torch.tensor([a, [0] * pad + b])
    pos = torch.tensor([list(range(len(a))), [-1] * pad + list(range(len(b)))])
    with torch.inference_mode():
        cache = make_cache(cfg, batch=2)
        out = lm.model(ids, positions=pos, cache=cache)
        step = lm.model(torch.tensor([[5], [7]]), positions=torch.tensor([[len(a)], [len(b)]]), cache=cache)
    torch.testing.assert_close(out[0], lm.logits(a), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, pad:], lm.logits(b), atol=1e-5, rtol=0)
    torch.testing.assert_close(step[0, 0], lm.logits(a + [5])[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(step[1, 0], lm.logits(b + [7])[-1], atol=1e-5, rtol=0)
    assert torch.isfinite(out).all()


def test_bfloat16_close_to_float32():
    lm32, tensors = build()
    lm16 = LM.from_tensors(lm32.config, tensors, lm32.tokenizer, torch.bfloat16)
    ids = ids_for(lm32.config, 30)
    a, b = lm32.logits(ids), lm16.logits(ids)
    assert lm16.dtype == torch.bfloat16 and b.dtype == torch.float32
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    assert (a - b).abs().max() < 0.5


def test_norm_uses_one_plus_weight_in_float32():
    from tinygemma.model import RMSNorm

    norm = RMSNorm(4, 1e-6)
    norm.weight.data = torch.tensor([0.0, 1.0, -1.0, 0.5])
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    rms = (x.pow(2).mean() + 1e-6).sqrt()
    torch.testing.assert_close(norm(x), x / rms * torch.tensor([1.0, 2.0, 0.0, 1.5]))
    assert norm(x.bfloat16()).dtype == torch.float32   # the residual stream stays float32


def test_model_has_no_float16_and_meta_init_is_cheap():
    cfg = tiny_config()
    with torch.device("meta"):
        m = Gemma3Model(cfg)
    assert all(p.is_meta for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) == cfg.num_parameters


@pytest.mark.parametrize("n,window", [(300, None), (300, 64), (700, 512), (5, 3)])
def test_causal_attention_matches_masked_sdpa(n, window):
    from tinygemma.model import attention_mask, causal_attention

    g = torch.Generator().manual_seed(n)
    q = torch.randn(2, 4, n, 32, generator=g)
    k, v = torch.randn(2, 2, n, 32, generator=g), torch.randn(2, 2, n, 32, generator=g)
    pos = torch.arange(n).expand(2, -1)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(pos, pos, window),
                                                           scale=0.2, enable_gqa=True)
    torch.testing.assert_close(causal_attention(q, k, v, window, 0.2), ref, atol=1e-5, rtol=1e-5)
