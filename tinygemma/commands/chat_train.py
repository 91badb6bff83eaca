"""tinygemma chat-train --source DIR --out DIR: the chat model's whole recipe in one command, resumable.

Stages (each skipped when its output exists, so rerunning the same command continues a stopped run):
  OUT/data/       chat-format data (`tinygemma chat-data`)
  OUT/mixture.jsonl   the seeded mixture of tinygemma.train.recipe.MIXTURE
  OUT/train/      LoRA fine-tuning (`tinygemma finetune --task chat`): checkpoint, metrics, loss.png, adapter/
  OUT/chat_adapter/   the adapter as it ships (bfloat16 factors): tinygemma/chat/ holds these two files
"""

from __future__ import annotations

import json
import shlex
import sys

from ..train.recipe import STEPS


def build_parser(p):
    p.add_argument("--source", required=True, metavar="DIR",
                   help="instruction sets laid out as ../shared/data/instruct (see tinygemma chat-data)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: data/, mixture.jsonl, train/")
    p.add_argument("--model", metavar="PATH", help="base weights (default: the embedded Gemma 3 270M)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps of 8 conversations (default {STEPS})")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every count of the mixture (default 1; small values make a quick trial run)")
    p.add_argument("--stories", type=int, default=2000, help="story-page conversations to compose (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the mixture and the training (default 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(args) -> int:
    from pathlib import Path

    from ..files import atomic_write_text, check_writable_dir
    from ..train.chatdata import build
    from ..train.recipe import SHIP_DIR, TRAIN, RecipeError, build_mixture, compact_adapter
    from ..train.trainer import CHECKPOINT, TrainConfig, Trainer
    from .tokenize import load_tokenizer

    if args.scale <= 0:
        raise RecipeError(f"--scale must be positive, got {args.scale}")
    if args.steps is not None and args.steps < 1:
        raise RecipeError(f"--steps must be at least 1, got {args.steps}")
    out = Path(args.out)
    check_writable_dir(out, "--out")
    source = Path(args.source)
    data = out / "data"
    if not (data / "train.jsonl").is_file() or not (data / "valid.jsonl").is_file():
        guess = source.resolve().parent / "ifeval" / "input_data.jsonl"
        print(f"tinygemma: [1/3] chat data from {source} -> {data}", file=sys.stderr)
        build(source, load_tokenizer(args.model), data, seed=args.seed, stories=args.stories,
              ifeval=guess if guess.is_file() else None,
              command="tinygemma " + shlex.join(sys.argv[1:]))
    mixture = out / "mixture.jsonl"
    if not mixture.is_file():
        report = build_mixture(data / "train.jsonl", mixture, seed=args.seed, scale=args.scale)
        atomic_write_text(out / "mixture.json", json.dumps({"total": report.total, "taken": report.taken}, indent=1) + "\n")
        print(f"tinygemma: [2/3] mixture of {report.total} conversations -> {mixture}", file=sys.stderr)
    train = out / "train"
    resume = (train / CHECKPOINT).is_file()
    # Held out: chat-data's valid.jsonl; a source too small to have one holds out 5% of the mixture instead.
    valid = data / "valid.jsonl"
    held_out = dict(eval_data=str(valid)) if valid.stat().st_size else dict(eval_data=None, eval_fraction=0.05)
    cfg = TrainConfig.from_dict(dict(TRAIN, data=str(mixture), **held_out, out=str(train),
                                     model=args.model, steps=args.steps, seed=args.seed, resume=resume,
                                     progress=args.progress), "recipe")
    trainer = Trainer(cfg)
    print(f"tinygemma: [3/3] {'resuming' if resume else 'training'}: {trainer.total_steps} steps of "
          f"{trainer.global_batch} conversations, LoRA rank {cfg.rank} on every block -> {train}", file=sys.stderr)
    try:
        summary = trainer.run()
    finally:
        trainer.dist.close()
    shipped = compact_adapter(train / "adapter", out / SHIP_DIR, "base" if args.model is None else args.model)
    print(json.dumps(summary))
    print(f"adapter in {shipped} (tinygemma chat --model base --adapter {shipped}); the chat model that "
          f"tinygemma ships is this folder's files in tinygemma/chat/")
    return 0
