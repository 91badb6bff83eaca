"""Gemma 3 text model in plain PyTorch: (token ids, positions, cache) -> logits, nothing else.

Numerics follow the reference implementation exactly:
- the embedding output is multiplied by sqrt(hidden_size);
- RMSNorm computes in float32 and multiplies by (1 + weight);
- four norms per block (input, post-attention, pre-feedforward, post-feedforward), q/k RMSNorm over
  head_dim before RoPE, attention scale query_pre_attn_scalar ** -0.5;
- RoPE (NEOX halves) with base rope_theta on full layers, rope_local_base_freq on sliding layers;
- sliding layers: a token sees itself and at most window-1 earlier tokens;
- GeGLU MLP with the tanh approximation of GELU; output projection tied to the embedding.
The residual stream, norms, RoPE tables and logits are float32 whatever the weights' dtype; matmul inputs
are cast to their weights' dtype (bfloat16 weights run bfloat16 matmuls). Never run it in float16:
activations reach ~1e5 at the BOS position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cache import LayerRows, RowCaches
from .config import SLIDING, Gemma3Config


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Gemma: float32 statistics and a (1 + w) gain. The result stays float32: matmul inputs are
        # cast to the weights' dtype where they are used, so the residual stream is float32 throughout.
        return F.rms_norm(x.float(), (x.shape[-1],), 1.0 + self.weight.float(), self.eps)


def rope_tables(positions: torch.Tensor, head_dim: int, base: float, scale: float, dtype: torch.dtype):
    """cos/sin tables (B, L, head_dim) for absolute positions (B, L); angles computed in float64."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = (positions.to(torch.float64) / scale)[..., None] * inv_freq   # (B, L, D/2)
    angles = torch.cat([angles, angles], dim=-1)                           # (B, L, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, L, D); NEOX style: rotate the two halves of head_dim.
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean mask (B, 1, L, S), True where query may attend key.

    Keys at position -1 (empty slots, padding) are hidden, except that a padding query (position -1)
    sees them so its softmax stays finite.
    """
    q = q_pos[:, None, :, None]
    k = k_pos[:, None, None, :]
    visible = (k <= q) & (k >= 0)
    if window is not None:
        visible &= (q - k) < window
    return visible | ((q < 0) & (k == q))


def input_dtype(linear: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The dtype a projection wants its input in: its weight's (nn.Linear), or as it is (quantized modules
    cast for themselves)."""
    w = getattr(linear, "weight", None)
    return w.dtype if isinstance(w, torch.Tensor) else x.dtype


def causal_attention(q, k, v, window, scale, block=64):
    """Attention of a fresh sequence (queries and keys at positions 0..L-1), causal and optionally windowed,
    in blocks of queries that each read only the keys they can see: the masked part is never computed.
    q (B, H, L, D); k, v (B, Hkv, L, D)."""
    b, h, n, d = q.shape
    hkv = k.shape[1]
    rep = h // hkv
    out = q.new_empty(b, h, n, d)
    pos = torch.arange(n)
    for s in range(0, n, block):
        e = min(n, s + block)
        lo = 0 if window is None else max(0, s - window + 1)
        qb = q[:, :, s:e].reshape(b, hkv, rep * (e - s), d)
        scores = (qb @ k[:, :, lo:e].transpose(-1, -2)) * scale                 # (B, Hkv, rep*n, keys)
        dist = pos[s:e, None] - pos[None, lo:e]
        hidden = dist < 0 if window is None else (dist < 0) | (dist >= window)
        scores = scores.view(b, hkv, rep, e - s, e - lo).masked_fill_(hidden, float("-inf"))
        probs = scores.softmax(-1).view(b, hkv, rep * (e - s), e - lo)
        out[:, :, s:e] = (probs @ v[:, :, lo:e]).view(b, h, e - s, d)
    return out


# Fresh sequences at least this long take causal_attention instead of the fused kernel (measured: 512 tokens,
# head_dim 256, one thread: 13 ms against 22 ms a layer).
BLOCKED_MIN_LEN = 256


