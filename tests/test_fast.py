"""The fast path (int8 layers, int4 rescored head, int8 embedding, converted-weights cache) on tiny models."""

import math

import pytest
import torch

from tinygemma import fast
from tinygemma.export.gguf import save_gguf
from tinygemma.lm import LM, load
from tinygemma.cache import make_cache
from tinygemma.kernels import PATHS, _compilers, q8, runnable
from tinygemma.kernels import load as load_kernels
from tinygemma.quant import Int4Linear, Int8Embedding, Int8Linear, NativeInt8Linear, Q8Table, RescoredHead

from test_model import ids_for
from tinymodels import random_tensors, tiny_config, tiny_tokenizer


@pytest.mark.parametrize("rows", [1, 3, 7, 8, 40])
@pytest.mark.parametrize("k", [64, 40])
def test_int8_linear_close_to_float(rows, k):
    g = torch.Generator().manual_seed(rows)
    w, x = torch.randn(48, k, generator=g), torch.randn(rows, k, generator=g)
    lin = Int8Linear.from_float(w)
    ref = x @ w.T
    got = lin(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    # per-row int8 weights plus bfloat16 activations: ~1% of the output scale
    assert (got - ref).abs().max() <= 0.02 * ref.abs().max()
    deq = lin.dequantized().float()
    # half a quantization step, plus bfloat16 rounding of the dequantized value
    bound = w.abs().amax(1, keepdim=True) * (1 / 254 * 1.01 + 2 ** -8)
    assert ((deq - w).abs() <= bound).all()


def test_int4_linear_pads_rows_and_matches_its_dequantization():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(50, 64, generator=g), torch.randn(2, 64, generator=g)
    lin = Int4Linear.from_float(w)
    got = lin(x)
    assert got.shape == (2, 50)
    assert (got - x @ w.T).abs().max() <= 0.25 * (x @ w.T).abs().max()
    assert not Int4Linear.supports(40) and Int4Linear.supports(640)


def test_int8_embedding_reproduces_q8_0_exactly():
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    w = torch.randn(20, 64).numpy()
    q8 = torch.from_numpy(dequantize(quantize(w, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0))
    emb = Int8Embedding.from_float(q8)
    ids = torch.tensor([[3, 0, 19]])
    assert torch.equal(emb(ids), q8[ids])


def test_rescored_head_top_candidates_are_exact():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(400, 64, generator=g)
    exact_table = Int8Embedding.from_float(table)
    head = RescoredHead(Int4Linear.from_float(table), exact_table, k=16)
    x = torch.randn(5, 64, generator=g)
    exact = x @ exact_table(torch.arange(400)).T
    got = head(x)
    top = exact.topk(8, dim=-1).indices
    torch.testing.assert_close(got.gather(-1, top), exact.gather(-1, top), atol=1e-4, rtol=0)
    assert torch.equal(got.argmax(-1), exact.argmax(-1))


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config(tie_word_embeddings=False)
    tensors = random_tensors(cfg, seed=11)
    return cfg, tensors, LM.from_tensors(cfg, tensors, tiny_tokenizer())


# Widths every native kernel takes (multiples of 128), untied head.
NATIVE_SIZES = tiny_config(hidden_size=128, intermediate_size=128, head_dim=32, query_pre_attn_scalar=32.0,
                           tie_word_embeddings=False)
# The PyTorch path and every native build this CPU runs (the auto choice among them).
NATIVE = [p.name for p in PATHS if runnable(p)] if _compilers() else []
KERNELS = [None] + [load_kernels(name) for name in NATIVE]
KERNEL_IDS = ["torch"] + NATIVE


@pytest.mark.parametrize("kernels", KERNELS, ids=KERNEL_IDS)
def test_fast_model_close_to_exact(tiny, kernels):
    cfg, tensors, exact = tiny
    fast_lm = LM(fast.build_fast_model(cfg, tensors, kernels), exact.tokenizer)
    ids = ids_for(cfg, 30)
    a, b = exact.logits(ids), fast_lm.logits(ids)
    # A random model has near ties (top-2 margins down to 0.004 logits here): each flip costs 1/30.
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.85
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    # decode path (int8 kernel) and prefill path (bfloat16 GEMM) agree on greedy tokens here
    assert fast_lm.generate(ids[:5], max_tokens=10) == exact.generate(ids[:5], max_tokens=10)


@pytest.fixture(scope="module")
def trained():
    """A tiny model given 2 Adam steps on the text it is scored on: a random model predicts worse than
    uniform, where quantization noise only moves it toward uniform; a model that has learned something is
    a fair proxy of the real one."""
    cfg, tok = NATIVE_SIZES, tiny_tokenizer()
    text = "the cat sat on the mat. " * 60
    model = LM.from_tensors(cfg, random_tensors(cfg, seed=11), tok).model
    ids = torch.tensor([tok.encode(text)[:256]]).reshape(4, 64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        logits = model(ids)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return cfg, tensors, LM.from_tensors(cfg, tensors, tok), text


@pytest.mark.parametrize("kernels", KERNELS, ids=KERNEL_IDS)
def test_fast_perplexity_within_one_percent_of_float32(trained, kernels):
    """The quality guard of the fast path, on a tiny model: same perplexity method as the real one."""
    from tinygemma.eval.perplexity import perplexity

    cfg, tensors, exact, text = trained
    fast_lm = LM(fast.build_fast_model(cfg, tensors, kernels), exact.tokenizer)
    a = perplexity(exact, text, ctx=64)
    b = perplexity(fast_lm, text, ctx=64)
    assert a.chunks == b.chunks >= 3 and a.tokens_scored == b.tokens_scored
    assert 1.5 < a.ppl < 20 and abs(b.ppl / a.ppl - 1) < 0.01


def test_cache_file_round_trip_and_default_load(tiny, tmp_path, monkeypatch):
    cfg, tensors, exact = tiny
    monkeypatch.setenv("TINYGEMMA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    save_gguf(path, cfg, tensors, exact.tokenizer)
    first = load(path)                                   # the default: converts and writes the cache
    files = list((tmp_path / "cache" / "fast").glob("*.weights"))
    assert len(files) == 1
    second = load(path)                                  # maps the cache
    mapped = fast.map_buffers(files[0])
    assert mapped and all(t.data_ptr() % fast.ALIGN == 0 for t in mapped.values() if t.numel())
    assert isinstance(second.model.layers[0].mlp.gate_up_proj, Int8Linear if q8() is None else NativeInt8Linear)
    assert isinstance(second.model.layers[0].mlp.down_proj, Int8Linear)        # width 96: the torch kernel
    assert isinstance(second.model.embed_tokens, Int8Embedding if q8() is None else Q8Table)
    ids = ids_for(cfg, 12)
    torch.testing.assert_close(first.logits(ids), second.logits(ids), atol=0, rtol=0)
    # a damaged cache is rebuilt, not trusted
    files[0].write_bytes(b"garbage")
    third = load(path)
    torch.testing.assert_close(third.logits(ids), first.logits(ids), atol=0, rtol=0)
    # the exact path is still there
    assert load(path, dtype="float32").model.layers[0].mlp.up_proj.weight.dtype == torch.float32


def test_shapes_the_kernels_do_not_take_fall_back():
    """hidden 48 (not a multiple of the int4 group) -> int8 output projection; widths 40 (not a multiple of
    16, which the int8 kernel needs) -> bfloat16 GEMMs. Results stay close to the exact model."""
    cfg = tiny_config(hidden_size=48, intermediate_size=40, head_dim=10, query_pre_attn_scalar=10.0)
    tensors = random_tensors(cfg, seed=5)
    exact = LM.from_tensors(cfg, tensors, tiny_tokenizer())
    model = fast.build_fast_model(cfg, tensors)
    assert isinstance(model.lm_head.approx, Int8Linear)
    ids = ids_for(cfg, 16)
    a, b = exact.logits(ids), LM(model, exact.tokenizer).logits(ids)
    assert torch.isfinite(b).all()
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.8


@pytest.mark.parametrize("name", NATIVE)
def test_native_model_decode_steps_and_batches_agree(name):
    """All projections native, on each build: cached one-token steps give the same greedy tokens
    as full passes, and a sequence's logits do not depend on what else is in the batch."""
    cfg = NATIVE_SIZES
    tensors = random_tensors(cfg, seed=21)
    exact = LM.from_tensors(cfg, tensors, tiny_tokenizer())
    model = fast.build_fast_model(cfg, tensors, load_kernels(name))
    assert not any(isinstance(m, Int8Linear) for m in model.modules())
    assert isinstance(model.embed_tokens, Q8Table)
    ids = torch.tensor([ids_for(cfg, 24)])
    with torch.inference_mode():
        full = model(ids)[0]
        cache = make_cache(cfg, 1, model.dtype, 4)
        steps = [model(ids[:, :12], cache=cache)[0, -1]]
        steps += [model(ids[:, i:i + 1], cache=cache)[0, -1] for i in range(12, 24)]
        steps = torch.stack(steps[:-1])
        assert torch.equal(steps.argmax(-1), full[11:23].argmax(-1))
        assert (steps - full[11:23]).abs().max() < 0.05 * full.abs().max()
        # the same 3 prompts decoded together or one by one: identical logits, bit for bit
        prompts = torch.tensor([ids_for(cfg, 10, seed=s) for s in range(3)])
        batch_cache = make_cache(cfg, 3, model.dtype, 16)
        together = [model(prompts, cache=batch_cache)[:, -1]]
        together += [model(prompts[:, :1], cache=batch_cache)[:, -1] for _ in range(3)]
        for row in range(3):
            one_cache = make_cache(cfg, 1, model.dtype, 16)
            alone = [model(prompts[row:row + 1], cache=one_cache)[0, -1]]
            alone += [model(prompts[row:row + 1, :1], cache=one_cache)[0, -1] for _ in range(3)]
            for a, t in zip(alone, together):
                assert torch.equal(a, t[row])


@pytest.mark.parametrize("forced,dtype", [("0", torch.float32), ("1", torch.bfloat16)])
def test_fallback_activations_in_float32_or_bfloat16(monkeypatch, forced, dtype):
    """The PyTorch fallback computes in bfloat16 only where the CPU has it natively (TINYGEMMA_BF16 forces
    either): both give the same products to bfloat16 precision, decode- and prefill-sized."""
    monkeypatch.setenv("TINYGEMMA_BF16", forced)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(96, 128, generator=g)
    lin, head = Int8Linear.from_float(w), Int4Linear.from_float(w)
    assert lin.scales.dtype == dtype and head.scales_zeros.dtype == dtype
    for rows in (1, 16):
        x = torch.randn(rows, 128, generator=g)
        ref = x @ lin.dequantized().float().T
        got = lin(x)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=0.02, atol=0.02 * ref.abs().max().item())
        ref4 = x @ w.T
        torch.testing.assert_close(head(x), ref4, rtol=0.1, atol=0.1 * ref4.abs().max().item())


@pytest.mark.parametrize("name", NATIVE)
def test_fused_decode_step_equals_the_module_path_bit_for_bit(name):
    """The one-call decode step (kernels/decode.c) against the same model run module by module: identical
    logits and caches, for a single stream and for separate sequences (RowCaches), past the sliding window."""
    from tinygemma.cache import RowCaches

    cfg = NATIVE_SIZES
    model = fast.build_fast_model(cfg, random_tensors(cfg, seed=5), load_kernels(name))
    assert all(layer.decode is not None for layer in model.layers)
    fused_calls = []
    kernels = model.layers[0].decode[0]
    original = kernels.decode_layer

    def counting(*args, **kw):
        fused_calls.append(1)
        return original(*args, **kw)

    def run(fused: bool, prompts: list[list[int]], steps: int) -> list[torch.Tensor]:
        for layer, d in zip(model.layers, saved):
            layer.decode = d if fused else None
        caches = [make_cache(cfg, 1, model.dtype, 4) for _ in prompts]
        out = [torch.cat([model(torch.tensor([p]), cache=c, last_only=True)[0] for p, c in zip(prompts, caches)])]
        tokens = out[-1].argmax(-1)
        for _ in range(steps):
            if len(prompts) == 1:
                logits = model(tokens[:, None], cache=caches[0])[:, -1]
            else:
                pos = torch.tensor([[c[0].offset] for c in caches])
                logits = model(tokens[:, None], pos, RowCaches(caches))[:, -1]
            out.append(logits)
            tokens = logits.argmax(-1)
        return out + [c.k for row in caches for c in row]

    saved = [layer.decode for layer in model.layers]
    with torch.inference_mode():
        for prompts in ([ids_for(cfg, 5)], [ids_for(cfg, n, seed=n) for n in (3, 9, 14)]):
            kernels.decode_layer = counting
            fused = run(True, prompts, cfg.sliding_window + 4)
            kernels.decode_layer = original
            assert fused_calls, "the fused step did not run"
            fused_calls.clear()
            plain = run(False, prompts, cfg.sliding_window + 4)
            assert len(fused) == len(plain)
            for a, b in zip(fused, plain):
                assert torch.equal(a, b)
