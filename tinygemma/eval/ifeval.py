"""IFEval (Zhou et al. 2023, arXiv:2311.07911): score responses to the 541 prompts, or generate them with a model.

Four metrics, as the official `evaluation_lib.py` computes them:
- strict: each instruction's check on the response as it is;
- loose: an instruction is followed if any of eight variants passes: the response, with its first line removed,
  its last line removed, both, and each of those four with every '*' removed;
- prompt-level: the share of prompts whose instructions are all followed; instruction-level: the share of
  instructions followed, over all prompts.
The checks themselves are in ifeval_checks.py.
"""

from __future__ import annotations

import collections
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import atomic_open, atomic_write_text
from ..jsonl import read_jsonl
from .ifeval_checks import CHECKS, check

PROMPTS_FILE = "input_data.jsonl"
METRICS = ("prompt_level_strict", "instruction_level_strict", "prompt_level_loose", "instruction_level_loose")


@dataclass(frozen=True)
class Prompt:
    key: int
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict]


@dataclass
class PromptResult:
    key: int
    prompt: str
    response: str
    instruction_id_list: list[str]
    strict: list[bool]
    loose: list[bool]


@dataclass
class IFEvalReport:
    metrics: dict[str, float]                      # the four metrics, fractions in [0, 1]
    per_instruction: dict[str, dict]               # id -> {"count", "strict", "loose"} (fractions)
    results: list[PromptResult]
    info: dict = field(default_factory=dict)       # model, settings, timings


def load_prompts(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """Read IFEval prompts (`input_data.jsonl`, or a folder holding it), the first `limit` if given."""
    path = Path(path)
    if path.is_dir():
        path = path / PROMPTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"IFEval prompts not found: {path}")
    prompts = []
    for n, row in enumerate((row for _, row in read_jsonl(path)), 1):
        missing = [k for k in ("key", "prompt", "instruction_id_list", "kwargs") if k not in row]
        if missing:
            raise ValueError(f"{path}: row {n} lacks {', '.join(missing)}")
        ids, kwargs = row["instruction_id_list"], row["kwargs"]
        if len(ids) != len(kwargs):
            raise ValueError(f"{path}: row {n} has {len(ids)} instruction ids but {len(kwargs)} kwargs")
        unknown = [i for i in ids if i not in CHECKS]
        if unknown:
            raise ValueError(f"{path}: row {n} has an unknown instruction id {unknown[0]!r}")
        prompts.append(Prompt(int(row["key"]), row["prompt"], list(ids), [dict(k) for k in kwargs]))
    if limit is not None:
        prompts = prompts[:limit]
    return prompts


def read_responses(path: str | Path, prompts: list[Prompt]) -> dict[int, str]:
    """Map prompt key -> response from a jsonl of {"prompt", "response"} (and optionally "key") rows.

    Rows are matched by `key` when they carry one, else by exact prompt text, as the official scorer does. A
    prompt still unmatched takes the row at its own position when that row's prompt matches no prompt: the
    official GPT-4 response file has one prompt whose wording was edited later in input_data.jsonl.
    """
    rows = [row for _, row in read_jsonl(path)]
    for n, row in enumerate(rows, 1):
        if not isinstance(row.get("response"), str) or not ("prompt" in row or "key" in row):
            raise ValueError(f"{path}: row {n} needs a string 'response' and a 'prompt' or 'key'")
    by_key = {int(r["key"]): r["response"] for r in rows if "key" in r}
    by_text = {r["prompt"]: r["response"] for r in rows if "prompt" in r}
    known_texts = {p.prompt for p in prompts}
    responses = {}
    for i, p in enumerate(prompts):
        if p.key in by_key:
            responses[p.key] = by_key[p.key]
        elif p.prompt in by_text:
            responses[p.key] = by_text[p.prompt]
        elif i < len(rows) and rows[i].get("prompt") not in known_texts and "key" not in rows[i]:
            responses[p.key] = rows[i]["response"]
        else:
            raise ValueError(f"{path}: no response for prompt key {p.key} ({p.prompt[:60]!r}...)")
    return responses


def loose_variants(response: str) -> list[str]:
    """The eight responses the loose metric tries, in the official order."""
    lines = response.split("\n")
    trimmed = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    no_stars = [t.replace("*", "") for t in trimmed]
    return [trimmed[0], no_stars[0], *trimmed[1:], *no_stars[1:]]


def score_prompt(prompt: Prompt, response: str) -> PromptResult:
    """Strict and loose verdicts for each instruction of one prompt."""
    variants = loose_variants(response)
    strict, loose = [], []
    for instruction_id, kwargs in zip(prompt.instruction_id_list, prompt.kwargs):
        strict.append(check(instruction_id, response, kwargs))
        loose.append(strict[-1] or any(check(instruction_id, v, kwargs) for v in variants[1:]))
    return PromptResult(prompt.key, prompt.prompt, response, prompt.instruction_id_list, strict, loose)


