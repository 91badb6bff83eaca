"""Load benchmark: many users chatting at once over HTTP, `tinygemma serve` vs llama.cpp's `llama-server`.

    bash bench/build_llama_server.sh /tmp/llama                 # once: llama.cpp's own server (a few minutes)
    python bench/load.py --llama-server /tmp/llama/llama-server  # 25 users x 4 turns, both servers
    python bench/load.py --runs 3                                # tinygemma only, 3 runs: RSS after each

Each simulated user holds a multi-turn conversation: a short system message and an everyday request, then
follow-ups, each turn sending the whole history as chat messages (so a server can reuse its cache), all
users at once, each next turn as soon as the previous reply has ended. Replies stream over SSE
(`/v1/chat/completions`, temperature 0.7, top-k 64, top-p 0.95, a seed per user and turn, `max_tokens` 100).
The servers run one after the other, never at the same time, on the same GGUF with the same thread count;
each is started by this script, warmed up with one short request, then measured.

Per request: time to first token (request sent -> first content chunk, queueing included) and the gaps
between content chunks (inter-token latency). Per server: aggregate completion tok/s (completion tokens /
wall time of the whole load), TTFT and inter-token p50/p95, failed requests, prompt tokens actually
prefilled on follow-up turns (from each response: tinygemma's usage.prompt_tokens_details.cached_tokens,
llama-server's timings.prompt_n) and the same from the servers' /metrics before and after, CPU-seconds and
RSS of the server process (/proc/PID/stat and status), and an energy estimate: CPU-seconds x an assumed
power per busy core (this machine exposes no power counters; --watts-per-core, default 5 W).

Writes DIR/load.json (every request, per-run numbers, machine facts) and prints a table
(metric | tinygemma | llama-server | ratio). `python bench/load.py --help` lists every flag.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

DEFAULT_USERS = 25
DEFAULT_TURNS = 4
DEFAULT_MAX_TOKENS = 100
DEFAULT_TEMPERATURE = 0.7
TOP_K = 64                      # Gemma's recommended sampling, sent explicitly: the servers' defaults differ
TOP_P = 0.95
DEFAULT_SEED = 1234
DEFAULT_CTX = 1024              # tokens per conversation (per llama-server slot): 4 turns fit in ~600
DEFAULT_MAX_BATCH = 32
DEFAULT_WATTS_PER_CORE = 5.0    # assumed power of one busy core (share of package and memory included)
REQUEST_TIMEOUT_S = 900.0
START_TIMEOUT_S = 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
ENGINES = ("tinygemma", "llama-server")

SYSTEM = "You are a helpful, friendly assistant. Keep answers short and practical."

# First requests: everyday things people ask a small local assistant.
OPENERS = [
    "What should I cook for dinner tonight with chicken, rice and some vegetables?",
    "Can you help me write a short email asking my landlord to fix a leaking tap?",
    "I have a job interview tomorrow for a cashier position. How should I prepare?",
    "Give me a simple weekly workout plan for a beginner with no equipment.",
    "How do I get rid of the smell in my fridge?",
    "Suggest a few names for a small bakery in my neighbourhood.",
    "Explain in simple words what inflation is.",
    "I keep waking up at 3 am. Any tips to sleep better?",
    "Write a short birthday message for my grandmother who is turning 80.",
    "What are some cheap things to do in a city on a rainy weekend?",
    "How do I politely decline an invitation to a party?",
    "Help me plan a packing list for a three-day camping trip.",
    "What is a good way to start learning to play the guitar?",
    "My tomato plants have yellow leaves. What could be wrong?",
    "How can I save money on my grocery shopping each week?",
    "Write a short thank-you note to a colleague who helped me with a project.",
    "What should I look for when buying a used bicycle?",
    "Give me three ideas for a quick, healthy breakfast.",
    "How do I explain to my kid why the sky is blue?",
    "Can you summarize the main rules of chess for a beginner?",
    "I want to read more books. How do I build the habit?",
    "What are good questions to ask when renting an apartment?",
    "Suggest a relaxing evening routine after a long day at work.",
    "How do I remove a coffee stain from a white shirt?",
    "Help me write a short message to reschedule a dentist appointment.",
]

FOLLOW_UPS = [
    ["Thanks! Can you make that shorter?", "Could you give me one more idea?", "Great, and what should I avoid?"],
    ["Can you explain the second point in more detail?", "Is there a cheaper option?", "Thanks, one last tip?"],
    ["That helps. What if I only have half an hour?", "Can you put it as a numbered list?",
     "Perfect. Summarize it in one sentence."],
    ["Could you say that in a more casual tone?", "What is the most common mistake people make?",
     "Thanks! Anything else I should know?"],
]


# ------------------------------------------------------------------------------------------------- the load

def conversations(users: int, turns: int, run: int = 0) -> list[dict]:
    """Per user: a system message (tagged with run and user, so no cache is shared across runs or users)
    and `turns` user messages."""
    out = []
    for u in range(users):
        follow = FOLLOW_UPS[u % len(FOLLOW_UPS)]
        msgs = [OPENERS[(u + 7 * run) % len(OPENERS)]]
        msgs += [follow[(t - 1) % len(follow)] for t in range(1, turns)]
        out.append({"user": u, "system": f"{SYSTEM} (Session {run + 1}-{u + 1}.)", "messages": msgs})
    return out


@dataclass
class Turn:
    """One request of one conversation, as the client saw it."""
    user: int
    turn: int
    ok: bool = False
    error: str | None = None
    status: int | None = None
    sent_at: float = 0.0                 # seconds since the load started
    ttft_s: float | None = None
    total_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    chunks: int = 0
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None     # usage.prompt_tokens_details.cached_tokens
    prefill_tokens: int | None = None    # prompt tokens the server actually computed
    timings: dict | None = None          # llama-server's per-request timings, as sent
    text: str = ""


def request_body(model: str, messages: list[dict], max_tokens: int, temperature: float, seed: int) -> dict:
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
            "top_k": TOP_K, "top_p": TOP_P, "min_p": 0.0, "seed": seed, "stream": True,
            "stream_options": {"include_usage": True}}


async def chat_turn(client: httpx.AsyncClient, base: str, body: dict, result: Turn, t0: float) -> Turn:
    """POST one streaming chat completion; fills `result` with timings, text and token counts."""
    start = time.perf_counter()
    result.sent_at = start - t0
    last = None
    parts: list[str] = []
    try:
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
            result.status = r.status_code
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}: {(await r.aread())[:300].decode(errors='replace')}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                obj = json.loads(data)
                if obj.get("error"):
                    result.error = f"stream error: {json.dumps(obj['error'])[:300]}"
                    return result
                for choice in obj.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if last is None:
                            result.ttft_s = now - start
                        else:
                            result.gaps_s.append(now - last)
                        last = now
                        result.chunks += 1
                        parts.append(content)
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
                if obj.get("usage"):
                    usage = obj["usage"]
                    result.prompt_tokens = usage.get("prompt_tokens")
                    result.completion_tokens = usage.get("completion_tokens")
                    result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                if obj.get("timings"):
                    result.timings = obj["timings"]
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        result.error = f"{type(e).__name__}: {e}"
        return result
    result.total_s = time.perf_counter() - start
    result.text = "".join(parts)
    if result.completion_tokens is None:
        result.completion_tokens = result.chunks
    if result.timings and "prompt_n" in result.timings:
        result.prefill_tokens = int(result.timings["prompt_n"])
        if result.prompt_tokens is None:
            result.prompt_tokens = result.prefill_tokens + int(result.timings.get("cache_n", 0))
    elif result.prompt_tokens is not None:
        result.prefill_tokens = result.prompt_tokens - (result.cached_tokens or 0)
    if result.finish_reason not in ("stop", "length"):
        result.error = f"stream ended without a finish reason (got {result.finish_reason!r})"
        return result
    result.ok = True
    return result


async def converse(client: httpx.AsyncClient, base: str, model: str, conv: dict, args, run: int,
                   t0: float) -> list[Turn]:
    """One user's conversation: each turn sends the whole history; stops at the first failed turn."""
    history = [{"role": "system", "content": conv["system"]}]
    turns = []
    for t, text in enumerate(conv["messages"]):
        history.append({"role": "user", "content": text})
        seed = args.seed + 10_000 * run + 100 * conv["user"] + t
        body = request_body(model, list(history), args.max_tokens, args.temperature, seed)
        turn = await chat_turn(client, base, body, Turn(user=conv["user"], turn=t), t0)
        turns.append(turn)
        if not turn.ok:
            break
        history.append({"role": "assistant", "content": turn.text})
    return turns


