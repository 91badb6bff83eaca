"""tinygemma export OUT: a model with a LoRA adapter merged, as GGUF or a Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

import torch

from ..export.gguf import WRITABLE_TYPES
from ..files import check_writable_dir, check_writable_file

HF_TYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def build_parser(p):
    p.add_argument("out", help="output .gguf file, or directory for --format hf. An existing file is replaced "
                   "(as llama.cpp's convert script and save_pretrained do), but only once the new one is "
                   "completely written: a full disk or Ctrl-C leaves the old one")
    p.add_argument("--model", metavar="PATH", help="weights: a GGUF file, a Hugging Face directory, or a shipped model, 'base' (the default, "
                        "the embedded Gemma 3 270M) or 'chat' (tinygemma's instruction-tuned 270M)")
    p.add_argument("--adapter", metavar="PATH", help="LoRA adapter directory to merge (from 'tinygemma finetune')")
    p.add_argument("--format", choices=["gguf", "hf"], default="gguf")
    p.add_argument("--type", default="F16", type=str.upper,
                   help=f"tensor type: GGUF {', '.join(WRITABLE_TYPES)}; hf {', '.join(HF_TYPES)} (default F16)")
    return p


def main(args) -> int:
    from ..models import model_id, resolve
    from ..train.lora import merge_adapters
    from ..weights import load_weights

    allowed = WRITABLE_TYPES if args.format == "gguf" else tuple(HF_TYPES)
    if args.type not in allowed:
        raise ValueError(f"--type {args.type} is not writable as {args.format} (choose from {', '.join(allowed)})")
    check_output(Path(args.out), args.format)         # before minutes of loading and merging
    resolved = resolve(args.model, args.adapter)
    adapter = resolved.adapters[-1] if args.adapter else None
    weights = load_weights(resolved.source)
    tensors = merge_adapters(weights.tensors, resolved.adapters)
    if args.format == "gguf":
        from ..export.gguf import save_gguf

        name = model_id(resolved)
        save_gguf(args.out, weights.config, tensors, weights.tokenizer, tensor_type=args.type, name=name)
    else:
        from ..export.safetensors import save_hf_dir

        save_hf_dir(args.out, weights.config, tensors, weights.tokenizer, dtype=HF_TYPES[args.type])
    if adapter is not None and adapter.head is not None:
        print("note: the classification head is not exported (GGUF and the causal-LM layout have no place for it); "
              "classify with the base model and --adapter")
    print(f"wrote {args.out}")
    return 0


def check_output(out: Path, fmt: str) -> None:
    """The output can be written: a file path (not a directory) for GGUF, a directory (not a file) for hf,
    in a writable parent folder (created when missing)."""
    if fmt == "gguf":
        check_writable_file(out, "output file")
    elif out.exists():
        check_writable_dir(out, "output directory")
    else:
        check_writable_file(out, "output directory")      # only its parent folder is checked (and created)
