"""The native int8 kernels (tinygemma/kernels/*.c), every build this CPU runs, against plain PyTorch references
and against the portable scalar C build (q8_ref.c)."""

import pytest
import torch
import torch.nn.functional as F

from tinygemma import kernels as native
from tinygemma.kernels import BLOCK, PATHS, pack_q8_0, pack_rows, unpack
from tinygemma.model import attention_mask

RUNNABLE = [p.name for p in PATHS if native.runnable(p)]
pytestmark = pytest.mark.skipif(not native._compilers(), reason="needs a C compiler")


@pytest.fixture(params=RUNNABLE)
def kernels(request):
    return native.load(request.param)


@pytest.fixture(scope="module")
def ref():
    return native.load("scalar")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def dequantized_input(xq: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """What matmul_q8_0 sees of x: (q - 128) times its block's scale (lanes 0-7 / 8-15 of a chunk)."""
    m, k = xq.shape
    block_scales = xs.reshape(m, k // 64, 2, 8)[..., 0].reshape(m, k // 32, 1)
    return ((xq.double() - 128).reshape(m, k // 32, 32) * block_scales).reshape(m, k)


def dequantized_rows(xq: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """What matmul_rows sees of x: q times its 128-value block's scale."""
    m, k = xq.shape
    return (xq.double().reshape(m, k // BLOCK, BLOCK) * xs.double()[..., None]).reshape(m, k)


def within_half_step(x: torch.Tensor, back: torch.Tensor, block: int) -> bool:
    m, k = x.shape
    step = x.reshape(m, k // block, block).abs().amax(-1, keepdim=True).double() / 127
    return bool(((back - x.double()).reshape(m, k // block, block).abs() <= step * 0.5001 + 1e-12).all())


@pytest.mark.parametrize("m,k", [(1, 128), (3, 640), (17, 256)])
def test_quantize_formats(kernels, m, k):
    g = torch.Generator().manual_seed(m * k)
    x = torch.randn(m, k, generator=g) * torch.logspace(-2, 2, k)     # widely varying magnitudes across blocks
    xq, xs = kernels.quantize(x)                          # Q8_0-like, for the output projection
    assert within_half_step(x, dequantized_input(xq, xs), 32)
    assert xq.min() >= 1 and xq.max() <= 255              # +-127 around the offset 128
    rq, rs, rc = kernels.quantize_rows(x)                 # per 128 values, for the layers
    assert within_half_step(x, dequantized_rows(rq, rs), BLOCK)
    assert rq.min() >= -127
    comp = 128 * (rq.double().reshape(m, -1, BLOCK).sum(-1) * rs.double()).sum(-1)     # summed in float32 in C
    torch.testing.assert_close(rc.double(), comp, rtol=1e-5, atol=1e-5 * comp.abs().max().item())


def test_quantize_with_gain_is_rms_norm_then_quantize(kernels):
    x, gain = torch.randn(5, 256) * 30, torch.rand(256) + 0.5
    fused = kernels.quantize_rows(x, gain, 1e-6)
    separate = kernels.quantize_rows(F.rms_norm(x, (256,), gain, 1e-6))
    assert (fused[0].int() - separate[0].int()).abs().max() <= 1
    torch.testing.assert_close(fused[1], separate[1])


def rows_weight(n, k, g):
    w = torch.randn(n, k, generator=g)
    scales = w.abs().amax(1) / 127
    q = torch.round(w / scales[:, None]).to(torch.int8)
    return q, scales, q.double() * scales.double()[:, None]


def q8_0_weight(n, k, g):
    w = torch.randn(n, k, generator=g)
    scales = w.reshape(n, k // 32, 32).abs().amax(-1) / 127
    q = torch.round(w.reshape(n, k // 32, 32) / scales[..., None]).to(torch.int8).reshape(n, k)
    return q, scales, (q.double().reshape(n, k // 32, 32) * scales.double()[..., None]).reshape(n, k)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9, 70])
@pytest.mark.parametrize("n", [4, 7, 64])
@pytest.mark.parametrize("kind", ["rows", "q8_0"])
def test_matmul_exact_for_quantized_operands(kernels, m, n, kind):
    k = 256
    g = torch.Generator().manual_seed(m * 100 + n)
    x = torch.randn(m, k, generator=g)
    if kind == "rows":
        q, scales, wd = rows_weight(n, k, g)
        packed, packed_scales = pack_rows(q, scales)
        xq = kernels.quantize_rows(x)
        got = kernels.matmul_rows(xq, packed, packed_scales, n)
        ref = dequantized_rows(*xq[:2]) @ wd.T
    else:
        q, scales, wd = q8_0_weight(n, k, g)
        packed, packed_scales = pack_q8_0(q, scales)
        xq = kernels.quantize(x)
        got = kernels.matmul_q8_0(xq, packed, packed_scales, n)
        ref = dequantized_input(*xq) @ wd.T
    assert packed.shape[0] % 4 == 0 and torch.equal(unpack(packed, n), q)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4 * ref.abs().max().item())


def test_matmul_rows_do_not_depend_on_the_batch(kernels):
    """Each output row is computed the same way whatever else is in the batch (batch == single)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(70, 640, generator=g)
    q, s, _ = rows_weight(300, 640, g)
    w = pack_rows(q, s)
    t, ts = pack_q8_0(*q8_0_weight(300, 640, g)[:2])
    xq, xt = kernels.quantize_rows(x), kernels.quantize(x)
    full, full_t = kernels.matmul_rows(xq, *w, 300), kernels.matmul_q8_0(xt, t, ts, 300)
    for rows in ([5], [0, 1, 2], list(range(64, 70))):
        assert torch.equal(kernels.matmul_rows(tuple(a[rows] for a in xq), *w, 300), full[rows])
        assert torch.equal(kernels.matmul_q8_0(tuple(a[rows] for a in xt), t, ts, 300), full_t[rows])


def test_quantize_geglu_matches_torch_gelu_tanh(kernels):
    gate_up = torch.randn(6, 2 * 256) * 4
    gate, up = gate_up.chunk(2, dim=-1)
    ref = F.gelu(gate, approximate="tanh") * up
    xq, xs, _ = kernels.quantize_geglu(gate_up)
    step = ref.reshape(6, -1, BLOCK).abs().amax(-1, keepdim=True).double() / 127
    assert ((dequantized_rows(xq, xs) - ref.double()).reshape(6, -1, BLOCK).abs() <= step * 0.51 + 1e-6).all()


@pytest.mark.parametrize("k", [256, 40])
def test_rmsnorm_and_fused_residual_add(kernels, k):
    x, h, gain = torch.randn(3, k) * 5, torch.randn(3, k), torch.rand(k) + 0.5
    ref = F.rms_norm(h, (k,), gain, 1e-6)
    torch.testing.assert_close(kernels.rmsnorm(h, gain, 1e-6), ref)
    expected = x + ref
    out = kernels.rmsnorm(h, gain, 1e-6, add_to=x)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(x, expected)


@pytest.mark.parametrize("window", [None, 5])
def test_attend_matches_masked_softmax_attention(kernels, window):
    b, h, hkv, s, d = 3, 4, 2, 12, 48
    g = torch.Generator().manual_seed(7)
    q = torch.randn(b, h, d, generator=g)
    kv = torch.randn(2, b, hkv, s + 4, d, generator=g)
    k, v = kv[0, :, :, :s], kv[1, :, :, :s]          # views with a stride larger than their length
    k_pos = torch.tensor([list(range(s)), [-1] * 4 + list(range(8)), list(range(6, 12)) + list(range(6))])
    q_pos = torch.tensor([s - 1, 7, 11])
    got = kernels.attend(q, k, v, k_pos, q_pos, window, 0.125)
    mask = attention_mask(q_pos[:, None], k_pos, window)[:, 0, 0]                   # (B, S)
    rep = h // hkv
    scores = torch.einsum("bhd,bhsd->bhs", q, k.repeat_interleave(rep, 1)) * 0.125
    probs = scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1)
    ref = torch.einsum("bhs,bhsd->bhd", probs, v.repeat_interleave(rep, 1))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sliding", [False, True])
def test_attend_rows_equals_cache_update_and_attend_row_by_row(kernels, sliding):
    """The engine's one-call decode attention over per-row caches: the same caches afterwards and bit for bit
    the same outputs as each row's cache.update + attend, through buffer growth and ring wrap-around."""
    import copy

    from tinygemma.cache import KVCache, RingKVCache

    h, hkv, d, window = 4, 2, 32, 6
    g = torch.Generator().manual_seed(11)

    def make(length):
        c = RingKVCache(1, hkv, d, torch.float32, window=window, capacity=2) if sliding else \
            KVCache(1, hkv, d, torch.float32, capacity=2)
        if length:
            c.update(torch.randn(1, hkv, length, d, generator=g), torch.randn(1, hkv, length, d, generator=g),
                     torch.arange(length)[None])
        return c

    mine = [make(n) for n in (0, 1, 3, 5, 9)]
    ref = copy.deepcopy(mine)
    for _ in range(8):                                 # past the window and several doublings
        b = len(mine)
        q, k, v = (torch.randn(b, x, d, generator=g) for x in (h, hkv, hkv))
        q_pos = torch.tensor([c.offset for c in mine])
        got = kernels.attend_rows(q, k, v, q_pos, mine, window if sliding else None, 0.2)
        for i, c in enumerate(ref):
            keys, values, k_pos = c.update(k[i:i + 1, :, None], v[i:i + 1, :, None], q_pos[i:i + 1, None])
            expected = kernels.attend(q[i:i + 1], keys, values, k_pos, q_pos[i:i + 1], window if sliding else None, 0.2)
            assert torch.equal(got[i:i + 1], expected)
        for a, c in zip(mine, ref):
            assert a.offset == c.offset and torch.equal(a.pos, c.pos)
            assert torch.equal(a.k, c.k) and torch.equal(a.v, c.v)


# ------------------------------------------------------------------ every build against the scalar C build


def power_of_two_scales(shape, g):
    """Scales 1 or 1/2: with them, and K = 128, every float step of the products below is exact (sums under
    2^22 with at most two bits after the point)."""
    return torch.pow(2.0, -torch.randint(0, 2, shape, generator=g).float())


@pytest.mark.parametrize("m,n", [(1, 4), (3, 7), (9, 64)])
def test_integer_products_equal_the_scalar_build_exactly(kernels, ref, m, n):
    """With power-of-two scales the float steps are exact, so every build must give the exact integer result:
    the int8 dot products (VPDPBUSD, VPMADDUBSW with the sign trick, SDOT, plain C) agree bit for bit."""
    k = 128
    g = torch.Generator().manual_seed(m * 31 + n)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    x = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    w[0], x[0], w[-1] = 127, -127, -127         # extremes: the largest pair sums of VPMADDUBSW (no saturation)
    # Layers: row scales, activation scales per BLOCK, xc = 128 * sum(scale * q) as quantize_rows makes it.
    ws, xs = power_of_two_scales((n,), g), power_of_two_scales((m, k // BLOCK), g)
    xc = 128 * (x.double().reshape(m, -1, BLOCK).sum(-1) * xs.double()).sum(-1)
    exact = ((x.double().reshape(m, -1, BLOCK) * xs.double()[..., None]).reshape(m, k) @ w.double().T) * ws.double()
    rows = (x, xs, xc.float())
    got = kernels.matmul_rows(rows, *pack_rows(w, ws), n)
    assert torch.equal(got.double(), exact)
    assert torch.equal(got, ref.matmul_rows(rows, *pack_rows(w, ws), n))
    # Output projection: Q8_0 weights (scale per 32) against uint8 (+128) activations with lane scales.
    wq, xq = power_of_two_scales((n, k // 32), g), power_of_two_scales((m, k // 32), g)
    lanes = xq.reshape(m, k // 64, 2, 1).expand(m, k // 64, 2, 8).reshape(m, k // 64, 16).contiguous()
    xu = (x.int() + 128).to(torch.uint8)
    exact = torch.einsum("mbk,nbk->mn", (x.double() * xq.double().repeat_interleave(32, 1)).reshape(m, -1, 32),
                         (w.double() * wq.double().repeat_interleave(32, 1)).reshape(n, -1, 32))
    got = kernels.matmul_q8_0((xu, lanes), *pack_q8_0(w, wq), n)
    assert torch.equal(got.double(), exact)
    assert torch.equal(got, ref.matmul_q8_0((xu, lanes), *pack_q8_0(w, wq), n))


def test_quantizers_equal_the_scalar_build(kernels, ref):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 640, generator=g) * torch.logspace(-2, 2, 640)
    for mine, theirs in zip(kernels.quantize(x), ref.quantize(x)):
        assert torch.equal(mine, theirs)                      # absmax and one product per value: exact
    mine, theirs = kernels.quantize_rows(x), ref.quantize_rows(x)
    assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[1], theirs[1])
    torch.testing.assert_close(mine[2], theirs[2], rtol=1e-5, atol=1e-3)
    # With the RMS norm (a float sum in another order) or gelu (exp by polynomial vs tanhf): +-1 at most.
    gain = torch.rand(640, generator=g) + 0.5
    mine, theirs = kernels.quantize_rows(x, gain, 1e-6), ref.quantize_rows(x, gain, 1e-6)
    assert (mine[0].int() - theirs[0].int()).abs().max() <= 1
    torch.testing.assert_close(mine[1], theirs[1], rtol=1e-5, atol=0)
    gate_up = torch.randn(5, 2 * 2048, generator=g) * 3
    mine, theirs = kernels.quantize_geglu(gate_up), ref.quantize_geglu(gate_up)
    assert (mine[0].int() - theirs[0].int()).abs().max() <= 1
    torch.testing.assert_close(mine[1], theirs[1], rtol=1e-5, atol=0)


def test_float_kernels_match_the_scalar_build(kernels, ref):
    g = torch.Generator().manual_seed(9)
    x, h, gain = torch.randn(4, 640, generator=g), torch.randn(4, 640, generator=g), torch.rand(640, generator=g)
    torch.testing.assert_close(kernels.rmsnorm(h, gain, 1e-6), ref.rmsnorm(h, gain, 1e-6))
    torch.testing.assert_close(kernels.rmsnorm(h, gain, 1e-6, add_to=x.clone()),
                               ref.rmsnorm(h, gain, 1e-6, add_to=x.clone()))
    b, heads, hkv, s, d = 2, 4, 1, 40, 256
    q = torch.randn(b, heads, d, generator=g)
    k, v = torch.randn(b, hkv, s, d, generator=g), torch.randn(b, hkv, s, d, generator=g)
    k_pos, q_pos = torch.arange(s).repeat(b, 1), torch.tensor([s - 1, 20])
    torch.testing.assert_close(kernels.attend(q, k, v, k_pos, q_pos, 16, 0.0625),
                               ref.attend(q, k, v, k_pos, q_pos, 16, 0.0625), rtol=1e-5, atol=1e-5)
    # Products of real quantized activations: the same integers, float sums in another order.
    w = torch.randn(300, 640, generator=g)
    scales = w.abs().amax(1) / 127
    packed = pack_rows(torch.round(w / scales[:, None]).to(torch.int8), scales)
    xq = ref.quantize_rows(x)
    expected = ref.matmul_rows(xq, *packed, 300)
    torch.testing.assert_close(kernels.matmul_rows(xq, *packed, 300), expected, rtol=1e-5,
                               atol=1e-5 * expected.abs().max().item())


# ------------------------------------------------------------------------------------------ dispatch


def run_python(code: str, **env) -> "subprocess.CompletedProcess":
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_env_forces_a_lower_path_and_reports_it(tmp_path):
    lower = next((name for name in RUNNABLE[1:] if name != "scalar"), "scalar")
    code = "from tinygemma.kernels import describe; d = describe(); print(d['kernel_path'], d['forced'])"
    done = run_python(code, TINYGEMMA_KERNELS=lower, TINYGEMMA_CACHE=str(tmp_path))
    assert done.returncode == 0 and done.stdout.split() == [lower, lower]
    done = run_python(code, TINYGEMMA_KERNELS="0", TINYGEMMA_CACHE=str(tmp_path))
    assert done.stdout.split() == ["pytorch", "0"] and done.stderr == ""
    # A path this CPU cannot run: said once, then the best one is used.
    foreign = next(p.name for p in PATHS if not native.runnable(p))
    done = run_python(code, TINYGEMMA_KERNELS=foreign, TINYGEMMA_CACHE=str(tmp_path))
    assert done.stdout.split() == [RUNNABLE[0] if RUNNABLE[0] != "scalar" else "pytorch", "None"]
    assert done.stderr.count(f"TINYGEMMA_KERNELS={foreign}: this CPU cannot run it") == 1


def test_no_compiler_says_why_and_the_cost_once(tmp_path):
    code = ("import tinygemma.kernels as k; print(k.q8(), k.q8()); "
            "import tinygemma.quant as q; print(q.act_dtype())")
    done = run_python(code, PATH=str(tmp_path), CC="", TINYGEMMA_CACHE=str(tmp_path))
    assert done.returncode == 0 and done.stdout.split()[:2] == ["None", "None"]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no C compiler" in lines[0] and "PyTorch path" in lines[0] and "slower" in lines[0]
    # The fallback computes in bfloat16 only where the CPU has it natively.
    assert done.stdout.split()[2] == ("torch.bfloat16" if native.native_bf16() else "torch.float32")


def test_auto_choice_is_the_best_runnable_path(tmp_path):
    code = "from tinygemma.kernels import describe; d = describe(); print(d['kernel_path'], *d['features'])"
    done = run_python(code, TINYGEMMA_KERNELS="auto", TINYGEMMA_CACHE=str(tmp_path))
    path, *features = done.stdout.split()
    best = native.best_path()
    assert path == (best.name if best else "pytorch")
    assert set(best.needs if best else ()) <= set(features) <= set(native.cpu_features())
