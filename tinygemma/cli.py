"""`tinygemma SUBCOMMAND ...`: dispatches to tinygemma.commands.<name>; turns errors into one-line messages."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import TinyGemmaError

COMMANDS = {
    "generate": "continue a prompt, streaming the text",
    "chat": "interactive multi-turn chat with the Gemma 3 chat template",
    "tokenize": "show the token ids of a text",
    "info": "describe a model file: architecture, tensor types, parameter counts",
    "bench": "speed: tinygemma vs llama.cpp side by side",
    "eval": "evaluate: IFEval, perplexity of a text file, classification metrics, slot extraction (restaurant8k)",
    "serve": "OpenAI-compatible HTTP server: many conversations at once, structured output",
    "story": "the story generator web page: starts the server and prints (or opens) its address",
    "finetune": "fine-tune (LoRA or full) on a .jsonl/.csv file: language modelling or classification",
    "classify": "predict the labels of a .csv/.jsonl file with a fine-tuned classifier",
    "export": "write a model (with a LoRA adapter merged) as GGUF or a Hugging Face directory",
    "chat-data": "build chat-format instruction data (jsonl + data card) from instruction sets",
    "chat-train": "the chat model's recipe in one command: instruction data, mixture, LoRA training (resumable)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinygemma", description="Gemma 3 on your own machine.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f".commands.{name.replace('-', '_')}", __package__)
        module.build_parser(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f".commands.{args.command.replace('-', '_')}", __package__)
    try:
        return module.main(args) or 0
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (TinyGemmaError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"tinygemma: error: {msg}", file=sys.stderr)
        return 1
