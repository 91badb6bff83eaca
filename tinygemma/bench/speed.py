"""tinygemma vs llama.cpp, side by side: same GGUF, same machine, same thread count, one run.

    python bench/speed.py [--model PATH] [--threads N] [--reps 3] [--engines tinygemma,llama.cpp]
    tinygemma bench ...                     (the same, as a subcommand)

Every repetition of every engine runs in its own fresh process (tinygemma/bench/runners.py), so load time
and peak RSS are the engine's own; engines alternate within each repetition; the table shows medians.
Writes DIR/speed.json (all raw repetitions, medians, ratios, machine facts) and DIR/speed.png (ratios
with the goal lines) unless --no-chart or matplotlib is missing. llama.cpp comes from llama-cpp-python
(`pip install llama-cpp-python==0.3.36`, or the `bench` extra); without it only tinygemma runs.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..errors import TinyGemmaError
from .runners import ENGINES, RESULT_PREFIX

RUNNER = Path(__file__).with_name("runners.py")
LOWER_BETTER = "lower"
HIGHER_BETTER = "higher"
GOALS = {"prefill_512": 1.5, "decode": 1.0}    # tinygemma / llama.cpp built for the same CPU class, at least
RUNNER_TIMEOUT_S = 3600


class BenchError(TinyGemmaError):
    pass


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _engines(text: str) -> list[str]:
    names = [x.strip() for x in str(text).split(",") if x.strip()]
    bad = [n for n in names if n not in ENGINES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"engines must be among {', '.join(ENGINES)}, got {text!r}")
    return list(dict.fromkeys(names))


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", metavar="PATH", help="GGUF file (default: the embedded Gemma 3 270M Q4_K_M)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both engines (default: all cores)")
    p.add_argument("--reps", type=int, default=3, help="repetitions, each a fresh process per engine (default 3)")
    p.add_argument("--engines", type=_engines, default=list(ENGINES), help="comma-separated (default: tinygemma,llama.cpp)")
    p.add_argument("--prompt-lengths", type=_ints, default=[128, 512], help="prefill prompt lengths (default 128,512)")
    p.add_argument("--decode-tokens", type=int, default=128, help="single-stream new tokens (default 128)")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 4, 8, 16, 25], help="parallel sequences (default 1,4,8,16,25)")
    p.add_argument("--batch-new-tokens", type=int, default=64, help="new tokens per sequence in batches (default 64)")
    p.add_argument("--batch-prompt-tokens", type=int, default=16, help="prompt tokens per sequence in batches (default 16)")
    p.add_argument("--out", metavar="DIR", default="bench/results", help="where speed.json / speed.png go (default bench/results)")
    p.add_argument("--no-chart", action="store_true", help="do not draw speed.png")
    return p


# ------------------------------------------------------------------------------------------------- metrics

def metric_specs(args) -> list[dict]:
    """Rows of the table: key, label, unit, which direction is better."""
    specs = [{"key": "load_s", "label": "load time (start to ready)", "unit": "s", "better": LOWER_BETTER},
             {"key": "single_stream_rss_mib", "label": "peak RSS, single stream", "unit": "MiB",
              "better": LOWER_BETTER},
             {"key": "peak_rss_mib", "label": "peak RSS, whole run (incl. 25 sequences)", "unit": "MiB",
              "better": LOWER_BETTER}]
    for n in args.prompt_lengths:
        specs.append({"key": f"prefill_{n}", "label": f"prefill, {n}-token prompt", "unit": "tok/s",
                      "better": HIGHER_BETTER})
    specs.append({"key": "decode", "label": f"decode, 1 stream, {args.decode_tokens} tokens", "unit": "tok/s",
                  "better": HIGHER_BETTER})
    for b in args.batch_sizes:
        specs.append({"key": f"batch_{b}", "label": f"aggregate decode, {b} sequence{'' if b == 1 else 's'}", "unit": "tok/s",
                      "better": HIGHER_BETTER})
    return specs


def metric_value(run: dict, key: str) -> float:
    if key in ("load_s", "peak_rss_mib", "single_stream_rss_mib"):
        return float(run[key])
    if key == "decode":
        return float(run["decode"]["tps"])
    kind, _, n = key.partition("_")
    return float(run["prefill" if kind == "prefill" else "batch"][n]["tps"])


# ------------------------------------------------------------------------------------------------- running

def run_engine(engine: str, model: str, args) -> dict:
    """One fresh runner process; returns its JSON result (raises BenchError with its stderr on failure)."""
    cmd = [sys.executable, str(RUNNER), engine, model, "--threads", str(args.threads),
           "--prompt-lengths", ",".join(map(str, args.prompt_lengths)), "--decode-tokens", str(args.decode_tokens),
           "--batch-sizes", ",".join(map(str, args.batch_sizes)), "--batch-new-tokens", str(args.batch_new_tokens),
           "--batch-prompt-tokens", str(args.batch_prompt_tokens)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    t0 = time.time()
    p = subprocess.run([*cmd, "--t0", repr(t0)], env=env, capture_output=True, text=True, timeout=RUNNER_TIMEOUT_S)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if p.returncode != 0 or not lines:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise BenchError(f"{engine} runner failed (exit {p.returncode}):\n{tail}")
    out = json.loads(lines[-1][len(RESULT_PREFIX):])
    out["wall_s"] = time.time() - t0
    return out


def llama_cpp_status() -> str | None:
    """None when llama_cpp is importable, else why not."""
    try:
        if importlib.util.find_spec("llama_cpp") is None:
            return "llama_cpp is not installed (pip install llama-cpp-python==0.3.36)"
    except (ImportError, ValueError) as e:
        return f"llama_cpp cannot be found: {e}"
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def file_facts(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return {"path": str(path.resolve()), "size_bytes": path.stat().st_size, "sha256_prefix": h.hexdigest()[:16]}


def machine_info(args) -> dict:
    from ..kernels import machine_facts

    return {
        **machine_facts(),
        "llama_cpp_lib": os.environ.get("LLAMA_CPP_LIB_PATH"),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "tinygemma": _version("tinygemma"),
        "llama_cpp_python": _version("llama_cpp_python"),
        "threads": args.threads,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------------------- report

def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.2f}"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def format_table(result: dict) -> str:
    specs, med, ratios = result["metrics"], result["medians"], result["ratios"]
    tg, lc = med.get("tinygemma", {}), med.get("llama.cpp", {})
    head = ["metric", "unit", "tinygemma", "llama.cpp", "tinygemma/llama.cpp", "goal"]
    rows = []
    for s in specs:
        k = s["key"]
        r = ratios.get(k)
        goal = result["goals"].get(k)
        if r is None:
            ratio_txt = "-"
        elif s["better"] == LOWER_BETTER:
            ratio_txt = f"{r:.2f}x (<1: tinygemma {'faster' if k == 'load_s' else 'smaller'})"
        else:
            ratio_txt = f"{r:.2f}x (>1: tinygemma faster)"
        goal_txt = ""
        if goal is not None:
            goal_txt = f">= {goal['target']:.1f}" + ("" if goal["met"] is None else (" met" if goal["met"] else " NOT met"))
        rows.append([s["label"], s["unit"], _fmt(tg.get(k), s["unit"]), _fmt(lc.get(k), s["unit"]), ratio_txt, goal_txt])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    align = ["<", "<", ">", ">", "<", "<"]

    def line(cells):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()

    m, mach = result["model"], result["machine"]
    reps = result["settings"]["reps"]
    out = [f"tinygemma vs llama.cpp: {Path(m['path']).name} (sha256 {m['sha256_prefix']}), "
           f"{mach['threads']} threads on {mach['cores']} cores ({mach['cpu_model']}), median of {reps} run(s)",
           f"tinygemma kernel path: {mach['kernel_path']}; CPU features: {' '.join(mach['cpu_features'])}",
           f"llama.cpp: {llama_cpp_class(result)}",
           line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out.append("ratio = tinygemma / llama.cpp; speeds in tok/s (higher is better); load time and peak RSS: lower is better.")
    out += [f"note: {n}" for n in result["notes"]]
    return "\n".join(out)


def llama_cpp_class(result: dict) -> str:
    """Which SIMD llama.cpp's CPU backend used (from llama_print_system_info) and where its library came from."""
    runs = result["runs"].get("llama.cpp") or []
    if not runs:
        return "not run"
    info = runs[0].get("system_info", "")
    used = [flag for flag in ("AVX512_VNNI", "AVX512", "AVX_VNNI", "AVX2", "FMA", "F16C", "NEON", "DOTPROD",
                              "MATMUL_INT8") if f"{flag} = 1" in info]
    return f"{', '.join(used) or 'system_info: ' + info[:80]} ({runs[0].get('library', 'llama_cpp package')})"