class Attention(nn.Module):
    def __init__(self, cfg: Gemma3Config, sliding: bool):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.sliding = sliding
        self.window = cfg.sliding_window
        self.scale = cfg.query_pre_attn_scalar ** -0.5
        self.softcap = cfg.attn_logit_softcapping
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.qkv_proj = None    # the fast path fuses q, k, v into one projection (one kernel call)
        self.attend_one = None  # the fast path's native single-query attention (kernels.Q8.attend)
        self.attend_rows = None  # and its decode step over separate per-row caches (kernels.Q8.attend_rows)

    def project(self, x):
        if self.qkv_proj is not None:
            kv = self.n_kv * self.head_dim
            return self.qkv_proj(x).split([self.n_heads * self.head_dim, kv, kv], dim=-1)
        x = x.to(input_dtype(self.q_proj, x))
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x, cos, sin, positions, cache, masks: dict):
        b, n, _ = x.shape
        q, k, v = self.project(x)
        q = self.q_norm(q.view(b, n, self.n_heads, self.head_dim)).transpose(1, 2)   # (B, H, L, D)
        k = self.k_norm(k.view(b, n, self.n_kv, self.head_dim)).transpose(1, 2)      # (B, Hkv, L, D)
        v = v.reshape(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin).to(v.dtype), apply_rope(k, cos, sin).to(v.dtype)
        if isinstance(cache, LayerRows) and n == 1 and self.attend_rows is not None and self.softcap is None \
                and v.dtype == torch.float32 and all(c.k.dtype == torch.float32 for c in cache):
            # The decode step of separate sequences: one native call writes each row's key and value into
            # its own cache and attends over it (the same arithmetic as attend_one per row).
            out = self.attend_rows(q[:, :, 0], k[:, :, 0], v[:, :, 0], positions[:, 0], cache,
                                   self.window if self.sliding else None, self.scale)[:, :, None]
        elif isinstance(cache, LayerRows):
            # Separate sequences, one per row: each row attends over its own cache, as it would alone.
            out = torch.cat([self.attend(q[i:i + 1], k[i:i + 1], v[i:i + 1], positions[i:i + 1], row_cache,
                                         masks.setdefault(("row", i), {}))
                             for i, row_cache in enumerate(cache)])
        else:
            out = self.attend(q, k, v, positions, cache, masks)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))

    def attend(self, q, k, v, positions, cache, masks: dict) -> torch.Tensor:
        """Attention output (B, H, L, D) for roped q (B, H, L, D) and new k, v (B, Hkv, L, D)."""
        b, _, n, _ = q.shape
        if cache is not None:
            k, v, k_pos = cache.update(k, v, positions)
        else:
            k_pos = positions
        if self.attend_one is not None and n == 1 and self.softcap is None and v.dtype == torch.float32 \
                and k.stride() == v.stride() and k.stride(-1) == 1:
            return self.attend_one(q[:, :, 0], k, v, k_pos, positions[:, 0],
                                   self.window if self.sliding else None, self.scale)[:, :, None]
        # A fresh sequence (keys = its own positions 0..n-1): long ones go block by block, reading only
        # visible keys; one that fits the window is plainly causal for the kernel, which skips the masked half.
        fresh = self.softcap is None and n > 1 and masks.get("fresh", False) and k.shape[2] == n
        if fresh and n >= BLOCKED_MIN_LEN and q.dtype == torch.float32:
            return causal_attention(q, k, v, self.window if self.sliding else None, self.scale)
        causal = fresh and (not self.sliding or n <= self.window)
        mask = None if causal else masks.get(self.sliding)
        if mask is None and not causal:
            # Every layer of one kind sees the same key positions, so its mask is built once per forward.
            mask = masks[self.sliding] = attention_mask(positions, k_pos, self.window if self.sliding else None)
        if self.softcap is None and n > 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                  scale=self.scale, enable_gqa=self.n_heads != self.n_kv)
        # Plain matmuls: softcapping needs them, and for one query they beat the fused kernel's setup.
        # Query heads sharing a K/V head are grouped instead of repeating K and V.
        rep = self.n_heads // self.n_kv
        qg = q.reshape(b, self.n_kv, rep * n, self.head_dim)                    # (B, Hkv, rep*L, D)
        scores = (qg @ k.transpose(-1, -2)) * self.scale                        # (B, Hkv, rep*L, S)
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        scores = scores.view(b, self.n_kv, rep, n, -1).masked_fill(~mask[:, :, None], float("-inf"))
        probs = scores.float().softmax(-1).to(v.dtype).view(b, self.n_kv, rep * n, -1)
        return (probs @ v).view(b, self.n_heads, n, self.head_dim)


class MLP(nn.Module):
    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up_proj = None    # the fast path fuses gate and up into one projection

    def forward(self, x):
        if self.gate_up_proj is not None:
            gate_up = self.gate_up_proj(x)
            if hasattr(self.down_proj, "from_gate_up"):    # native: the activation fused with quantization
                return self.down_proj.from_gate_up(gate_up)
            gate, up = gate_up.chunk(2, dim=-1)
        else:
            x = x.to(input_dtype(self.up_proj, x))
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class Block(nn.Module):
    def __init__(self, cfg: Gemma3Config, layer_type: str):
        super().__init__()
        eps = cfg.rms_norm_eps
        self.sliding = layer_type == SLIDING
        self.self_attn = Attention(cfg, self.sliding)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.decode = None      # the fast path's whole decode step in one native call: (kernels, DecodeLayer)

    def forward(self, x, ropes, positions, cache, masks):
        cos, sin = ropes[self.sliding]
        rows = decode_rows(self, x, cache)
        if rows is not None:
            # One new token per sequence, each with its own float32 cache: one native call does what the
            # modules below do, in the same order with the same kernels (bit for bit the same result).
            kernels, layer = self.decode
            kernels.decode_layer(x.view(x.shape[0], -1), layer, rows, positions[:, 0], cos[:, 0], sin[:, 0])
            return x
        h = self.self_attn(self.input_layernorm(x), cos, sin, positions, cache, masks)
        x = add_normed(x, self.post_attention_layernorm, h)
        h = self.mlp(self.pre_feedforward_layernorm(x))
        return add_normed(x, self.post_feedforward_layernorm, h)