async def run_load(base: str, model: str, args, run: int = 0) -> dict:
    """All users at once; returns every Turn, the wall time and how many requests were never sent."""
    convs = conversations(args.users, args.turns, run)
    limits = httpx.Limits(max_connections=args.users + 8, max_keepalive_connections=args.users + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT_S), limits=limits) as client:
        t0 = time.perf_counter()
        per_user = await asyncio.gather(*(converse(client, base, model, c, args, run, t0) for c in convs))
        wall = time.perf_counter() - t0
    turns = [t for ts in per_user for t in ts]
    return {"wall_s": wall, "turns": turns, "not_sent": args.users * args.turns - len(turns)}


# ------------------------------------------------------------------------------------------------- numbers

def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(load: dict) -> dict:
    """The client-side numbers of one run of the load."""
    turns: list[Turn] = load["turns"]
    ok = [t for t in turns if t.ok]
    follow = [t for t in ok if t.turn > 0]
    completion = sum(t.completion_tokens or 0 for t in ok)
    ttft = [t.ttft_s for t in ok if t.ttft_s is not None]
    gaps = [g for t in ok for g in t.gaps_s]
    have_prefill = all(t.prefill_tokens is not None for t in follow)
    return {
        "wall_s": load["wall_s"],
        "requests": len(turns),
        "failed_requests": len(turns) - len(ok),
        "not_sent": load["not_sent"],
        "completion_tokens": completion,
        "completion_tps": completion / load["wall_s"] if load["wall_s"] > 0 else 0.0,
        "finished_by_length": sum(t.finish_reason == "length" for t in ok),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "itl_p50_s": percentile(gaps, 50),
        "itl_p95_s": percentile(gaps, 95),
        "followup_prompt_tokens": sum(t.prompt_tokens or 0 for t in follow),
        "followup_prefill_tokens": sum(t.prefill_tokens for t in follow) if have_prefill else None,
        "first_turn_prefill_tokens": (sum(t.prefill_tokens or 0 for t in ok if t.turn == 0)
                                      if have_prefill else None),
        "errors": sorted({t.error for t in turns if t.error})[:10],
    }


