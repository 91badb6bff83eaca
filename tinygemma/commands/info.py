"""tinygemma info: architecture, tensor types, parameter counts and file size of a model, and the CPU path the
fast model runs on here (kernel path, CPU features, native bfloat16)."""

from __future__ import annotations

import dataclasses
import json


def build_parser(p):
    p.add_argument("--model", metavar="PATH", help="GGUF file, Hugging Face directory, 'base' or 'chat' (default: the embedded model)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def describe(path) -> dict:
    from .. import kernels
    from ..weights import load_weights
    from ..weights.default import default_model_path

    from ..models import is_name

    # Headers only: no tensor data read. A shipped name describes its weights file (the chat adapter is a LoRA).
    w = load_weights(default_model_path() if not path or is_name(path) else path, tensors=False)
    cfg = w.config
    emb = cfg.vocab_size * cfg.hidden_size
    total = cfg.num_parameters
    return {
        "path": str(w.source),
        "format": w.format,
        "architecture": "gemma3",
        "name": w.metadata.get("general.name"),
        "file_size_bytes": w.file_size,
        "tensor_types": w.tensor_types,
        "parameters": {"total": total, "embedding": emb, "non_embedding": total - emb},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "tokenizer": {"vocab_size": w.tokenizer.vocab_size, "bos_id": w.tokenizer.bos_id,
                      "eos_id": w.tokenizer.eos_id, "stop_ids": sorted(w.tokenizer.stop_ids)},
        "runtime": kernels.describe(),
    }


def runtime_line(r: dict) -> str:
    path = r["kernel_path"]
    how = ("PyTorch kernels" if path == "pytorch" else
           f"native {path} kernels" + ("" if r["threaded"] else ", one thread (no OpenMP)"))
    forced = f", forced by TINYGEMMA_KERNELS={r['forced']}" if r["forced"] else ""
    return (f"cpu path:      {how}{forced}; CPU {r['cpu']} ({r['machine']}): {' '.join(r['features']) or '-'}; "
            f"native bfloat16: {'yes' if r['native_bf16'] else 'no'}")


def main(args) -> int:
    d = describe(args.model)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    cfg, p = d["config"], d["parameters"]
    full = [i for i, t in enumerate(cfg["layer_types"]) if t == "full_attention"]
    lines = [
        f"path:          {d['path']} ({d['format']}, {d['file_size_bytes'] / 2**20:.1f} MiB)",
        f"model:         {d['name'] or 'Gemma 3'} (architecture gemma3)",
        f"parameters:    {p['total'] / 1e6:.1f} M total = {p['embedding'] / 1e6:.1f} M embedding "
        f"+ {p['non_embedding'] / 1e6:.1f} M other",
        f"layers:        {cfg['num_hidden_layers']} (full attention on {full}, others sliding window "
        f"{cfg['sliding_window']})",
        f"widths:        hidden {cfg['hidden_size']}, ffn {cfg['intermediate_size']}, heads "
        f"{cfg['num_attention_heads']} (kv {cfg['num_key_value_heads']}) x {cfg['head_dim']}",
        f"rope:          base {cfg['rope_theta']:g} (full) / {cfg['rope_local_base_freq']:g} (sliding)",
        f"context:       {cfg['max_position_embeddings']} tokens; vocabulary {cfg['vocab_size']}",
        "tensor types:  " + ", ".join(f"{k} x{v}" for k, v in sorted(d["tensor_types"].items())),
        runtime_line(d["runtime"]),
    ]
    print("\n".join(lines))
    return 0
