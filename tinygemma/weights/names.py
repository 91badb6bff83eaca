"""The one table between Hugging Face and GGUF tensor names (serves loading and export).

Our model's parameter names are Hugging Face's Gemma3ForCausalLM names without the "model." prefix.
"""

from __future__ import annotations

# (our name, GGUF name, is an RMSNorm weight). "{i}" is the layer index.
GLOBAL_TENSORS = [
    ("embed_tokens.weight", "token_embd.weight", False),
    ("norm.weight", "output_norm.weight", True),
]
LAYER_TENSORS = [
    ("layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight", True),
    ("layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight", False),
    ("layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight", False),
    ("layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight", False),
    ("layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight", False),
    ("layers.{i}.self_attn.q_norm.weight", "blk.{i}.attn_q_norm.weight", True),
    ("layers.{i}.self_attn.k_norm.weight", "blk.{i}.attn_k_norm.weight", True),
    ("layers.{i}.post_attention_layernorm.weight", "blk.{i}.post_attention_norm.weight", True),
    ("layers.{i}.pre_feedforward_layernorm.weight", "blk.{i}.ffn_norm.weight", True),
    ("layers.{i}.post_feedforward_layernorm.weight", "blk.{i}.post_ffw_norm.weight", True),
    ("layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight", False),
    ("layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight", False),
    ("layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight", False),
]
# Present only in untied checkpoints.
UNTIED_OUTPUT = ("lm_head.weight", "output.weight", False)

# Prefixes under which Hugging Face checkpoints keep the text model's tensors.
HF_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
# Tensors of multimodal checkpoints that a text model does not use.
HF_IGNORED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                       "model.multi_modal_projector.")


def tensor_table(num_layers: int, tied: bool = True) -> list[tuple[str, str, bool]]:
    """All (our name, GGUF name, is_norm) rows for a model with `num_layers` layers."""
    rows = list(GLOBAL_TENSORS)
    for i in range(num_layers):
        rows += [(ours.format(i=i), g.format(i=i), norm) for ours, g, norm in LAYER_TENSORS]
    if not tied:
        rows.append(UNTIED_OUTPUT)
    return rows


def hf_to_ours(name: str) -> str | None:
    """Strip a Hugging Face prefix; None for tensors a text model ignores (vision tower...)."""
    if name.startswith(HF_IGNORED_PREFIXES):
        return None
    if name == "lm_head.weight" or name == "language_model.lm_head.weight":
        return "lm_head.weight"
    for prefix in HF_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name
