"""Quality guard of the fast path: perplexity on ../shared/reference/ppl_text.txt (llama-perplexity's method:
512-token chunks, BOS first, second half scored) for the float32 path and the fast path, and their greedy
continuations of the reference prompts side by side.

    python bench/quality.py [--text PATH] [--max-chunks N] [--paths avx2,pytorch] [--out bench/results/quality.json]

Every fast path this CPU runs is measured (each native kernel build, chosen as TINYGEMMA_KERNELS would, and the
PyTorch fallback), each against float32; --paths picks some (scalar is slow: only when named).

The text defaults to tests/data/reference/ppl_text.txt (a copy of ../shared/reference/ppl_text.txt);
llama.cpp's figure on the same file and method is PPL 12.3730 (../shared/reference/llamacpp/perplexity_c512.log).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import tinygemma
from tinygemma import kernels
from tinygemma.eval.perplexity import perplexity

ROOT = Path(__file__).resolve().parents[1]
GREEDY = ROOT / "tests" / "data" / "reference" / "hf_greedy.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default=str(ROOT / "tests" / "data" / "reference" / "ppl_text.txt"))
    ap.add_argument("--max-chunks", type=int, default=None)
    ap.add_argument("--paths", help="comma-separated fast paths: kernel path names and/or pytorch "
                                    "(default: every native path this CPU runs, then pytorch)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.json"))
    args = ap.parse_args()
    text = Path(args.text).read_text(encoding="utf-8")
    prompts = json.loads(GREEDY.read_text())["prompts"]
    fast_paths = (args.paths.split(",") if args.paths else
                  [p.name for p in kernels.native_paths()] + ["pytorch"])
    out = {"text": args.text, "machine": kernels.describe(), "paths": {}}
    for name in ["float32", *fast_paths]:
        if name != "float32":
            os.environ["TINYGEMMA_KERNELS"] = "0" if name == "pytorch" else name
            kernels.q8.cache_clear()
        lm = tinygemma.load(dtype="float32" if name == "float32" else None)
        t0 = time.perf_counter()
        r = perplexity(lm, text, max_chunks=args.max_chunks)
        greedy = {k: lm.tokenizer.decode(
            [c.token for c in lm.stream_generate(p["prompt_ids"], max_tokens=32) if c.token is not None][:32])
            for k, p in prompts.items()}
        out["paths"][name] = {"ppl": r.ppl, "chunks": r.chunks, "tokens_scored": r.tokens_scored,
                              "ppl_seconds": r.seconds, "greedy_32": greedy}
        print(f"{name:<10} PPL {r.ppl:.4f} over {r.chunks} chunks ({r.tokens_scored} tokens) "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
    base = out["paths"]["float32"]
    for name in fast_paths:
        path = out["paths"][name]
        path["ppl_ratio_over_float32"] = path["ppl"] / base["ppl"]
        path["greedy_identical_to_float32"] = sum(path["greedy_32"][k] == base["greedy_32"][k] for k in prompts)
        print(f"{name:<10} / float32 perplexity: {path['ppl_ratio_over_float32']:.5f} "
              f"({(path['ppl_ratio_over_float32'] - 1) * 100:+.3f}%); greedy 32-token continuations identical: "
              f"{path['greedy_identical_to_float32']}/{len(prompts)}")
    for k in prompts:
        print(f"--- {k}")
        for name in ["float32", *fast_paths]:
            print(f"  {name:<10} {out['paths'][name]['greedy_32'][k]!r}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