# ------------------------------------------------------------------------------------------------- processes

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()       # after "pid (comm) "; utime, stime are fields 14, 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mib(pid: int) -> dict:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss_mib" if key == "VmRSS" else "peak_rss_mib"] = int(value.split()[0]) / 1024
    return out


def scrape_metrics(base: str) -> dict[str, float]:
    """A Prometheus text page as {name{labels}: value}; {} when the server has none."""
    try:
        r = httpx.get(f"{base}/metrics", timeout=10)
    except httpx.HTTPError:
        return {}
    if r.status_code != 200:
        return {}
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


# Counters that say how many prompt tokens a server computed and how many it generated.
PREFILL_COUNTERS = {"tinygemma": "tinygemma_prefill_tokens_total", "llama-server": "llamacpp:prompt_tokens_total"}
GENERATED_COUNTERS = {"tinygemma": "tinygemma_generated_tokens_total", "llama-server": "llamacpp:tokens_predicted_total"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess on a loopback port, its log in a temporary file."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict | None = None):
        self.name, self.cmd, self.port = name, cmd, port
        self.base = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"load-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid

    def wait_ready(self, model: str, timeout: float = START_TIMEOUT_S) -> float:
        """Waits until a tiny chat request succeeds (the warm-up); returns seconds from start."""
        t0 = time.time()
        body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4,
                "temperature": 0}
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=5).status_code == 200:
                    r = httpx.post(f"{self.base}/v1/chat/completions", json=body, timeout=120)
                    if r.status_code == 200:
                        return time.time() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not become ready in {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def turn_record(turn: Turn) -> dict:
    """A Turn for load.json: the gaps as count, mean and max (all of them are in the percentiles)."""
    out = asdict(turn)
    gaps = out.pop("gaps_s")
    out["gaps"] = {"count": len(gaps), "mean_s": statistics.fmean(gaps) if gaps else None,
                   "max_s": max(gaps, default=None)}
    return out


def measure(base: str, pid: int, engine: str, model: str, args) -> dict:
    """Runs the load args.runs times against a running server (process `pid`); per run: the client's
    numbers, the server's CPU-seconds and RSS, and its /metrics counters before and after."""
    runs = []
    for run in range(args.runs):
        before = scrape_metrics(base)
        cpu0 = cpu_seconds(pid)
        load = asyncio.run(run_load(base, model, args, run))
        cpu = cpu_seconds(pid) - cpu0
        after = scrape_metrics(base)
        summary = summarize(load)
        summary["server_cpu_s"] = cpu
        summary["server_cpu_utilization"] = cpu / load["wall_s"] if load["wall_s"] > 0 else 0.0
        summary.update({f"server_{k}": v for k, v in memory_mib(pid).items()})
        deltas = {}
        for kind, names in (("prefill", PREFILL_COUNTERS), ("generated", GENERATED_COUNTERS)):
            name = names.get(engine)
            if name in before and name in after:
                deltas[kind] = after[name] - before[name]
        summary["server_metrics_delta"] = deltas
        if engine == "tinygemma" and "tinygemma_idle_cache_bytes" in after:
            # What the RSS growth is made of: caches kept for follow-ups, bounded by --cache-mb.
            summary["idle_cache_mib"] = after["tinygemma_idle_cache_bytes"] / 2**20
            summary["idle_cache_evictions"] = after.get("tinygemma_idle_cache_evictions_total", 0)
        energy = cpu * args.watts_per_core
        summary["energy_j"] = energy
        summary["energy_per_conversation_j"] = energy / args.users
        summary["turns"] = [turn_record(t) for t in load["turns"]]
        runs.append(summary)
        print(f"  {engine} run {run + 1}/{args.runs}: {summary['completion_tps']:.1f} tok/s, "
              f"{summary['failed_requests']} failed, {summary['wall_s']:.1f} s, "
              f"RSS {summary.get('server_rss_mib', 0):.0f} MiB"
              + (f", idle caches {summary['idle_cache_mib']:.0f} MiB ({summary['idle_cache_evictions']:.0f} evicted"
                 " so far)" if "idle_cache_mib" in summary else ""), file=sys.stderr, flush=True)
    return {"runs": runs, "rss_after_each_run_mib": [r.get("server_rss_mib") for r in runs]}


# ------------------------------------------------------------------------------------------------- servers

def tinygemma_command(model: str, port: int, args) -> list[str]:
    return [sys.executable, "-m", "tinygemma", "serve", "--model", model, "--port", str(port),
            "--max-batch", str(args.max_batch), "--ctx", str(args.ctx)]


def llama_server_command(binary: str, model: str, port: int, args) -> list[str]:
    return [binary, "-m", model, "--host", "127.0.0.1", "--port", str(port), "--parallel", str(args.users),
            "--cont-batching", "--ctx-size", str(args.users * args.ctx), "--threads", str(args.threads),
            "--threads-batch", str(args.threads), "--metrics", "--no-webui"]


def llama_server_flags(binary: str) -> tuple[str | None, str]:
    """(why it cannot run or None, its version line)."""
    path = shutil.which(binary) or binary
    if not Path(path).is_file() or not os.access(path, os.X_OK):
        return f"--llama-server {binary}: not an executable file", ""
    try:
        help_text = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60).stdout
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"--llama-server {binary}: cannot run it ({e})", ""
    for flag in ("--parallel", "--cont-batching", "--ctx-size", "--threads-batch", "--metrics", "--no-webui"):
        if flag not in help_text:
            return f"--llama-server {binary}: this version has no {flag}", ""
    line = next((ln for ln in (version.stdout + version.stderr).splitlines() if "version" in ln), "")
    return None, line.strip()


