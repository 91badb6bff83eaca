"""Cost of one fine-tuning step on the default model under several settings (same batches for each):
bfloat16 autocast vs float32, gradient checkpointing, LoRA on the last 6 blocks only.

    OMP_NUM_THREADS=2 python bench/finetune_speed.py ../shared/data/banking77/train.csv --label-column category

Prints the CPU (model, features, whether it has native bfloat16, the kernel path) and then wall and CPU seconds of
each of --steps steps per setting (a classification head on banking77 by default). `--settings default,fp32`
runs a subset; "default" is what `tinygemma finetune` does with no precision flag on this CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import tinygemma
from tinygemma.kernels import describe
from tinygemma.train.trainer import TrainConfig, Trainer

SETTINGS = {
    "default": {},
    "bf16": {"bf16": True},
    "bf16+checkpointing": {"bf16": True, "gradient_checkpointing": True},
    "fp32": {"bf16": False},
    "bf16 lora-layers 6": {"bf16": True, "lora_layers": 6},
    "fp32 lora-layers 6": {"bf16": False, "lora_layers": 6},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names of SETTINGS")
    args = ap.parse_args()
    print("machine", json.dumps(describe()), flush=True)
    base = tinygemma.load(dtype="float32")
    for name in args.settings.split(","):
        overrides = SETTINGS[name]
        cfg = TrainConfig(data=args.data, label_column=args.label_column, task="classify-head", out="/tmp/ft_speed",
                          steps=args.steps, batch_size=args.batch_size, eval_max=8, progress=False, dropout=0.0,
                          **overrides)
        trainer = Trainer(cfg, lm=copy.deepcopy(base))
        times = []
        for step in range(args.steps):
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.train_step(step)
            times.append({"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)})
        print(name, f"({'bfloat16 autocast' if trainer.bf16 else 'float32'})", json.dumps(times), flush=True)


if __name__ == "__main__":
    main()
