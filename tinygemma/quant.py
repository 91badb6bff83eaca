"""Quantized building blocks of the fast CPU path (chosen by measurement on a 2-core AVX-512 machine).

With the native kernels (tinygemma/kernels; AVX-512 VNNI and a C compiler):
- NativeInt8Linear: int8 weights, one scale per output row, times int8 activations (one scale per BLOCK
  values), in the kernels' tile layout; NormQuantize hands it RMS-normalized activations already quantized.
- Q8Table: the Q8_0 embedding table in the same layout, serving as embedding and (TiedHead) as the output
  projection with its exact Q8_0 weights.
Without them (the PyTorch fallback):
- Int8Linear: weight-only int8, one scale per output row, on PyTorch's int8pack CPU kernel, for
  decode-sized inputs (fewer than DENSE_MIN_ROWS positions per sequence); longer inputs (prefill)
  dequantize the weight on the fly and run a dense GEMM (in act_dtype), which is faster there.
  The choice never depends on the batch size: both kernels compute each row independently of the others,
  so a sequence decoded in a batch gets bit-for-bit the logits it would get alone.
  Per-row int8 costs under 0.2% perplexity; per-group int4 costs ~25% on this model, so layers stay int8.
- Int4Linear: weight-only int4, group-wise asymmetric, on the int4pack CPU kernel: the output projection.
- Int8Embedding: the embedding table as int8 per 32-value group (Q8_0's layout): a Q8_0 embedding is
  reproduced exactly, and only the rows in use need to be in memory.
- RescoredHead: the tied output projection in int4, with the k best candidates of every row recomputed
  exactly from the embedding table: greedy picks and the probable tokens are exact, the tail approximate.
  Activations enter these kernels as bfloat16 where the CPU computes bfloat16 natively (AVX512_BF16, AMX, ARM
  BF16; their float32-activation paths are not vectorized there), else as float32: emulated bfloat16 costs many
  times more (act_dtype; TINYGEMMA_BF16=1 or 0 forces either).
Outputs are float32 throughout.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import BLOCK, Q8, native_bf16, pack_q8_0, pack_rows

GROUP_SIZE = 32          # int4 group (values sharing one scale and zero point)
DENSE_MIN_ROWS = 8       # inputs with at least this many positions per sequence use a dense GEMM
RESCORE_TOP_K = 1024     # output-projection candidates recomputed exactly per row


def act_dtype() -> torch.dtype:
    """Activation dtype of the PyTorch fallback's int8/int4 products: bfloat16 only where the CPU has it natively."""
    forced = os.environ.get("TINYGEMMA_BF16")
    if forced in ("0", "1"):
        return torch.bfloat16 if forced == "1" else torch.float32
    return torch.bfloat16 if native_bf16() else torch.float32