def bench_engine(engine: str, model: str, args, binary: str | None = None) -> dict:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if engine == "tinygemma":
        cmd = tinygemma_command(model, port, args)
    else:
        cmd = llama_server_command(binary, model, port, args)
    print(f"{engine}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    load_avg = os.getloadavg()
    server = Server(engine, cmd, port, env)
    try:
        ready_s = server.wait_ready(Path(model).stem)
        out = measure(server.base, server.pid, engine, Path(model).stem, args)
        out["peak_rss_mib"] = memory_mib(server.pid).get("peak_rss_mib")
    except Exception:
        print(server.tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
    return {"command": cmd, "ready_s": ready_s, "load_average_before": list(load_avg),
            "load_average_after": list(os.getloadavg()), **out}


# ------------------------------------------------------------------------------------------------- report

# key, label, unit, which way is better, format
METRICS = [
    ("completion_tps", "aggregate completion throughput", "tok/s", "higher", "{:.1f}"),
    ("ttft_p50_s", "time to first token p50", "s", "lower", "{:.2f}"),
    ("ttft_p95_s", "time to first token p95", "s", "lower", "{:.2f}"),
    ("itl_p50_ms", "inter-token latency p50", "ms", "lower", "{:.0f}"),
    ("itl_p95_ms", "inter-token latency p95", "ms", "lower", "{:.0f}"),
    ("requests", "requests sent", "", None, "{:.0f}"),
    ("failed_requests", "failed requests (and not sent)", "", "lower", "{:.0f}"),
    ("completion_tokens", "completion tokens", "", None, "{:.0f}"),
    ("wall_s", "wall time of the load", "s", "lower", "{:.1f}"),
    ("followup_prefill_tokens", "prefill tokens, follow-up turns", "tok", "lower", "{:.0f}"),
    ("followup_prompt_tokens", "prompt tokens, follow-up turns", "tok", None, "{:.0f}"),
    ("server_cpu_s", "server CPU time", "CPU-s", "lower", "{:.0f}"),
    ("peak_rss_mib", "server peak RSS", "MiB", "lower", "{:.0f}"),
    ("energy_per_conversation_j", "energy per conversation (estimate)", "J", "lower", "{:.1f}"),
]


def headline(engine_result: dict) -> dict:
    """Medians over runs of each table metric (peak RSS: the process's peak over all runs)."""
    runs = engine_result["runs"]

    def med(key):
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    out = {k: med(k) for k, *_ in METRICS if k not in ("itl_p50_ms", "itl_p95_ms", "peak_rss_mib")}
    for q in ("50", "95"):
        v = med(f"itl_p{q}_s")
        out[f"itl_p{q}_ms"] = None if v is None else 1000 * v
    out["failed_requests"] = sum(r["failed_requests"] + r["not_sent"] for r in runs)
    out["peak_rss_mib"] = engine_result.get("peak_rss_mib")
    return out


def format_table(result: dict) -> str:
    heads = result["headline"]
    tg, lc = heads.get("tinygemma", {}), heads.get("llama-server", {})
    s = result["settings"]
    head = ["metric", "unit", "tinygemma", "llama-server", "ratio tinygemma/llama-server"]
    rows = []
    for key, label, unit, better, fmt in METRICS:
        a, b = tg.get(key), lc.get(key)
        ratio = "-"
        if a is not None and b:
            ratio = f"{a / b:.2f}x" + {"higher": " (>1: tinygemma better)", "lower": " (<1: tinygemma better)",
                                       None: ""}[better]
        rows.append([label, unit, "-" if a is None else fmt.format(a), "-" if b is None else fmt.format(b), ratio])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    align = ["<", "<", ">", ">", "<"]

    def line(cells):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()

    m = result["machine"]
    out = [f"load: {s['users']} users x {s['turns']} turns, max_tokens {s['max_tokens']}, temperature "
           f"{s['temperature']}, {s['threads']} threads on {m['cores']} cores ({m['cpu_model']}), "
           f"median of {s['runs']} run(s); model {Path(result['model']).name}",
           f"tinygemma kernel path: {m.get('kernel_path')}; CPU features: {' '.join(m.get('cpu_features') or [])}; "
           f"llama-server: {m.get('llama_server') or '-'} (class: {m.get('llama_server_class') or 'as built'})",
           line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out.append(f"energy = server CPU-seconds x {s['watts_per_core']:g} W per busy core (assumed; no power "
               f"counters here), divided by {s['users']} conversations.")
    for engine, r in result["engines"].items():
        out.append(f"{engine}: RSS after each run (MiB): "
                   + ", ".join(f"{x:.0f}" for x in r["rss_after_each_run_mib"] if x is not None))
    out += [f"note: {n}" for n in result["notes"]]
    return "\n".join(out)


def machine_info(llama_server: str | None = None) -> dict:
    """The CPU (model, the features the kernels choose by, native bfloat16), tinygemma's kernel path and, for
    llama-server, which SIMD it was built for (from its --version / system info line)."""
    from tinygemma.kernels import machine_facts

    return {**machine_facts(), "llama_server": llama_server, "llama_server_class": os.environ.get("LLAMA_SERVER_CLASS"),
            "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def build_result(engines: dict, model: str, args, notes: list[str], machine: dict) -> dict:
    result = {
        "machine": machine,
        "model": str(model),
        "settings": {k: getattr(args, k) for k in ("users", "turns", "max_tokens", "temperature", "seed", "ctx",
                                                    "max_batch", "threads", "runs", "watts_per_core")},
        "headline": {e: headline(r) for e, r in engines.items()},
        "engines": engines,
        "notes": notes,
    }
    result["settings"].update(top_k=TOP_K, top_p=TOP_P, min_p=0.0)
    result["table"] = format_table(result)
    return result


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", metavar="PATH", help="GGUF file (default: the embedded Gemma 3 270M Q4_K_M)")
    p.add_argument("--llama-server", metavar="PATH",
                   help="llama.cpp's llama-server binary (bench/build_llama_server.sh builds one); without it "
                        "only tinygemma runs")
    p.add_argument("--users", type=int, default=DEFAULT_USERS, help=f"simultaneous users (default {DEFAULT_USERS})")
    p.add_argument("--turns", type=int, default=DEFAULT_TURNS, help=f"turns per conversation (default {DEFAULT_TURNS})")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help=f"per reply (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="base of the per-user, per-turn seeds")
    p.add_argument("--ctx", type=int, default=DEFAULT_CTX,
                   help=f"tokens per conversation: tinygemma --ctx, llama-server slot size (default {DEFAULT_CTX})")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="tinygemma serve --max-batch (default 32)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both servers (default: all cores)")
    p.add_argument("--runs", type=int, default=1, help="repeat the whole load N times per server (default 1)")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated (default: tinygemma,llama-server)")
    p.add_argument("--watts-per-core", type=float, default=DEFAULT_WATTS_PER_CORE,
                   help=f"assumed power of one busy core for the energy estimate (default {DEFAULT_WATTS_PER_CORE:g})")
    p.add_argument("--out", metavar="DIR", default="bench/results", help="where load.json goes (default bench/results)")
    return p


def main(argv: list[str] | None = None) -> dict:
    p = add_arguments(argparse.ArgumentParser(prog="bench/load.py", description=__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    args = p.parse_args(argv)
    for name in ("users", "turns", "max_tokens", "ctx", "max_batch", "threads", "runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or any(e not in ENGINES for e in engines):
        p.error(f"--engines must be among {', '.join(ENGINES)}")
    if args.model:
        model = Path(args.model).resolve()
        if not model.is_file():
            p.error(f"--model {model}: not a file")
    else:
        from tinygemma.weights.default import default_model_path
        model = default_model_path()

    notes: list[str] = []
    machine = machine_info(args.llama_server)
    machine["load_average_at_start"] = list(os.getloadavg())
    if "llama-server" in engines:
        why = "no --llama-server PATH given (bash bench/build_llama_server.sh DIR builds one)"
        if args.llama_server:
            why, machine["llama_server_version"] = llama_server_flags(args.llama_server)
        if why:
            print(f"bench/load.py: skipping llama-server: {why}", file=sys.stderr)
            notes.append(f"llama-server not run: {why}")
            engines.remove("llama-server")
    if not engines:
        p.error("no server to run")
    if machine["load_average_at_start"][0] > 0.5:
        notes.append(f"the machine was busy at the start (1-minute load average "
                     f"{machine['load_average_at_start'][0]:.2f}): other processes shared the cores")

    results = {}
    for engine in engines:
        results[engine] = bench_engine(engine, str(model), args, args.llama_server)
    machine["load_average_at_end"] = list(os.getloadavg())
    for engine, r in results.items():
        notes.append(f"{engine}: 1-minute load average {r['load_average_before'][0]:.2f} before, "
                     f"{r['load_average_after'][0]:.2f} after")
        rss = [x for x in r["rss_after_each_run_mib"] if x is not None]
        if len(rss) > 1:
            notes.append(f"{engine}: RSS grew {rss[-1] - rss[0]:+.0f} MiB from the first run to the last")

    result = build_result(results, str(model), args, notes, machine)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "load.json").write_text(json.dumps(result, indent=1) + "\n")
    print(result["table"])
    print(f"wrote {out_dir / 'load.json'}")
    return result


if __name__ == "__main__":
    main()