def decode_rows(block: Block, x: torch.Tensor, cache) -> list | None:
    """The per-row caches for block.decode, or None where the fused decode step does not apply (not a
    one-token step, gradients, a shared multi-row cache, non-float32 tensors)."""
    if block.decode is None or x.shape[1] != 1 or cache is None or x.dtype != torch.float32 \
            or not x.is_contiguous() or torch.is_grad_enabled():
        return None
    rows = cache if isinstance(cache, LayerRows) else [cache]
    if any(c.k.shape[0] != 1 or c.k.dtype != torch.float32 for c in rows):
        return None
    return rows


def add_normed(x: torch.Tensor, norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """x + norm(h), fused where the norm offers it (the fast path's FrozenRMSNorm.add_to)."""
    add_to = getattr(norm, "add_to", None)
    return add_to(x, h) if add_to is not None else x + norm(h)


class Gemma3Model(nn.Module):
    """Gemma 3 decoder-only text model. Parameter names are Hugging Face's without the "model." prefix."""

    def __init__(self, config: Gemma3Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, t) for t in config.layer_types)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(
            config.hidden_size, config.vocab_size, bias=False)
        self.gradient_checkpointing = False     # training: recompute each block in the backward pass

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the attention inputs and the KV cache: that of the value projection's output."""
        w = getattr(getattr(self.layers[0].self_attn, "v_proj", None), "weight", None)
        return w.dtype if isinstance(w, torch.Tensor) else torch.float32

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None, cache: list | None = None,
                last_only: bool = False, logit_slice: slice | None = None) -> torch.Tensor:
        """Logits (B, L, V) in float32 for token ids (B, L).

        positions: absolute positions (B, L); default continues the cache (or starts at 0). Position -1
        marks a padding token. cache: from make_cache(), updated in place; or a RowCaches (one cache per
        row, rows being separate sequences; positions required). last_only: logits of the
        final position only (B, 1, V), which spares the vocabulary projection during prefill.
        logit_slice: logits only for these positions (as for perplexity, which scores half a window).
        """
        x = self.body(ids, positions, cache)
        if last_only:
            x = x[:, -1:]
        elif logit_slice is not None:
            x = x[:, logit_slice]
        return self.project(self.norm(x))

    def body(self, ids: torch.Tensor, positions: torch.Tensor | None = None, cache: list | None = None
             ) -> torch.Tensor:
        """The residual stream (B, L, hidden) in float32 after the last block, before the final norm."""
        cfg = self.config
        if positions is None and isinstance(cache, RowCaches):
            raise ValueError("a RowCaches batch needs explicit positions")
        # "fresh": default positions from 0 and nothing cached, so attention is plainly causal.
        masks: dict = {"fresh": positions is None and not (cache and cache[0].offset)}
        if positions is None:
            start = cache[0].offset if cache else 0
            positions = torch.arange(start, start + ids.shape[1]).expand(ids.shape[0], -1)
        # Gemma scales the embedding by sqrt(hidden_size). The residual stream is float32 whatever the
        # weights' dtype (bfloat16 weights then cost little accuracy), so the scale is a float32 too.
        x = self.embed_tokens(ids).float() * math.sqrt(cfg.hidden_size)
        ropes = {
            True: rope_tables(positions, cfg.head_dim, cfg.rope_local_base_freq, 1.0, torch.float32),
            False: rope_tables(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_factor, torch.float32),
        }
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            layer_cache = cache[i] if cache is not None else None
            if recompute:
                # Keep only each block's input for the backward pass and recompute the block there.
                x = checkpoint(layer, x, ropes, positions, layer_cache, masks, use_reentrant=False)
            else:
                x = layer(x, ropes, positions, layer_cache, masks)
        return x

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """float32 logits (..., V) of final-normed hidden states (..., hidden)."""
        if self.lm_head is not None:
            logits = self.lm_head(h).float()
        else:
            head = self.embed_tokens.weight
            logits = (h.to(head.dtype) @ head.T).float()
        if self.config.final_logit_softcapping is not None:
            c = self.config.final_logit_softcapping
            logits = torch.tanh(logits / c) * c
        return logits


def empty_model(config: Gemma3Config) -> Gemma3Model:
    """A Gemma3Model whose parameters are on the meta device, uninitialized: their values come from a file.
    (Initializing on meta costs nothing but loads ~1.5 s of PyTorch's reference-op modules the first time.)"""
    skipped = (nn.Linear, nn.Embedding)
    saved = [cls.reset_parameters for cls in skipped]
    try:
        for cls in skipped:
            cls.reset_parameters = lambda self: None
        with torch.device("meta"):
            return Gemma3Model(config)
    finally:
        for cls, reset in zip(skipped, saved):
            cls.reset_parameters = reset
