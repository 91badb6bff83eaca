"""Sample stories of the default model through POST /v1/story (the page's own path), written to docs/stories.md.

    python bench/stories.py [--out docs/stories.md]

The five requests run at once on one engine, as five readers of the page would.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlencode

from fastapi.testclient import TestClient

import tinygemma
from tinygemma.engine import Engine
from tinygemma.server import create_app
from tinygemma.story import LENGTHS

SAMPLES = [
    ({"character": "a curious cat", "setting": "in a magical forest", "twist": "finds a glowing key",
      "theme": "friendship", "length": "short"}, 1),
    ({"character": "a friendly robot", "setting": "on a distant planet", "twist": "catches a falling star",
      "theme": "adventure", "length": "short"}, 7),
    ({"character": "a sleepy bear", "setting": "at the snowy North Pole", "twist": "receives a surprise gift",
      "theme": "calm bedtime", "length": "medium"}, 42),
    ({"character": "a little dragon", "setting": "in an old castle", "twist": "finds a magic hat",
      "theme": "funny", "length": "short"}, 3),
    ({"character": "a shy penguin", "setting": "in a lighthouse", "twist": "learns to whistle",
      "theme": "courage", "length": "long"}, 11),
]


def write_story(client: TestClient, choices: dict, seed: int) -> dict:
    start = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/story", json={**choices, "seed": seed}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "title" in event:
                title = event["title"]
            elif first is None:
                first = time.perf_counter()
            if "story" in event:
                return {"choices": choices, "seed": seed, "title": title, "story": event["story"],
                        "finish_reason": event["finish_reason"], "tokens": event["usage"]["completion_tokens"],
                        "seconds": time.perf_counter() - start, "ttft": first - start}
    raise RuntimeError("the stream ended without a story")


def page_link(choices: dict, seed: int) -> str:
    return "/?" + urlencode({**choices, "seed": seed}, quote_via=quote)


def markdown(results: list[dict]) -> str:
    lines = ["# Sample stories of the default model",
             "",
             "Gemma 3 270M base (the embedded Q4_K_M weights, fast path) through `POST /v1/story`, the page's own",
             "path: the story-book prompt of `tinygemma/story.py`, temperature 0.8, top-k 64, top-p 0.95,",
             "repetition penalty 1.05. Made by `python bench/stories.py` (the five requests at once on one",
             "engine). The same choices and seed give the same story on a freshly started server: open the link",
             "under a story on `tinygemma story`'s address and press *Make my story*. (Once the server has cached",
             "that prompt, the last prompt token is recomputed by the decode kernels, whose rounding can tip a",
             "sampled token.)",
             "",
             "What to expect of a 270M base model: simple stories that keep to the character and setting and",
             "end cleanly, but wander, take up the twist only now and then, and often end before a medium or",
             "long story's word count (the page's Continue writes more).",
             ""]
    for n, r in enumerate(results, 1):
        c = r["choices"]
        low, high = LENGTHS[c["length"]]
        lines += [f"## {n}. {r['title']}",
                  "",
                  f"Character *{c['character']}*, setting *{c['setting']}*, twist *{c['twist']}*, "
                  f"theme *{c['theme']}*, length *{c['length']}* ({low}-{high} words); seed {r['seed']}.",
                  f"Link: `{page_link(c, r['seed'])}`.",
                  f"{len(r['story'].split())} words, {r['tokens']} tokens, ended by "
                  f"{'the end marker' if r['finish_reason'] == 'stop' else 'the token budget'}.",
                  ""]
        lines += [f"> {line}" if line else ">" for line in r["story"].split("\n")]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/stories.md")
    args = parser.parse_args()
    lm = tinygemma.load()
    with TestClient(create_app(Engine.from_lm(lm), "gemma-3-270m")) as client:
        with ThreadPoolExecutor(len(SAMPLES)) as pool:
            results = list(pool.map(lambda s: write_story(client, *s), SAMPLES))
    for r in results:
        print(f"{r['title']}: {len(r['story'].split())} words, {r['tokens']} tokens, "
              f"{r['seconds']:.1f} s, first token {r['ttft']:.2f} s")
    Path(args.out).write_text(markdown(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