class Int8Linear(nn.Module):
    """y = x @ W.T with W as int8 per output row (scale = absmax / 127). Output float32."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("q", q, persistent=False)             # (N, K) int8
        # (N,) stored as bfloat16 values (exact in float32 too), used in the activations' dtype
        self.register_buffer("scales", scales.to(act_dtype()), persistent=False)

    @classmethod
    def from_float(cls, w: torch.Tensor) -> "Int8Linear":
        w = w.float()
        scale = (w.abs().amax(1) / 127).clamp(min=1e-12).to(torch.bfloat16)
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q, scale)

    def dequantized(self) -> torch.Tensor:
        return self.q.to(self.scales.dtype) * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.scales.dtype)
        per_sequence = x.shape[-2] if x.dim() >= 3 else x2.shape[0]    # (B, L, K): L; (M, K): M
        # The int8pack kernel reads rows in blocks of 16 values: other widths give wrong results.
        if per_sequence >= DENSE_MIN_ROWS or self.in_features % 16:
            y = F.linear(x2, self.dequantized())
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.q, self.scales)
        return y.float().reshape(*lead, self.out_features)


class Quantized(NamedTuple):
    """Activations already quantized for a NativeInt8Linear (what NormQuantize hands a projection)."""
    q: torch.Tensor         # (M, K) int8
    scales: torch.Tensor    # (M, K / BLOCK) float32
    comp: torch.Tensor      # (M,) float32: the weight offset's contribution (Q8.quantize_rows)
    shape: torch.Size       # the float input's shape


class NativeInt8Linear(nn.Module):
    """y = x @ W.T on the native VNNI kernel: W int8 per output row (tile layout), activations int8 per
    BLOCK values. Accepts float inputs or Quantized ones. Output float32."""

    def __init__(self, kernels: Q8, packed: torch.Tensor, scales: torch.Tensor, out_features: int):
        super().__init__()
        self.kernels, self.out_features, self.in_features = kernels, out_features, packed.shape[1]
        self.register_buffer("q", packed, persistent=False)          # (N rounded up to 4, K) uint8
        self.register_buffer("scales", scales, persistent=False)     # (N rounded up to 4,) float32

    @staticmethod
    def supports(in_features: int) -> bool:
        return in_features % BLOCK == 0

    @staticmethod
    def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(packed weights, row scales) of a float weight (N, K)."""
        w = w.float()
        scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
        return pack_rows(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale)

    def forward(self, x: torch.Tensor | Quantized) -> torch.Tensor:
        if not isinstance(x, Quantized):
            x = Quantized(*self.kernels.quantize_rows(x.reshape(-1, self.in_features).float()), x.shape)
        y = self.kernels.matmul_rows((x.q, x.scales, x.comp), self.q, self.scales, self.out_features)
        return y.reshape(*x.shape[:-1], self.out_features)

    def from_gate_up(self, gate_up: torch.Tensor) -> torch.Tensor:
        """This projection of gelu_tanh(gate) * up, for gate_up = [gate | up] (..., 2K) float32."""
        lead = gate_up.shape[:-1]
        x = self.kernels.quantize_geglu(gate_up.reshape(-1, 2 * self.in_features))
        return self(Quantized(*x, torch.Size((*lead, self.in_features))))


