"""An independent float64 NumPy forward pass of Gemma 3, written plainly (loops, no cache) as a test oracle."""

from __future__ import annotations

import math

import numpy as np

from tinygemma.config import SLIDING, Gemma3Config


def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 + w)


def _rope(x, pos, base, scale):
    # x: (T, H, D); rotate halves.
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2) / d)
    ang = (pos[:, None] / scale) * inv[None, :]          # (T, D/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def reference_logits(cfg: Gemma3Config, tensors: dict, ids: list[int]) -> np.ndarray:
    """Logits (T, V) in float64 for one sequence starting at position 0."""
    w = {k: v.double().numpy() for k, v in tensors.items()}
    eps, hd = cfg.rms_norm_eps, cfg.head_dim
    t = len(ids)
    pos = np.arange(t, dtype=np.float64)
    x = w["embed_tokens.weight"][ids] * math.sqrt(cfg.hidden_size)
    for i, kind in enumerate(cfg.layer_types):
        p = f"layers.{i}."
        sliding = kind == SLIDING
        h = _rms(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(t, cfg.num_attention_heads, hd)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(t, cfg.num_key_value_heads, hd)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(t, cfg.num_key_value_heads, hd)
        q = _rms(q, w[p + "self_attn.q_norm.weight"], eps)
        k = _rms(k, w[p + "self_attn.k_norm.weight"], eps)
        base = cfg.rope_local_base_freq if sliding else cfg.rope_theta
        scale = 1.0 if sliding else cfg.rope_scaling_factor
        q, k = _rope(q, pos, base, scale), _rope(k, pos, base, scale)
        group = cfg.num_attention_heads // cfg.num_key_value_heads
        out = np.zeros((t, cfg.num_attention_heads, hd))
        for head in range(cfg.num_attention_heads):
            kh, vh = k[:, head // group], v[:, head // group]
            for qi in range(t):
                lo = max(0, qi - cfg.sliding_window + 1) if sliding else 0
                s = kh[lo:qi + 1] @ q[qi, head] * cfg.query_pre_attn_scalar ** -0.5
                if cfg.attn_logit_softcapping is not None:
                    s = np.tanh(s / cfg.attn_logit_softcapping) * cfg.attn_logit_softcapping
                e = np.exp(s - s.max())
                out[qi, head] = (e / e.sum()) @ vh[lo:qi + 1]
        a = out.reshape(t, -1) @ w[p + "self_attn.o_proj.weight"].T
        x = x + _rms(a, w[p + "post_attention_layernorm.weight"], eps)
        h = _rms(x, w[p + "pre_feedforward_layernorm.weight"], eps)
        m = (_gelu_tanh(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T))
        m = m @ w[p + "mlp.down_proj.weight"].T
        x = x + _rms(m, w[p + "post_feedforward_layernorm.weight"], eps)
    x = _rms(x, w["norm.weight"], eps)
    head = w.get("lm_head.weight", w["embed_tokens.weight"])
    logits = x @ head.T
    if cfg.final_logit_softcapping is not None:
        logits = np.tanh(logits / cfg.final_logit_softcapping) * cfg.final_logit_softcapping
    return logits
