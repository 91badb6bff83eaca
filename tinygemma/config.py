"""Gemma 3 text-model architecture config, with Hugging Face field names."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

log = logging.getLogger(__name__)

SLIDING = "sliding_attention"
FULL = "full_attention"

# Plausibility limits on every size, checked before anything is allocated. Generous for every Gemma 3 text model
# (27B: 62 layers, hidden 5376, ffn 21504, 32 heads of 128, vocabulary 262,208, context 131,072), yet a crafted
# file cannot make the loader build a billion layers or a terabyte embedding.
SIZE_LIMITS = {
    "vocab_size": 1 << 20,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 19,
    "num_hidden_layers": 256,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 4096,
    "sliding_window": 1 << 24,
    "max_position_embeddings": 1 << 24,
}
# Real numbers that must be finite and positive (the softcaps too, when given).
POSITIVE_REALS = ("rms_norm_eps", "rope_theta", "rope_local_base_freq", "rope_scaling_factor",
                  "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping")
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass(frozen=True)
class Gemma3Config:
    """Architecture of a Gemma 3 text model. Field names follow Hugging Face's Gemma3TextConfig."""

    vocab_size: int = 262144                  # rows of the (tied) embedding
    hidden_size: int = 640                    # residual stream width
    intermediate_size: int = 2048             # GeGLU inner width
    num_hidden_layers: int = 18               # decoder blocks
    num_attention_heads: int = 4              # query heads
    num_key_value_heads: int = 1              # shared K/V heads (GQA)
    head_dim: int = 256                       # per-head width; NOT hidden_size // heads for Gemma 3
    rms_norm_eps: float = 1e-6                # RMSNorm epsilon
    rope_theta: float = 1_000_000.0           # RoPE base of the full-attention layers
    rope_local_base_freq: float = 10_000.0    # RoPE base of the sliding-window layers
    rope_scaling_factor: float = 1.0          # linear position scaling on full-attention layers (4B+ use 8)
    sliding_window: int = 512                 # a sliding-layer token sees itself and window-1 earlier tokens
    layer_types: tuple[str, ...] = ()         # per layer: "sliding_attention" or "full_attention"
    query_pre_attn_scalar: float = 256.0      # attention scale is query_pre_attn_scalar ** -0.5
    max_position_embeddings: int = 32768      # context limit
    attn_logit_softcapping: float | None = None   # None for Gemma 3
    final_logit_softcapping: float | None = None  # None for Gemma 3
    tie_word_embeddings: bool = True          # output projection is the embedding
    bos_token_id: int = 2
    eos_token_id: int = 1
    pad_token_id: int = 0

    def __post_init__(self):
        # Sizes first: layer_types below is as long as num_hidden_layers.
        problems = [p for name in SIZE_LIMITS if (p := size_problem(name, getattr(self, name)))]
        for name in POSITIVE_REALS:
            value = getattr(self, name)
            if value is None and name.endswith("softcapping"):
                continue
            if not _is_real(value) or not 0 < value < math.inf:
                problems.append(f"{name} must be a finite positive number, got {_show(value)}")
        if not problems:
            for name in TOKEN_IDS:
                value = getattr(self, name)
                if not _is_int(value) or not 0 <= value < self.vocab_size:
                    problems.append(f"{name} must be a token id below vocab_size {self.vocab_size}, "
                                    f"got {_show(value)}")
        if not isinstance(self.tie_word_embeddings, bool):
            problems.append(f"tie_word_embeddings must be true or false, got {_show(self.tie_word_embeddings)}")
        if not isinstance(self.layer_types, (tuple, list)):
            problems.append(f"layer_types must be a list, got {_show(self.layer_types)}")
        if problems:
            raise ValueError("invalid Gemma 3 config: " + "; ".join(problems))
        if not self.layer_types:
            object.__setattr__(self, "layer_types", default_layer_types(self.num_hidden_layers))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                            f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            problems.append(f"head_dim must be even for RoPE, got {self.head_dim}")
        if len(self.layer_types) != self.num_hidden_layers:
            problems.append(f"layer_types has {len(self.layer_types)} entries for "
                            f"{self.num_hidden_layers} layers")
        bad = [t for t in self.layer_types if t not in (SLIDING, FULL)]
        if bad:
            problems.append(f"unknown layer type {_show(bad[0])}")
        if problems:
            raise ValueError("invalid Gemma 3 config: " + "; ".join(problems))

    @property
    def num_parameters(self) -> int:
        """Parameter count (tied embedding counted once)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * d * (2 * self.num_attention_heads + 2 * self.num_key_value_heads) + 2 * d
        mlp = 3 * h * self.intermediate_size
        layer = attn + mlp + 4 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return emb + self.num_hidden_layers * layer + h

    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any]) -> "Gemma3Config":
        """Build from a Hugging Face config.json dict (Gemma3ForCausalLM, or the text part of a multimodal one)."""
        if "text_config" in raw and isinstance(raw["text_config"], Mapping):
            raw = raw["text_config"]
        raw = dict(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        # transformers >= 5 nests RoPE settings per layer type.
        rope_params = raw.pop("rope_parameters", None)
        if isinstance(rope_params, Mapping):
            full = rope_params.get(FULL, rope_params)
            local = rope_params.get(SLIDING, {})
            full, local = (d if isinstance(d, Mapping) else {} for d in (full, local))
            if "rope_theta" in full:
                kwargs["rope_theta"] = _real("rope_parameters.rope_theta", full["rope_theta"])
            if "rope_theta" in local:
                kwargs["rope_local_base_freq"] = _real("rope_parameters.sliding_attention.rope_theta",
                                                       local["rope_theta"])
            if full.get("rope_type") == "linear":
                kwargs["rope_scaling_factor"] = _real("rope_parameters.factor", full.get("factor"))
        scaling = raw.pop("rope_scaling", None)
        if isinstance(scaling, Mapping) and scaling.get("rope_type", scaling.get("type")) == "linear":
            kwargs["rope_scaling_factor"] = _real("rope_scaling.factor", scaling.get("factor"))
        # JSON writes 18 or 18.0 alike: integral numbers become ints here, anything else is refused by name.
        for key in (*SIZE_LIMITS, *TOKEN_IDS):
            if key in raw and not isinstance(raw[key], list):
                raw[key] = _integral(raw[key])
        pattern = raw.pop("sliding_window_pattern", raw.pop("_sliding_window_pattern", None))
        if "layer_types" not in raw and pattern and "num_hidden_layers" in raw:
            n_layers, pattern = raw["num_hidden_layers"], _integral(pattern)
            problem = size_problem("num_hidden_layers", n_layers) or (
                None if _is_int(pattern) and pattern > 0 else
                f"sliding_window_pattern must be a positive integer, got {_show(pattern)}")
            if problem:
                raise ValueError(f"invalid Gemma 3 config: {problem}")
            kwargs["layer_types"] = default_layer_types(n_layers, pattern)
        for key, value in raw.items():
            if key in known:
                kwargs.setdefault(key, value)
            elif key not in _IGNORED_HF_KEYS:
                log.info("config.json: ignoring unknown key %r", key)
        for key in TOKEN_IDS:
            if isinstance(kwargs.get(key), list):     # eos_token_id: [1, 106]
                kwargs[key] = _integral(kwargs[key][0]) if kwargs[key] else None
        activation = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
        if activation != "gelu_pytorch_tanh":
            raise ValueError(f"config.json: unsupported hidden_activation {activation!r}")
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json dict that Hugging Face transformers reads as Gemma3ForCausalLM."""
        out = dataclasses.asdict(self)
        out["layer_types"] = list(self.layer_types)
        factor = out.pop("rope_scaling_factor")
        out["rope_scaling"] = None if factor == 1.0 else {"rope_type": "linear", "factor": factor}
        out.update(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"],
                   hidden_activation="gelu_pytorch_tanh")
        return out


def size_problem(name: str, value) -> str | None:
    """Why `value` is not a plausible `name` (a SIZE_LIMITS field), or None if it is."""
    limit = SIZE_LIMITS[name]
    if not _is_int(value) or not 1 <= value <= limit:
        return f"{name} must be an integer from 1 to {limit}, got {_show(value)}"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integral(value):
    """18.0 -> 18 (JSON has one number type); anything else as it is, for the checks to name."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _real(name: str, value) -> float:
    if not _is_real(value):
        raise ValueError(f"invalid Gemma 3 config: {name} must be a number, got {_show(value)}")
    return float(value)


def _show(value) -> str:
    """repr(value), cut short: a message stays one readable line whatever a file holds."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def default_layer_types(num_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Gemma 3's layout: (pattern - 1) sliding layers then one full layer, repeated."""
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers))


_IGNORED_HF_KEYS = {
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "initializer_range", "attention_bias", "attention_dropout", "hidden_act", "hidden_activation",
    "use_bidirectional_attention", "_name_or_path", "cache_implementation",
}
