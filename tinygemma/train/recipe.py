"""The chat model's recipe: instruction data -> a seeded mixture -> LoRA on every block -> the adapter.

`tinygemma chat-train --source ../shared/data/instruct --out runs/chat` runs it whole; every stage is skipped
when its output is already there, and the training stage continues its checkpoint, so the same command resumes
a run that was stopped. docs/chat_model.md gives the figures of the adapter that ships (tinygemma/chat/).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TinyGemmaError
from ..files import atomic_write_text
from ..jsonl import read_jsonl

# Conversations of each kind in the mixture. A kind is a row's "source" (a prefix of it: "flan_cot" takes every
# FLAN set) and whether it carries verifiable instructions ("+c"). ~100 trained tokens/s on 2 cores (AVX-512 class)
# make ~2,500 conversations of ~200 tokens about 80 minutes, so the mixture leans on what the base model lacks:
# answering and stopping (every row), keeping to explicit instructions (the constrained rows: every GPTeacher,
# OASST and Self-Instruct one, whose answers are written prose, then FLAN), the story page's prompts, and
# multi-turn chat (all OASST paths). FLAN stays a minority: a pilot with 45% FLAN ended a haiku with "So the
# answer is the sea." (its chain-of-thought format).
MIXTURE = {
    "gpteacher/roleplay+c": 672,
    "oasst+c": 25,
    "self_instruct+c": 123,
    "flan_cot+c": 400,
    "stories": 280,
    "gpteacher/roleplay": 200,
    "oasst": 334,
    "self_instruct": 293,
    "gpteacher/codegen": 60,
    "flan_cot/gsm8k": 100,
}

# Optimizer steps of 8 conversations: 1,760 of the mixture's 2,487 (a seeded ~70%), what fits ~80 minutes of 2
# AVX-512-class cores; one pass would take ~95.
STEPS = 220

# The training settings of the recipe (TrainConfig keys).
TRAIN = dict(task="chat", method="lora", rank=16, alpha=32.0, dropout=0.05, lr=4e-4, warmup_steps=20,
             batch_size=8, grad_accum=1, max_length=512, group_by_length=True, eval_every=100, eval_max=64,
             save_every=20, weight_decay=0.0, max_grad_norm=1.0)


SHIP_DIR = "chat_adapter"       # in the run folder: the adapter as tinygemma/chat/ ships it


class RecipeError(TinyGemmaError, ValueError):
    """The recipe's input is missing or too small; the message names the file."""


@dataclass
class MixtureReport:
    taken: dict[str, int] = field(default_factory=dict)
    total: int = 0


def kind_matches(kind: str, row: dict) -> bool:
    name, constrained = (kind[:-2], True) if kind.endswith("+c") else (kind, False)
    source = row.get("source", "")
    return (source == name or source.startswith(name + "/")) and bool(row.get("constraints")) == constrained


def build_mixture(train_jsonl: str | Path, out: str | Path, seed: int = 0, scale: float = 1.0,
                  mixture: dict[str, int] = MIXTURE) -> MixtureReport:
    """Draw each kind's count (times `scale`, at least 1 where the kind exists) from chat-data's train.jsonl,
    seeded; a row is drawn once, by the first kind that matches it in MIXTURE's order; the result is shuffled."""
    rows = [row for _, row in read_jsonl(Path(train_jsonl), RecipeError)]
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    taken: set[int] = set()
    picked: list[dict] = []
    report = MixtureReport()
    for kind, count in mixture.items():
        want = max(1, round(count * scale))
        got = 0
        for i in order:
            if got == want:
                break
            if i not in taken and kind_matches(kind, rows[i]):
                taken.add(i)
                picked.append(rows[i])
                got += 1
        report.taken[kind] = got
    if len(picked) < TRAIN["batch_size"]:
        raise RecipeError(f"{train_jsonl}: only {len(picked)} conversations match the recipe's mixture")
    rng.shuffle(picked)
    report.total = len(picked)
    atomic_write_text(Path(out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked))
    return report


def compact_adapter(src: str | Path, dst: str | Path, base_model: str = "base") -> Path:
    """The trained adapter as it ships: LoRA factors in bfloat16 (half the bytes; the fast path's int8
    conversion after the merge dwarfs the rounding) and the base named by its shipped name, not a cache path."""
    import torch

    from .lora import read_adapter, save_adapter

    adapter = read_adapter(src)
    adapter.config.base_model = base_model
    return save_adapter(dst, adapter.config, adapter.factors, adapter.head, dtype=torch.bfloat16)
