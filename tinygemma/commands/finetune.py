"""tinygemma finetune: LoRA or full fine-tuning from flags and/or a YAML file (flags win).

Data-parallel: `torchrun --nproc-per-node N -m tinygemma finetune ...` (gloo on CPU; also multi-node).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..files import check_regular_file
from ..train.trainer import METHODS, TASKS, TrainConfig

# (flag, type, help); every flag maps to the TrainConfig field of the same name (dashes -> underscores).
FLAGS = (
    ("--data", str, "training file: .jsonl (text, prompt/completion, messages, or text+label) or .csv"),
    ("--out", str, f"output directory (default {TrainConfig.out}); its files are replaced atomically at each save"),
    ("--model", str, "weights to tune: .gguf, Hugging Face directory, 'base' (default: the embedded Gemma 3 270M) or 'chat' "
                "(tinygemma's instruction-tuned 270M)"),
    ("--rank", int, f"LoRA rank (default {TrainConfig.rank})"),
    ("--alpha", float, f"LoRA alpha; updates are scaled by alpha/rank (default {TrainConfig.alpha})"),
    ("--lora-layers", int, "LoRA on the last N blocks only (default: all); the backward pass stops there"),
    ("--dropout", float, f"LoRA dropout (default {TrainConfig.dropout})"),
    ("--text-column", str, "classification: the text column (default text)"),
    ("--label-column", str, "classification: the label column (default label)"),
    ("--eval-data", str, "held-out file (default: a random --eval-fraction of the training rows)"),
    ("--eval-fraction", float, f"share of the rows held out (default {TrainConfig.eval_fraction})"),
    ("--eval-max", int, f"held-out rows at most (default {TrainConfig.eval_max})"),
    ("--eval-every", int, f"evaluate every N steps; 0: only at the end (default {TrainConfig.eval_every})"),
    ("--max-length", int, f"tokens per example at most (default {TrainConfig.max_length})"),
    ("--batch-size", int, f"examples per micro-batch and process (default {TrainConfig.batch_size})"),
    ("--grad-accum", int, "micro-batches per optimizer step (default 1)"),
    ("--steps", int, "optimizer steps (default: --epochs over the data)"),
    ("--epochs", float, "passes over the training data (default 1)"),
    ("--lr", float, "peak learning rate (default 2e-4 for LoRA, 2e-5 for full)"),
    ("--weight-decay", float, "AdamW weight decay (default 0)"),
    ("--warmup-steps", int, "linear warmup steps before the cosine decay (default 0)"),
    ("--max-grad-norm", float, f"gradient clipping; 0: off (default {TrainConfig.max_grad_norm})"),
    ("--save-every", int, f"checkpoint every N steps; 0: only at the end (default {TrainConfig.save_every})"),
    ("--seed", int, "seed for initialization, data order and dropout (default 0)"),
)


def build_parser(p):
    p.add_argument("--config", metavar="YAML", help="YAML file with TrainConfig keys (flags override it)")
    for flag, kind, help_text in FLAGS:
        p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)
    p.add_argument("--task", choices=TASKS, default=argparse.SUPPRESS,
                   help="lm (default): language modelling (text, prompt/completion or messages rows); chat: "
                        "messages rows only, the loss on the assistant turns; classify-head: classification head on "
                        "the last token; classify-lm: generative labels")
    p.add_argument("--method", choices=METHODS, default=argparse.SUPPRESS, help="lora (default) or full")
    p.add_argument("--targets", default=argparse.SUPPRESS,
                   help="comma-separated projections that get LoRA (default: all seven of each block)")
    p.add_argument("--bf16", dest="bf16", action="store_true", default=argparse.SUPPRESS,
                   help="bfloat16 autocast even where the CPU only emulates bfloat16 (default: only where it has "
                        "it natively: AVX512_BF16, AMX or ARM BF16)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", default=argparse.SUPPRESS,
                   help="train in float32 (the default on CPUs without native bfloat16)")
    p.add_argument("--gradient-checkpointing", action="store_true", default=argparse.SUPPRESS,
                   help="recompute each block in the backward pass (less memory, ~30%% more time)")
    p.add_argument("--group-by-length", action="store_true", default=argparse.SUPPRESS,
                   help="batch examples of similar length together (less padding, same examples per epoch)")
    p.add_argument("--resume", action="store_true", default=argparse.SUPPRESS,
                   help="continue from the checkpoint in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                   help="no progress bar")
    return p


def read_yaml(path: str) -> dict:
    try:
        import yaml
    except ImportError:
        raise ValueError("--config needs PyYAML: pip install 'tinygemma[train]'") from None
    check_regular_file(path, "config file")
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the YAML must be a mapping of settings")
    return values


def main(args) -> int:
    from ..kernels import native_bf16
    from ..train.trainer import Trainer

    values = read_yaml(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k not in ("command", "config")})
    cfg = TrainConfig.from_dict(values, args.config or "flags")
    trainer = Trainer(cfg)
    if trainer.dist.main:
        print(f"tinygemma: {len(trainer.train)} training / {len(trainer.held_out)} held-out examples, "
              f"{trainer.total_steps} steps of {trainer.global_batch} examples on {trainer.dist.world} process(es), "
              f"{sum(p.numel() for p in trainer.params):,} trainable parameters, "
              f"{'bfloat16 autocast' if trainer.bf16 else 'float32'} "
              f"({'forced' if cfg.bf16 is not None else 'native bfloat16: ' + ('yes' if native_bf16() else 'no')})")
    try:
        summary = trainer.run()
    finally:
        trainer.dist.close()
    if trainer.dist.main:
        print(json.dumps(summary))
        print(f"outputs in {cfg.out}/")
    return 0
