"""Quality guard of the fast path: perplexity on ../shared/reference/ppl_text.txt (llama-perplexity's method:
512-token chunks, BOS first, second half scored) for the float32 path and the fast path, and their greedy
continuations of the reference prompts side by side.

    python bench/quality.py [--text PATH] [--max-chunks N] [--out bench/results/quality.json]

The text defaults to tests/data/reference/ppl_text.txt (a copy of ../shared/reference/ppl_text.txt);
llama.cpp's figure on the same file and method is PPL 12.3730 (../shared/reference/llamacpp/perplexity_c512.log).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import tinygemma
from tinygemma.eval.perplexity import perplexity

ROOT = Path(__file__).resolve().parents[1]
GREEDY = ROOT / "tests" / "data" / "reference" / "hf_greedy.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default=str(ROOT / "tests" / "data" / "reference" / "ppl_text.txt"))
    ap.add_argument("--max-chunks", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.json"))
    args = ap.parse_args()
    text = Path(args.text).read_text(encoding="utf-8")
    prompts = json.loads(GREEDY.read_text())["prompts"]
    out = {"text": args.text, "paths": {}}
    for name, dtype in (("float32", "float32"), ("fast (default)", None)):
        lm = tinygemma.load(dtype=dtype)
        t0 = time.perf_counter()
        r = perplexity(lm, text, max_chunks=args.max_chunks)
        greedy = {k: lm.tokenizer.decode(
            [c.token for c in lm.stream_generate(p["prompt_ids"], max_tokens=32) if c.token is not None][:32])
            for k, p in prompts.items()}
        out["paths"][name] = {"ppl": r.ppl, "chunks": r.chunks, "tokens_scored": r.tokens_scored,
                              "ppl_seconds": r.seconds, "greedy_32": greedy}
        print(f"{name:<16} PPL {r.ppl:.4f} over {r.chunks} chunks ({r.tokens_scored} tokens) "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
    a, b = (out["paths"][k]["ppl"] for k in ("float32", "fast (default)"))
    out["ppl_ratio_fast_over_float32"] = b / a
    print(f"fast / float32 perplexity: {b / a:.5f} ({(b / a - 1) * 100:+.3f}%)")
    same = sum(out["paths"]["float32"]["greedy_32"][k] == out["paths"]["fast (default)"]["greedy_32"][k]
               for k in prompts)
    print(f"greedy 32-token continuations identical: {same}/{len(prompts)}")
    for k in prompts:
        print(f"--- {k}\n  float32: {out['paths']['float32']['greedy_32'][k]!r}\n"
              f"  fast:    {out['paths']['fast (default)']['greedy_32'][k]!r}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
