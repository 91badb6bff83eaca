"""Flags shared by several subcommands."""

from __future__ import annotations

import argparse

# Gemma's recommended sampling settings.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_K = 64
DEFAULT_TOP_P = 0.95
DEFAULT_MAX_TOKENS = 256


def add_model_args(p: argparse.ArgumentParser, default: str = "base") -> None:
    what = ("tinygemma's instruction-tuned 270M, 'chat'" if default == "chat" else
            "the embedded Gemma 3 270M, 'base'")
    p.add_argument("--model", metavar="PATH",
                   help=f"GGUF file, Hugging Face directory, or a shipped model: 'chat' or 'base' (default: {what})")
    p.add_argument("--dtype", choices=["fast", "float32", "bfloat16"],
                   help="fast (default: int8/int4 weights), float32 (exact) or bfloat16")
    p.add_argument("--adapter", metavar="PATH", help="LoRA adapter directory from 'tinygemma finetune', merged at load")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="0 = off")
    p.add_argument("--top-p", type=float, default=DEFAULT_TOP_P)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--seed", type=int, help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")


def sampling_kwargs(args) -> dict:
    return dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                seed=args.seed, stop=args.stop)


def load_model(args, default: str = "base"):
    from ..lm import load

    return load(args.model, dtype=args.dtype, adapter=args.adapter, default=default)
