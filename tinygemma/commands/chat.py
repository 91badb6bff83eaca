"""tinygemma chat: multi-turn chat in the terminal with the Gemma 3 chat template."""

from __future__ import annotations

import sys

from .common import add_model_args, add_sampling_args, load_model, sampling_kwargs

HELP = "Type a message; /reset starts over, /exit (or Ctrl-D) quits."


def build_parser(p):
    add_model_args(p, default="chat")
    add_sampling_args(p)
    p.add_argument("--system", help="system message (merged into the first user turn, as Gemma 3 does)")
    return p


def main(args) -> int:
    lm = load_model(args, default="chat")
    interactive = sys.stdin.isatty()
    if not lm.is_instruction_tuned:
        print("note: this is a base (pretrained) model: it continues text rather than following instructions. "
              "Leave out --model for tinygemma's instruction-tuned model, or pass instruction-tuned weights.", file=sys.stderr)
    if interactive:
        print(HELP, file=sys.stderr)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    kwargs = sampling_kwargs(args)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            messages = messages[:1] if args.system else []
            print("(conversation reset)", file=sys.stderr)
            continue
        messages.append({"role": "user", "content": text})
        reply = []
        for chunk in lm.chat_stream(messages, **kwargs):
            reply.append(chunk.text)
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
    return 0
