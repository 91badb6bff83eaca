"""tinygemma generate PROMPT: stream a continuation to stdout."""

from __future__ import annotations

import sys

from .common import add_model_args, add_sampling_args, load_model, sampling_kwargs


def build_parser(p):
    p.add_argument("prompt", help="text to continue ('-' reads it from standard input)")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as one user turn of the chat template")
    p.add_argument("--verbose", "-v", action="store_true", help="print token counts and speeds to stderr")
    return p


def main(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    lm = load_model(args)
    kwargs = sampling_kwargs(args)
    chunks = (lm.chat_stream([{"role": "user", "content": prompt}], **kwargs) if args.chat
              else lm.stream_generate(prompt, **kwargs))
    last = None
    for last in chunks:
        sys.stdout.write(last.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if args.verbose and last is not None:
        print(f"prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tok/s | generated: "
              f"{last.generated_tokens} tokens, {last.generation_tps:.1f} tok/s | finish: {last.finish_reason}",
              file=sys.stderr)
    return 0