def summarize(results: list[PromptResult]) -> tuple[dict[str, float], dict[str, dict]]:
    """The four metrics and a per-instruction-id breakdown of a list of scored prompts."""
    if not results:
        raise ValueError("no prompts to score")
    n_instructions = sum(len(r.strict) for r in results)
    metrics = {
        "prompt_level_strict": sum(all(r.strict) for r in results) / len(results),
        "instruction_level_strict": sum(sum(r.strict) for r in results) / n_instructions,
        "prompt_level_loose": sum(all(r.loose) for r in results) / len(results),
        "instruction_level_loose": sum(sum(r.loose) for r in results) / n_instructions,
    }
    counts = collections.defaultdict(lambda: [0, 0, 0])          # id -> [count, strict passes, loose passes]
    for r in results:
        for instruction_id, s, lo in zip(r.instruction_id_list, r.strict, r.loose):
            c = counts[instruction_id]
            c[0], c[1], c[2] = c[0] + 1, c[1] + s, c[2] + lo
    per_instruction = {i: {"count": n, "strict": s / n, "loose": lo / n} for i, (n, s, lo) in sorted(counts.items())}
    return metrics, per_instruction


def score(prompts: list[Prompt], responses: dict[int, str], info: dict | None = None) -> IFEvalReport:
    """Score `responses` (prompt key -> text) against `prompts`."""
    results = [score_prompt(p, responses[p.key]) for p in prompts]
    metrics, per_instruction = summarize(results)
    return IFEvalReport(metrics, per_instruction, results, dict(info or {}))


def build_prompt(lm, prompt: str, mode: str = "auto"):
    """What the model is fed: the chat template for an instruction-tuned model, else the raw prompt.

    mode: "chat", "completion" or "auto" (chat when `lm.is_instruction_tuned`). Returns token ids.
    """
    if _uses_chat(lm, mode):
        return lm.tokenizer.encode_chat([{"role": "user", "content": prompt}])
    return lm.tokenizer.encode(prompt, add_bos=True)


def _uses_chat(lm, mode: str) -> bool:
    if mode not in ("auto", "chat", "completion"):
        raise ValueError(f"mode must be auto, chat or completion, got {mode!r}")
    return mode == "chat" or (mode == "auto" and lm.is_instruction_tuned)


def generate_responses(lm, prompts: list[Prompt], max_tokens: int = 512, mode: str = "auto",
                       progress=None, batch: int = 32) -> tuple[dict[int, str], dict[int, bool]]:
    """Greedy responses of `lm` to each prompt, `batch` at a time through the continuous-batching engine
    (on the fast path a row's output does not depend on the batch), and whether each one ended by itself
    (the model's end-of-turn, not the token limit). progress(done, total) after each one."""
    from ..engine import GenerationRequest, generate_finished

    requests = [GenerationRequest(build_prompt(lm, p.prompt, mode), max_tokens=max_tokens) for p in prompts]
    outputs = generate_finished(lm, requests, batch, progress)
    return ({p.key: text for p, (text, _) in zip(prompts, outputs)},
            {p.key: reason == "stop" for p, (_, reason) in zip(prompts, outputs)})


def run(lm, prompts: list[Prompt], max_tokens: int = 512, mode: str = "auto", progress=None,
        info: dict | None = None) -> IFEvalReport:
    """Generate responses with `lm` and score them; info records the settings and the share of answers that
    ended by themselves."""
    t0 = time.perf_counter()
    responses, ended = generate_responses(lm, prompts, max_tokens, mode, progress)
    settings = {"max_tokens": max_tokens, "decoding": "greedy",
                "prompt_format": "chat" if _uses_chat(lm, mode) else "completion",
                "generation_seconds": round(time.perf_counter() - t0, 1),
                "ended_by_itself": round(sum(ended.values()) / max(1, len(ended)), 4)}
    return score(prompts, responses, {**(info or {}), **settings})


def write_reports(report: IFEvalReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ifeval.json (metrics + per-prompt results), ifeval.md, and responses.jsonl (re-scorable)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "ifeval.json", "markdown": out / "ifeval.md", "responses": out / "responses.jsonl"}
    doc = {"metrics": report.metrics, "per_instruction": report.per_instruction, "info": report.info,
           "results": [asdict(r) for r in report.results]}
    atomic_write_text(paths["json"], json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(paths["markdown"], markdown_report(report))
    with atomic_open(paths["responses"], "w", encoding="utf-8") as f:
        for r in report.results:
            f.write(json.dumps({"key": r.key, "prompt": r.prompt, "response": r.response}, ensure_ascii=False) + "\n")
    return paths


def markdown_report(report: IFEvalReport) -> str:
    """A short Markdown summary: the four metrics, settings, and the per-instruction table."""
    n_prompts = len(report.results)
    n_instructions = sum(len(r.strict) for r in report.results)
    lines = ["# IFEval report", "",
             f"{n_prompts} prompts, {n_instructions} instructions.", "",
             "| metric | score |", "|---|---:|"]
    lines += [f"| {name.replace('_', ' ')} | {100 * report.metrics[name]:.2f}% |" for name in METRICS]
    if report.info:
        lines += ["", "Settings: " + ", ".join(f"{k} = {v}" for k, v in report.info.items())]
    lines += ["", "| instruction | count | strict | loose |", "|---|---:|---:|---:|"]
    lines += [f"| {i} | {d['count']} | {100 * d['strict']:.1f}% | {100 * d['loose']:.1f}% |"
              for i, d in report.per_instruction.items()]
    return "\n".join(lines) + "\n"
