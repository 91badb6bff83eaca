"""A fine-tuning run's training loss and held-out accuracy against wall-clock minutes, from its metrics.jsonl.

    python bench/plot_finetune.py b77long/metrics.jsonl docs/finetune_banking77.png --title "banking77"
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", help="metrics.jsonl of a tinygemma finetune run")
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--title", default="fine-tuning")
    ap.add_argument("--window", type=int, default=50, help="steps in the training loss's moving average")
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.metrics, encoding="utf-8") if line.strip()]
    train = [r for r in rows if "loss" in r]
    held = [r for r in rows if "eval_loss" in r]
    minutes = [r["seconds"] / 60 for r in train]
    losses = [r["loss"] for r in train]
    smooth = [sum(losses[max(0, i - args.window + 1):i + 1]) / len(losses[max(0, i - args.window + 1):i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(minutes, losses, color="tab:blue", alpha=0.2, linewidth=0.8)
    ax.plot(minutes, smooth, color="tab:blue", label=f"training loss ({args.window}-step mean)")
    ax.plot([r["seconds"] / 60 for r in held], [r["eval_loss"] for r in held], "o-", color="tab:orange",
            label="held-out loss")
    ax.set_xlabel("minutes of training (wall clock)")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    if held and "eval_accuracy" in held[0]:
        acc = ax.twinx()
        acc.plot([r["seconds"] / 60 for r in held], [100 * r["eval_accuracy"] for r in held], "s-",
                 color="tab:green", label="held-out accuracy")
        acc.set_ylabel("held-out accuracy (%)")
        acc.set_ylim(0, 100)
        acc.axhline(90, color="tab:green", linestyle=":", linewidth=1)
        acc.legend(loc="lower right")
    ax.set_ylim(bottom=1e-3)
    ax.legend(loc="lower left")
    ax.set_title(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