def _short_label(key: str) -> str:
    kind, _, n = key.partition("_")
    return {"prefill": f"prefill\n{n} tokens", "batch": f"aggregate\n{n} seq"}.get(kind, "decode\n1 stream")


def draw_chart(result: dict, path: Path) -> str | None:
    """speed.png: ratios per metric with the goal lines; returns why not drawn, or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart"
    ratios, specs = result["ratios"], result["metrics"]
    if not ratios:
        return "no llama.cpp numbers: no ratio chart"
    speed = [s for s in specs if s["better"] == HIGHER_BETTER and s["key"] in ratios]
    cost = [s for s in specs if s["better"] == LOWER_BETTER and s["key"] in ratios]
    groups = {"prefill": "tab:blue", "decode": "tab:orange", "batch": "tab:green"}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [max(len(speed), 1), 2.5]})
    xs = range(len(speed))
    vals = [ratios[s["key"]] for s in speed]
    colors = [groups[s["key"].split("_")[0]] for s in speed]
    bars = ax.bar(xs, vals, color=colors)
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=8)
    ax.set_xticks(list(xs), [_short_label(s["key"]) for s in speed], fontsize=8)
    top = max([*vals, *(g["target"] for g in result["goals"].values()), 1.0])
    ax.set_ylim(0, top * 1.25)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="parity (1.0)")
    for i, s in enumerate(speed):
        g = result["goals"].get(s["key"])
        if g is not None:
            ax.hlines(g["target"], i - 0.45, i + 0.45, colors="red", linestyles="--", linewidth=2)
            ax.text(i, g["target"], f"goal {g['target']:g}", color="red", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("tinygemma / llama.cpp (higher = tinygemma faster)")
    ax.set_title("throughput ratio")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in groups.values()]
    ax.legend(handles + [plt.Line2D([], [], color="red", linestyle="--")],
              ["prefill", "decode (1 stream)", "aggregate decode", "goal"], fontsize=8, loc="upper center",
              ncol=4)
    cv = [ratios[s["key"]] for s in cost]
    b2 = ax2.bar(range(len(cost)), cv, color="tab:gray")
    ax2.bar_label(b2, labels=[f"{v:.2f}" for v in cv], fontsize=8)
    ax2.set_xticks(range(len(cost)), [s["label"].split(" (")[0] for s in cost], fontsize=8)
    ax2.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax2.set_title("cost ratio\n(lower = tinygemma better)", fontsize=10)
    ax2.set_ylim(0, max([*cv, 1.0]) * 1.15)
    mach = result["machine"]
    fig.suptitle(f"tinygemma ({mach['kernel_path']} kernels) vs llama.cpp ({llama_cpp_class(result).split(' (')[0]}), "
                 f"{Path(result['model']['path']).name}, {mach['threads']} threads, {mach['cpu_model']}, "
                 f"median of {result['settings']['reps']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# ------------------------------------------------------------------------------------------------- driver

def run(args) -> dict:
    if args.reps < 1 or args.threads < 1:
        raise ValueError("--reps and --threads must be at least 1")
    if args.model:
        model = Path(args.model)
        if not model.is_file():
            raise BenchError(f"--model {model}: not a file (the benchmark needs a GGUF file)")
    else:
        from ..weights.default import default_model_path
        model = default_model_path()
    notes: list[str] = []
    engines = list(args.engines)
    if "llama.cpp" in engines:
        why = llama_cpp_status()
        if why:
            engines.remove("llama.cpp")
            notes.append(f"llama.cpp not run: {why}; tinygemma only")
    if not engines:
        raise BenchError("no engine to run")

    machine = machine_info(args)
    load1 = (machine["load_average_at_start"] or [0.0])[0]
    if load1 > 0.5:
        notes.append(f"the machine was busy at the start (1-minute load average {load1:.2f}): "
                     "timings may be low for both engines")
    runs: dict[str, list] = {e: [] for e in engines}
    errors: dict[str, str] = {}
    for rep in range(args.reps):
        for engine in engines:
            if engine in errors:
                continue
            print(f"[{rep + 1}/{args.reps}] {engine} ...", end=" ", file=sys.stderr, flush=True)
            try:
                r = run_engine(engine, str(model), args)
            except (BenchError, subprocess.TimeoutExpired) as e:
                if engine == "tinygemma" or "llama.cpp" not in engines:
                    raise
                print("failed", file=sys.stderr)
                errors[engine] = str(e)
                notes.append(f"llama.cpp failed, not in the table: {str(e).splitlines()[0]} "
                             f"(details in speed.json 'errors')")
                continue
            print(f"{r['wall_s']:.1f} s", file=sys.stderr)
            runs[engine].append(r)
    runs = {e: rs for e, rs in runs.items() if rs}

    specs = metric_specs(args)
    medians = {e: {s["key"]: statistics.median(metric_value(r, s["key"]) for r in rs) for s in specs}
               for e, rs in runs.items()}
    ratios = {}
    if "tinygemma" in medians and "llama.cpp" in medians:
        for s in specs:
            base = medians["llama.cpp"][s["key"]]
            ratios[s["key"]] = medians["tinygemma"][s["key"]] / base if base else None
        ratios = {k: v for k, v in ratios.items() if v is not None}
        shas = {r.get("prompt_ids_sha") for rs in runs.values() for r in rs}
        if len(shas) > 1:
            notes.append("the engines' tokenizers gave different prompt ids (same lengths; speeds comparable)")
    goals = {k: {"target": t, "ratio": ratios.get(k), "met": None if k not in ratios else ratios[k] >= t}
             for k, t in GOALS.items() if any(s["key"] == k for s in specs)}
    for e, rs in runs.items():
        loads = [r["load_s"] for r in rs]
        if len(loads) > 1 and max(loads) > 2 * statistics.median(loads):
            notes.append(f"{e} load times varied, {min(loads):.2f} to {max(loads):.2f} s (a first load may "
                         "convert and cache weights, or read the file from disk); the table shows the median")
    fallback = [r["decode"]["via"] for r in runs.get("tinygemma", []) if r["decode"]["via"] != "lm.stream_generate"]
    if fallback:
        notes.append(f"tinygemma single-stream decode, {len(fallback)} run(s): {fallback[0]}")

    result = {
        "machine": {**machine, "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "model": file_facts(model),
        "settings": {"threads": args.threads, "reps": args.reps, "engines": list(args.engines),
                     "prompt_lengths": args.prompt_lengths, "decode_tokens": args.decode_tokens,
                     "batch_sizes": args.batch_sizes, "batch_new_tokens": args.batch_new_tokens,
                     "batch_prompt_tokens": args.batch_prompt_tokens},
        "engines_run": list(runs),
        "metrics": specs,
        "medians": medians,
        "ratios": ratios,
        "goals": goals,
        "runs": runs,
        "errors": errors,
        "notes": notes,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    chart = None
    if not args.no_chart:
        why = draw_chart(result, out_dir / "speed.png")
        if why:
            notes.append(why)
        else:
            chart = str(out_dir / "speed.png")
    result["chart"] = chart
    result["table"] = format_table(result)
    (out_dir / "speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(result["table"])
    print(f"wrote {out_dir / 'speed.json'}" + (f" and {chart}" if chart else ""))
    return result


def main(argv: list[str] | None = None) -> dict:
    p = add_arguments(argparse.ArgumentParser(prog="bench/speed.py", description=__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    args = p.parse_args(argv)
    try:
        return run(args)
    except TinyGemmaError as e:
        raise SystemExit(f"bench: error: {e}") from None


if __name__ == "__main__":
    main()
