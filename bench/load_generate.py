"""Load and generation timings of the default model, each in a fresh process.

    python bench/load_generate.py [--dtype float32] [--runs 3]

cold = the first load ever (the default GGUF is assembled from its packages and verified);
warm = later loads (assembled file reused). Reports wall time to load, to generate 64 tokens
(prompt "Once upon a time", greedy), decode tokens/s, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import tinygemma
lm = tinygemma.load(dtype=sys.argv[1])
t1 = time.perf_counter()
last = None
for last in lm.stream_generate("Once upon a time", max_tokens=64, stop_ids=[], stop=[]):
    pass
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "generate64_s": t2 - t1, "tokens": last.generated_tokens,
                  "decode_tps": last.generation_tps,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(dtype: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, dtype], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="tinygemma-bench-")
    env = {**os.environ, "TINYGEMMA_CACHE": cache}
    try:
        rows = [("cold", run(args.dtype, env))] + [("warm", run(args.dtype, env)) for _ in range(args.runs)]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"dtype={args.dtype}  threads={os.cpu_count()}")
    print(f"{'run':<6}{'load s':>9}{'gen 64 s':>10}{'decode tok/s':>14}{'peak RSS MiB':>14}")
    for name, r in rows:
        print(f"{name:<6}{r['load_s']:>9.2f}{r['generate64_s']:>10.2f}{r['decode_tps']:>14.1f}{r['peak_rss_mib']:>14.0f}")


if __name__ == "__main__":
    main()
