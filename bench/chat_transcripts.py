"""Example transcripts of the chat model and the base model on the same conversations (docs/chat_model.md).

    python bench/chat_transcripts.py [--out bench/results/chat_model/transcripts.md] [--max-tokens 256]

Greedy decoding, the Gemma 3 chat template for both models; each reply is marked with how it ended ("stop": the
model's <end_of_turn>; "length": the token limit). A follow-up turn is sent after the model's own reply.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import tinygemma

CONVERSATIONS = [
    ["Extract the person's name and city from this sentence and answer with JSON only, keys \"name\" and "
     "\"city\": Maria Lopez moved to Lisbon in 2019 to open a bakery."],
    ["I have a job interview tomorrow for a library assistant position. Give me three short tips.",
     "Thanks! Which of the three matters most, in one sentence?"],
    ["Write a short funny story about a shy penguin in a lighthouse that learns to whistle."],
]


def transcript(lm, turns: list[str], max_tokens: int) -> list[tuple[str, str, str]]:
    messages, out = [], []
    for user in turns:
        messages.append({"role": "user", "content": user})
        chunks = list(lm.chat_stream(messages, max_tokens=max_tokens))
        reply = "".join(c.text for c in chunks)
        messages.append({"role": "assistant", "content": reply})
        out.append((user, reply, chunks[-1].finish_reason))
    return out


def quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.strip().split("\n"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/chat_model/transcripts.md")
    p.add_argument("--max-tokens", type=int, default=256)
    args = p.parse_args()
    models = {"chat": tinygemma.load("chat"), "base": tinygemma.load("base")}
    lines = [f"Greedy, chat template, at most {args.max_tokens} tokens a reply.", ""]
    for i, turns in enumerate(CONVERSATIONS, 1):
        lines += [f"### Transcript {i}", ""]
        for name, lm in models.items():
            lines += [f"**{name}**", ""]
            for user, reply, reason in transcript(lm, turns, args.max_tokens):
                lines += [f"*user:* {user}", "", f"*{name}* ({reason}):", "", quote(reply), ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
