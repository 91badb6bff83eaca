"""One engine's speed measurements in this (fresh) process; prints one JSON line.

    python tinygemma/bench/runners.py ENGINE MODEL [--threads N] [--prompt-lengths 128,512]
        [--decode-tokens 128] [--batch-sizes 1,4,8,16,25] [--batch-new-tokens 64] [--batch-prompt-tokens 16]

ENGINE is "tinygemma" or "llama.cpp". Run it by file path as above (the driver, tinygemma.bench.speed, does):
`python -m tinygemma.bench.runners` works too, but imports the tinygemma package (and torch) first, which
would then count in llama.cpp's load time and peak RSS. This module imports nothing heavy at the top.

Measured, in this order, after a short untimed warm-up:
  load        seconds from `--t0` (the driver's clock just before it started this process; else this
              module's first line) until the engine is ready to generate: interpreter start, import, load;
  prefill     for each prompt length L: a prompt of exactly L token ids (BOS + a fixed English text, cycled),
              fresh cache/context, time to run it through the model (L / seconds = tok/s);
  decode      single stream: greedy continuation of a short prompt, `--decode-tokens` new tokens, timed from
              the first new token to the last (tokens - 1 forward passes);
  batch       for each B: B sequences, each its own prompt of `--batch-prompt-tokens` tokens, prefilled together,
              2 untimed steps, then `--batch-new-tokens` timed steps each decoding one token for every sequence
              (greedy); aggregate tok/s = B * new tokens / seconds;
  peak RSS    peak resident set size of this process at the end (VmHWM; ru_maxrss elsewhere), MiB.
The output line starts with RESULT_PREFIX, followed by the JSON object.
"""

from __future__ import annotations

import time

_T_MODULE = time.time()      # before any heavy import

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from time import perf_counter  # noqa: E402

RESULT_PREFIX = "TINYGEMMA_BENCH_RESULT "
ENGINES = ("tinygemma", "llama.cpp")
WARM_STEPS = 2               # untimed decode steps before each timed batch run
SINGLE_PROMPT_TOKENS = 16

TEXT = (
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker "
    "named Tomas. Every morning he opened the shutters of his tiny shop, wound the clocks on the walls, "
    "and listened to them tick together like a choir of crickets. Children from the village would press "
    "their noses against the window to watch him work. One winter, a stranger arrived carrying a broken "
    "pocket watch wrapped in a blue handkerchief. The watch had no maker's mark, and its hands moved "
    "backwards. Tomas had repaired thousands of clocks, but he had never seen anything like it. He spent "
    "three nights studying the gears under the light of an oil lamp, and on the fourth night he finally "
    "understood what the watch was measuring. It was not counting the hours of the day; it was counting "
    "the days that remained before the river would freeze, the mill would stop, and the village would "
    "need every clock in the shop to keep its promises. The science of weather, trade between towns, "
    "the price of bread, and the history of the old kingdom were all written, he realized, in the small "
    "movements of brass and steel. "
)


def make_ids(bos: int, text_ids: list[int], n: int, offset: int = 0) -> list[int]:
    """Exactly n ids: BOS, then the text's ids from `offset`, cycled."""
    if not text_ids:
        raise ValueError("the benchmark text tokenized to nothing")
    return [bos] + [text_ids[(offset + i) % len(text_ids)] for i in range(n - 1)]


def batch_prompts(bos: int, text_ids: list[int], batch: int, length: int) -> list[list[int]]:
    """`batch` different prompts of `length` ids each (different windows of the text)."""
    return [make_ids(bos, text_ids, length, offset=37 * s) for s in range(batch)]


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB.

    VmHWM of this address space where /proc has it: ru_maxrss survives execve, so a child started by a
    big parent (the driver, with torch loaded) would report at least the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024          # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def batch_rates(a, bos: int, text_ids: list[int], loop) -> dict:
    """Aggregate decode for each batch size: loop(prompts, steps, warm) -> seconds of the timed steps."""
    out = {}
    for b in a.batch_sizes:
        prompts = batch_prompts(bos, text_ids, b, a.batch_prompt_tokens)
        secs = loop(prompts, a.batch_new_tokens, WARM_STEPS)
        out[str(b)] = {**_rate(b * a.batch_new_tokens, secs), "sequences": b,
                       "new_tokens_per_sequence": a.batch_new_tokens}
    return out