class NormQuantize(nn.Module):
    """Gemma's RMSNorm fused with the quantization of its output for a NativeInt8Linear."""

    def __init__(self, kernels: Q8, weight: torch.Tensor, eps: float):
        super().__init__()
        self.kernels, self.eps = kernels, eps
        self.register_buffer("gain", 1.0 + weight.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> Quantized:
        return Quantized(*self.kernels.quantize_rows(x.reshape(-1, x.shape[-1]).float(), self.gain, self.eps),
                         x.shape)


class Q8Table(nn.Module):
    """A Q8_0 table (int8 per 32 values, float32 scales) in the native kernels' tile layout, serving as the
    embedding (row lookup) and as the tied output projection (the VNNI kernel, exact Q8_0 weights)."""

    def __init__(self, kernels: Q8, packed: torch.Tensor, scales: torch.Tensor, rows: int):
        super().__init__()
        self.kernels, self.rows, self.width = kernels, rows, packed.shape[1]
        self.register_buffer("q", packed, persistent=False)          # (V rounded up to 4, H) int8
        self.register_buffer("scales", scales, persistent=False)     # (V rounded up to 4, H / 32) float32

    @staticmethod
    def supports(width: int) -> bool:
        return width % 64 == 0

    @staticmethod
    def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        table = Int8Embedding.from_float(w, group=32)
        return pack_q8_0(table.q, table.scales)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows (..., H) float32."""
        h = self.width
        t, i = ids // 4, ids % 4
        q = self.q.view(-1, h // 64, 4, 64)[t, :, i].reshape(*ids.shape, h // 32, 32)
        s = self.scales.view(-1, h // 64, 4, 2)[t, :, i].reshape(*ids.shape, h // 32)
        return (q.float() * s[..., None]).flatten(-2)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x @ table.T (float32, (..., V))."""
        q = self.kernels.quantize(x.reshape(-1, self.width).float())
        return self.kernels.matmul_q8_0(q, self.q, self.scales, self.rows).reshape(*x.shape[:-1], self.rows)


class TiedHead(nn.Module):
    """Output projection through a Q8Table (the embedding, or an untied lm_head stored the same way)."""

    def __init__(self, table: Q8Table):
        super().__init__()
        self.table = table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table.logits(x)


def quantize_int4(w: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of `group_size` input values: w ~ q * scale + min, q in 0..15.

    Returns (q as int32 (N, K), scales_and_zeros (K / group_size, N, 2) float32) in the layout of
    torch.ops.aten._weight_int4pack_mm_for_cpu, which computes w = (q - 8) * scale + zero.
    """
    n, k = w.shape
    g = w.float().reshape(n, k // group_size, group_size)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = torch.round((g - lo) / scale).clamp(0, 15)
    zero = lo + 8 * scale
    sz = torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous()    # (K/gs, N, 2)
    return q.to(torch.int32).reshape(n, k), sz


class Int4Linear(nn.Module):
    """y = x @ W.T with W in group-wise int4. Output float32."""

    def __init__(self, packed: torch.Tensor, scales_zeros: torch.Tensor, out_features: int, in_features: int,
                 group_size: int = GROUP_SIZE):
        super().__init__()
        self.out_features, self.in_features, self.group_size = out_features, in_features, group_size
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_zeros", scales_zeros.to(act_dtype()), persistent=False)

    @staticmethod
    def supports(in_features: int, group_size: int = GROUP_SIZE) -> bool:
        return in_features % group_size == 0

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = GROUP_SIZE) -> "Int4Linear":
        n = w.shape[0]
        # The kernel packs output rows in blocks of 16: pad with zero rows, sliced off after the matmul.
        w = F.pad(w.float(), (0, 0, 0, -n % 16))
        q, sz = quantize_int4(w, group_size)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        return cls(packed, sz.to(torch.bfloat16), n, w.shape[1], group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.scales_zeros.dtype)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_zeros)
        return y[:, :self.out_features].float().reshape(*lead, self.out_features)


class Int8Embedding(nn.Module):
    """Embedding rows stored as int8 with one float32 scale per 32 values (Q8_0's layout); returns float32."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("q", q, persistent=False)            # (V, H) int8
        self.register_buffer("scales", scales, persistent=False)  # (V, H / 32) float32
        self.group = q.shape[1] // scales.shape[1]

    @classmethod
    def from_float(cls, w: torch.Tensor, group: int = 32) -> "Int8Embedding":
        v, h = w.shape
        if h % group:
            group = h       # widths Q8_0 cannot hold: one scale per row
        g = w.float().reshape(v, h // group, group)
        # Q8_0: scale = absmax / 127; an already-Q8_0 table round-trips exactly (its absmax is 127 * scale).
        scale = g.abs().amax(-1) / 127
        q = torch.round(g / torch.where(scale == 0, 1.0, scale)[..., None]).clamp(-127, 127).to(torch.int8)
        return cls(q.reshape(v, h), scale.float())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        q = self.q[ids].float()                                   # (..., H)
        s = self.scales[ids]                                      # (..., H / group)
        return (q.unflatten(-1, (-1, self.group)) * s[..., None]).flatten(-2)


class RescoredHead(nn.Module):
    """Tied output projection: int4 logits, then the top `k` of each row recomputed from the exact table."""

    def __init__(self, approx: nn.Module, table: Int8Embedding, k: int = RESCORE_TOP_K):
        super().__init__()
        self.approx, self.table, self.k = approx, table, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).float()
        logits = self.approx(x).reshape(x2.shape[0], -1)                 # (M, V); approx sees (B, L, H)
        k = min(self.k, logits.shape[-1])
        top = logits.topk(k, dim=-1, sorted=False).indices               # (M, k)
        exact = torch.einsum("mh,mkh->mk", x2, self.table(top))          # rows as the exact path has them
        return logits.scatter_(-1, top, exact).reshape(*lead, -1)


class FrozenRMSNorm(nn.Module):
    """Gemma's RMSNorm with its (1 + w) gain computed once: for inference-only models. With native kernels,
    float32 inputs take the C path, and `add_to` fuses the residual update of Gemma's post-norms."""

    def __init__(self, weight: torch.Tensor, eps: float, kernels: Q8 | None = None):
        super().__init__()
        self.eps, self.kernels = eps, kernels
        self.weight = nn.Parameter(weight.float(), requires_grad=False)   # w, as in RMSNorm
        self.register_buffer("gain", 1.0 + self.weight.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None and x.dtype == torch.float32:
            return self.kernels.rmsnorm(x.contiguous(), self.gain, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), self.gain, self.eps)

    def add_to(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x + norm(h); with native kernels, x (float32, contiguous) is updated in place."""
        if self.kernels is not None and x.is_contiguous() and h.dtype == torch.float32:
            return self.kernels.rmsnorm(h.contiguous(), self.gain, self.eps, add_to=x)
        return x + self(h)
