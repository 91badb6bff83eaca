"""tinygemma chat-data SOURCE_DIR --out DIR: chat-format instruction data (train/valid jsonl + data card)."""

from __future__ import annotations

import shlex
import sys

DEFAULT_MAX_TOKENS = 512
DEFAULT_CONSTRAINT_SHARE = 0.35


def build_parser(p):
    p.add_argument("source", metavar="SOURCE_DIR",
                   help="folder of instruction sets laid out as ../shared/data/instruct (flan_cot/, gpteacher/, "
                        "self_instruct/, oasst/)")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/train.jsonl, valid.jsonl, DATA_CARD.md")
    p.add_argument("--ifeval", metavar="JSONL",
                   help="IFEval's input_data.jsonl: rows sharing an 8-word sequence with its prompts are dropped "
                        "(default: SOURCE_DIR/../ifeval/input_data.jsonl when it exists)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"tokens per conversation at most, chat template included (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--constraint-share", type=float, default=DEFAULT_CONSTRAINT_SHARE,
                   help="share of single-turn examples given verifiable instructions "
                        f"(default {DEFAULT_CONSTRAINT_SHARE})")
    p.add_argument("--sources",
                   help="comma-separated subset: flan_cot, gpteacher, self_instruct, oasst, chitchat, stories")
    p.add_argument("--no-chitchat", action="store_true", help="leave out the chitchat-dataset conversations")
    p.add_argument("--stories", type=int, default=2000,
                   help="story-page conversations to compose (default 2000; 0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", metavar="PATH", help="whose tokenizer counts tokens (default: the embedded model)")
    return p


def main(args) -> int:
    from pathlib import Path

    from ..files import check_writable_dir
    from ..train.chatdata import build
    from .tokenize import load_tokenizer

    check_writable_dir(args.out, "--out")
    ifeval = args.ifeval
    if ifeval is None:
        guess = Path(args.source).resolve().parent / "ifeval" / "input_data.jsonl"
        ifeval = guess if guess.is_file() else None
    sources = [s.strip() for s in args.sources.split(",") if s.strip()] if args.sources else None
    report = build(args.source, load_tokenizer(args.model), args.out, max_tokens=args.max_tokens, seed=args.seed,
                   constraint_share=args.constraint_share, ifeval=ifeval, sources=sources,
                   chitchat=not args.no_chitchat, stories=args.stories, command="tinygemma " + shlex.join(sys.argv[1:]))
    print(f"{report.train} training + {report.valid} held-out conversations ({report.multi_turn} multi-turn, "
          f"{report.constrained_examples} with verifiable instructions) -> {args.out}", file=sys.stderr)
    if ifeval is None:
        print("tinygemma: warning: no IFEval prompts given (--ifeval): overlap not checked", file=sys.stderr)
    return 0