def _ids_digest(ids: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def _rate(tokens: int, seconds: float) -> dict:
    return {"tokens": tokens, "seconds": seconds, "tps": tokens / seconds if seconds > 0 else 0.0}


# ---------------------------------------------------------------------------------------------- tinygemma

def kernel_path() -> str:
    from tinygemma.kernels import describe

    return describe()["kernel_path"]


def run_tinygemma(a) -> dict:
    t_import = time.time()
    import torch

    torch.set_num_threads(a.threads)
    import tinygemma
    from tinygemma.cache import make_cache
    from tinygemma.generate import prefill

    t_imported = time.time()
    lm = tinygemma.load(a.model)          # default dtype: the package's recommended (fast) setting
    t_ready = time.time()
    rss_load = _rss_mib()
    model, cfg = lm.model, lm.config
    tok = lm.tokenizer
    text_ids = tok.encode(TEXT, add_bos=False)
    bos = tok.bos_id

    def new_cache(batch: int, capacity: int):
        return make_cache(cfg, batch=batch, dtype=model.dtype, capacity=capacity)

    def run_prefill(ids: list[int]) -> float:
        cache = new_cache(1, len(ids) + 8)
        t = perf_counter()
        logits = prefill(model, ids, cache)
        int(logits.argmax())
        return perf_counter() - t

    def model_loop(prompts: list[list[int]], steps: int, warm: int) -> float:
        """Batched prefill of equal-length prompts, `warm` untimed steps, then `steps` timed greedy steps."""
        b, length = len(prompts), len(prompts[0])
        cache = new_cache(b, length + warm + steps + 1)
        with torch.inference_mode():
            logits = model(torch.tensor(prompts), cache=cache, last_only=True)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(warm):
                nxt = model(nxt, cache=cache)[:, -1].argmax(-1, keepdim=True)
            t = perf_counter()
            for _ in range(steps):
                nxt = model(nxt, cache=cache)[:, -1].argmax(-1, keepdim=True)
            return perf_counter() - t

    # Warm-up (untimed): a short prefill and a few decode steps.
    run_prefill(make_ids(bos, text_ids, 32))
    model_loop([make_ids(bos, text_ids, 8)], 4, 0)

    out: dict = {"prefill": {}}
    for n in a.prompt_lengths:
        ids = make_ids(bos, text_ids, n)
        out["prefill"][str(n)] = _rate(n, run_prefill(ids))
    out["prompt_ids_sha"] = _ids_digest(make_ids(bos, text_ids, max(a.prompt_lengths)))

    # Single stream through the public generation API (greedy), timed first token -> last token.
    prompt = make_ids(bos, text_ids, SINGLE_PROMPT_TOKENS)
    last = None
    for last in lm.stream_generate(prompt, max_tokens=a.decode_tokens, temperature=0.0):
        pass
    n_gen = last.generated_tokens if last is not None else 0
    if n_gen >= 2 and last.generation_tps > 0:
        secs = (n_gen - 1) / last.generation_tps
        out["decode"] = {**_rate(n_gen - 1, secs), "new_tokens": n_gen, "via": "lm.stream_generate"}
    else:
        out["decode"] = {}
    if n_gen < a.decode_tokens:
        # Stopped at a stop token (EOS): measure the same number of steps with the model-level loop.
        steps = a.decode_tokens - 1
        secs = model_loop([prompt], steps, 0)
        out["decode"] = {**_rate(steps, secs), "new_tokens": a.decode_tokens,
                         "via": f"model loop (stream_generate stopped after {n_gen} tokens)"}
    out["single_stream_rss_mib"] = _rss_mib()         # peak so far: load, prefills, one stream
    out["batch"] = batch_rates(a, bos, text_ids, model_loop)

    out.update({
        "import_s": t_imported - t_import,
        "model_load_s": t_ready - t_imported,
        "ready_at": t_ready,
        "rss_after_load_mib": rss_load,
        "versions": {"tinygemma": tinygemma.__version__, "torch": torch.__version__},
        "kernel_path": kernel_path(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
    })
    return out


# ---------------------------------------------------------------------------------------------- llama.cpp

def run_llama_cpp(a) -> dict:
    t_import = time.time()
    import numpy as np
    import llama_cpp

    t_imported = time.time()
    # The Llama object loads the model (and the tokenizer); every measurement below gets its own fresh
    # low-level context with llama.cpp's default context settings (flash attention: auto).
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads,
                          n_batch=512, n_ubatch=512, logits_all=False, verbose=False)
    t_ready = time.time()
    rss_load = _rss_mib()
    n_vocab = llm.n_vocab()
    text_ids = list(llm.tokenize(TEXT.encode("utf-8"), add_bos=False, special=False))
    bos = llm.token_bos()
    init_context = getattr(llama_cpp, "llama_init_from_model", None) or llama_cpp.llama_new_context_with_model
    defaults = llama_cpp.llama_context_default_params()
    settings = {"flash_attn_type": getattr(defaults, "flash_attn_type", None),
                "swa_full": getattr(defaults, "swa_full", None), "kv_unified": getattr(defaults, "kv_unified", None),
                "n_batch": 512, "n_ubatch": 512}

    def argmax_row(ctx, i: int) -> int:
        ptr = llama_cpp.llama_get_logits_ith(ctx, i)
        return int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())

    def new_context(n_seq: int, tokens_per_seq: int):
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_seq * (-(-tokens_per_seq // 256) * 256)   # split evenly between sequences (KV not unified)
        cp.n_batch = 512
        cp.n_ubatch = 512
        cp.n_seq_max = n_seq
        cp.n_threads = a.threads
        cp.n_threads_batch = a.threads
        cp.no_perf = True
        ctx = init_context(llm.model, cp)
        if not ctx:
            raise RuntimeError(f"llama.cpp: could not create a context for {n_seq} sequence(s)")
        return ctx

    def decode(ctx, batch, entries: list[tuple[int, int, int, bool]]) -> dict[int, int]:
        """llama_decode of (token, pos, seq_id, wants_logits) entries, at most n_batch (512) per call;
        returns {seq_id: greedy next token} for the entries that wanted logits."""
        picks = {}
        for start in range(0, len(entries), 512):
            part = entries[start:start + 512]
            for i, (t, p, s, out) in enumerate(part):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, p, 1
                batch.seq_id[i][0] = s
                batch.logits[i] = out
            batch.n_tokens = len(part)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama.cpp: llama_decode failed")
            picks.update({s: argmax_row(ctx, i) for i, (_, _, s, out) in enumerate(part) if out})
        return picks

    def run_prefill(ids: list[int]) -> float:
        ctx = new_context(1, len(ids) + 8)
        batch = llama_cpp.llama_batch_init(512, 0, 1)
        try:
            t = perf_counter()
            decode(ctx, batch, [(tok, p, 0, p == len(ids) - 1) for p, tok in enumerate(ids)])
            return perf_counter() - t
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)

    def lowlevel_loop(prompts: list[list[int]], steps: int, warm: int) -> float:
        """As llama.cpp's `batched` example: one seq_id per sequence, llama_decode per step, greedy."""
        b, length = len(prompts), len(prompts[0])
        ctx = new_context(b, length + warm + steps + 8)
        batch = llama_cpp.llama_batch_init(max(512, b), 0, b)
        try:
            picks = decode(ctx, batch, [(tok, p, s, p == length - 1) for s, ids in enumerate(prompts)
                                        for p, tok in enumerate(ids)])
            nxt = [picks[s] for s in range(b)]
            pos = length
            t = None
            for i in range(warm + steps):
                if i == warm:
                    t = perf_counter()
                picks = decode(ctx, batch, [(nxt[s], pos, s, True) for s in range(b)])
                nxt = [picks[s] for s in range(b)]
                pos += 1
            return perf_counter() - t
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)

    # Warm-up (untimed): a short prefill and a few decode steps.
    run_prefill(make_ids(bos, text_ids, 32))
    lowlevel_loop([make_ids(bos, text_ids, 8)], 4, 0)

    out: dict = {"prefill": {}}
    for n in a.prompt_lengths:
        out["prefill"][str(n)] = _rate(n, run_prefill(make_ids(bos, text_ids, n)))
    out["prompt_ids_sha"] = _ids_digest(make_ids(bos, text_ids, max(a.prompt_lengths)))

    prompt = make_ids(bos, text_ids, SINGLE_PROMPT_TOKENS)
    steps = a.decode_tokens - 1           # the first new token comes from the prompt's logits, as in tinygemma
    out["decode"] = {**_rate(steps, lowlevel_loop([prompt], steps, 0)), "new_tokens": a.decode_tokens,
                     "via": "llama_decode loop, 1 sequence"}
    out["single_stream_rss_mib"] = _rss_mib()         # peak so far: load, prefills, one stream
    out["batch"] = batch_rates(a, bos, text_ids, lowlevel_loop)

    info = llama_cpp.llama_print_system_info()
    out.update({
        "import_s": t_imported - t_import,
        "model_load_s": t_ready - t_imported,
        "ready_at": t_ready,
        "rss_after_load_mib": rss_load,
        "versions": {"llama_cpp_python": getattr(llama_cpp, "__version__", "?")},
        "context_settings": settings,
        "system_info": info.decode("utf-8", "replace").strip() if isinstance(info, bytes) else str(info),
        "library": os.environ.get("LLAMA_CPP_LIB_PATH") or "llama_cpp package",
    })
    return out


# ---------------------------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine", choices=ENGINES)
    p.add_argument("model", help="GGUF file")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--prompt-lengths", type=_ints, default=[128, 512])
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--batch-sizes", type=_ints, default=[1, 4, 8, 16, 25])
    p.add_argument("--batch-new-tokens", type=int, default=64)
    p.add_argument("--batch-prompt-tokens", type=int, default=16)
    p.add_argument("--t0", type=float, help="wall-clock time (time.time()) when the driver started this process")
    return p


def run(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    if a.decode_tokens < 2 or a.batch_new_tokens < 1 or min(a.prompt_lengths) < 2 or a.batch_prompt_tokens < 2:
        raise SystemExit("runners: need --decode-tokens >= 2, --batch-new-tokens >= 1, prompt lengths >= 2")
    t0 = a.t0 if a.t0 is not None else _T_MODULE
    fn = run_tinygemma if a.engine == "tinygemma" else run_llama_cpp
    out = fn(a)
    ready = out.pop("ready_at")
    out.update({"engine": a.engine, "model": os.path.abspath(a.model), "threads": a.threads,
                "load_s": ready - t0, "load_from": "driver spawn" if a.t0 is not None else "runner module start",
                "peak_rss_mib": _rss_mib(), "pid": os.getpid()})
    return out


def main(argv: list[str] | None = None) -> None:
    out = run(argv)
    sys.stdout.write(RESULT_PREFIX + json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
