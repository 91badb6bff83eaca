"""Slot extraction, text -> JSON (restaurant8k, PolyAI's Span-ConveRT data): read, prompt, generate, score.

The task: from a restaurant-booking utterance ("Table for 4 at 7pm, name's Ana Ruiz"), the JSON object of the
slots it fills: {"people":"4","time":"7pm","first_name":"Ana","last_name":"Ruiz"}.

- Data: the upstream JSON arrays (train.json / test.json), each element {"userInput": {"text"}, "context":
  {"requestedSlots": [...]}, "labels": [{"slot", "valueSpan": {"startIndex", "endIndex"}}]}; `startIndex` is
  omitted when 0. A slot's value is text[start:end], stripped; a slot labelled twice keeps its first span.
- Prompt and completion (PROMPT, `completion`): the requested slots, when the system had just asked for some,
  are part of the prompt ("13" means a time or a party size depending on the question). The completion is
  compact JSON with only the slots present, keys in SLOTS order; `prepare` writes prompt/completion rows for
  `tinygemma finetune`, and the completion ends with <eos> there.
- Generation (`predict`): greedy, through the continuous-batching engine, constrained to SCHEMA, so every output
  that ends before max_tokens parses and validates.
- Scores (`score`): exact match of the whole object, slot-level micro precision/recall/F1 and per-slot F1 (a
  (slot, value) pair is right when the value equals the gold one after stripping whitespace), and the share of
  outputs that parse and validate. An output that does not counts as the empty prediction {}.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..files import atomic_open, atomic_write_text

SLOTS = ("people", "date", "time", "first_name", "last_name")     # also the completion's key order
PROMPT = "Extract the booking details as JSON.\n{asked}Text: {text}\nJSON:"
ASKED = "Asked for: {slots}\n"
SCHEMA = {"type": "object", "properties": {slot: {"type": "string"} for slot in SLOTS},
          "additionalProperties": False}
METRICS = ("exact_match", "precision", "recall", "f1", "valid_json")
MAX_SHOWN_ERRORS = 20          # wrong predictions listed in extraction.md


class SlotExample(NamedTuple):
    text: str
    slots: dict[str, str]                 # slot -> value, only the slots present
    requested: tuple[str, ...] = ()       # the slots the system had just asked for (dialogue context)


@dataclass
class ExtractionReport:
    metrics: dict[str, float]             # METRICS, fractions in [0, 1]
    per_slot: dict[str, dict]             # slot -> {"precision", "recall", "f1", "support"}
    rows: list[dict]                      # per example: text, requested, gold, output, valid, prediction, exact
    info: dict = field(default_factory=dict)


def restaurant8k_examples(path: str | Path, limit: int | None = None) -> list[SlotExample]:
    """The examples of an upstream restaurant8k file (the first `limit` if given); ValueError names bad rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of examples (restaurant8k's train.json / test.json)")
    return [_example(path, n, row) for n, row in enumerate(data[:limit] if limit is not None else data, 1)]


def _example(path: Path, n: int, row) -> SlotExample:
    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: example {n}: {what}")

    if not isinstance(row, dict) or not isinstance(row.get("userInput"), dict) \
            or not isinstance(row["userInput"].get("text"), str):
        raise bad("needs userInput.text, a string")
    text = row["userInput"]["text"]
    requested = (row.get("context") or {}).get("requestedSlots", [])
    if not isinstance(requested, list) or not all(isinstance(s, str) for s in requested):
        raise bad("context.requestedSlots must be a list of strings")
    labels = row.get("labels", [])
    if not isinstance(labels, list):
        raise bad("labels must be a list")
    slots = {}
    for label in labels:
        span = label.get("valueSpan") if isinstance(label, dict) else None
        if not isinstance(span, dict) or label.get("slot") not in SLOTS:
            raise bad(f"a label needs a slot among {', '.join(SLOTS)} and a valueSpan")
        start, end = span.get("startIndex", 0), span.get("endIndex")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise bad(f"valueSpan {start}..{end} is not a span of the {len(text)}-character text")
        slots.setdefault(label["slot"], text[start:end].strip())
    return SlotExample(text, slots, tuple(dict.fromkeys(requested)))


def prompt(example: SlotExample) -> str:
    """What the model is fed (after BOS)."""
    asked = ASKED.format(slots=", ".join(example.requested)) if example.requested else ""
    return PROMPT.format(asked=asked, text=example.text)


def completion(slots: dict[str, str]) -> str:
    """The target: compact JSON, only the slots present, in SLOTS order ("{}" when none)."""
    return json.dumps({s: slots[s] for s in SLOTS if s in slots}, ensure_ascii=False, separators=(",", ":"))


def prepare(path: str | Path, out_jsonl: str | Path, limit: int | None = None) -> int:
    """Write {"prompt", "completion"} rows (for `tinygemma finetune --data`); returns how many."""
    examples = restaurant8k_examples(path, limit)
    out = Path(out_jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"prompt": prompt(ex), "completion": completion(ex.slots)}, ensure_ascii=False) + "\n")
    return len(examples)


def predict(lm, examples: list[SlotExample], max_tokens: int = 64, batch: int = 32, progress=None) -> list[str]:
    """Greedy outputs of `lm` (raw strings), constrained to SCHEMA, `batch` at a time through the engine.

    progress(done, total) is called as outputs arrive, in order.
    """
    from ..engine import GenerationRequest, generate_all
    from ..structured import grammar_for

    if not examples:
        return []
    grammar = grammar_for(json_schema=SCHEMA)
    requests = [GenerationRequest(lm.tokenizer.encode(prompt(ex), add_bos=True, parse_special=False),
                                  max_tokens=max_tokens, grammar=grammar) for ex in examples]
    return generate_all(lm, requests, batch, progress)


def valid(obj) -> bool:
    """Does `obj` (parsed JSON) validate against SCHEMA?"""
    return isinstance(obj, dict) and set(obj) <= set(SLOTS) and all(isinstance(v, str) for v in obj.values())


def parse(output: str) -> dict[str, str] | None:
    """The slots of a model output, or None when it is not JSON that validates against SCHEMA."""
    try:
        obj = json.loads(output)
    except json.JSONDecodeError:
        return None
    return obj if valid(obj) else None


def _normalize(slots: dict[str, str]) -> dict[str, str]:
    """Values stripped; a slot whose value is blank counts as absent."""
    return {k: v.strip() for k, v in slots.items() if v.strip()}


def _prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def score(golds: list[dict[str, str]], preds: list[dict[str, str] | None]) -> tuple[dict[str, float], dict[str, dict]]:
    """(metrics, per_slot) of predicted slot dicts against gold ones; a None prediction did not parse.

    metrics: exact_match, micro precision / recall / f1 over (slot, value) pairs, valid_json (share of
    predictions that are not None). per_slot: slot -> precision, recall, f1, support (gold count).
    """
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold examples but {len(preds)} predictions")
    if not golds:
        raise ValueError("no examples to score")
    counts = {s: [0, 0, 0] for s in SLOTS}          # slot -> [tp, fp, fn]
    exact = 0
    for gold, pred in zip(golds, preds):
        gold, pred = _normalize(gold), _normalize(pred or {})
        exact += gold == pred
        for slot in set(gold) | set(pred):
            c = counts.setdefault(slot, [0, 0, 0])
            hit = slot in gold and gold.get(slot) == pred.get(slot)
            c[0] += hit
            c[1] += slot in pred and not hit
            c[2] += slot in gold and not hit
    micro = _prf(*(sum(c[i] for c in counts.values()) for i in range(3)))
    metrics = {"exact_match": exact / len(golds), **micro,
               "valid_json": sum(p is not None for p in preds) / len(preds)}
    per_slot = {s: {**_prf(*c), "support": c[0] + c[2]} for s, c in counts.items()}
    return metrics, per_slot


def evaluate(examples: list[SlotExample], outputs: list[str], info: dict | None = None) -> ExtractionReport:
    """Score raw model outputs against the examples."""
    preds = [parse(o) for o in outputs]
    metrics, per_slot = score([ex.slots for ex in examples], preds)
    rows = [{"text": ex.text, "requested": list(ex.requested), "gold": ex.slots, "output": out,
             "valid": pred is not None, "prediction": pred or {},
             "exact": _normalize(ex.slots) == _normalize(pred or {})}
            for ex, out, pred in zip(examples, outputs, preds)]
    return ExtractionReport(metrics, per_slot, rows, dict(info or {}))


def run(lm, examples: list[SlotExample], max_tokens: int = 64, batch: int = 32, progress=None,
        info: dict | None = None) -> ExtractionReport:
    """Generate with `lm` and score."""
    t0 = time.perf_counter()
    outputs = predict(lm, examples, max_tokens=max_tokens, batch=batch, progress=progress)
    settings = {"max_tokens": max_tokens, "decoding": "greedy, constrained to the schema", "batch": batch,
                "generation_seconds": round(time.perf_counter() - t0, 1)}
    return evaluate(examples, outputs, {**(info or {}), **settings})


def write_reports(report: ExtractionReport, out_dir: str | Path) -> dict[str, Path]:
    """Write extraction.json (metrics, per-slot scores, settings, every example) and extraction.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "extraction.json", "markdown": out / "extraction.md"}
    atomic_write_text(paths["json"], json.dumps(asdict(report), indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(paths["markdown"], markdown_report(report))
    return paths


def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_report(report: ExtractionReport) -> str:
    """Metrics, per-slot table, settings, and the first wrong predictions."""
    m = report.metrics
    lines = ["# Slot extraction report", "", f"{len(report.rows)} examples.", "",
             "| metric | score |", "|---|---:|"]
    lines += [f"| {name.replace('_', ' ')} | {100 * m[name]:.2f}% |" for name in METRICS]
    lines += ["", "| slot | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {s} | {d['precision']:.3f} | {d['recall']:.3f} | {d['f1']:.3f} | {d['support']} |"
              for s, d in report.per_slot.items()]
    if report.info:
        lines += ["", "Settings: " + ", ".join(f"{k} = {v}" for k, v in report.info.items())]
    wrong = [r for r in report.rows if not r["exact"]]
    if wrong:
        lines += ["", f"First {min(len(wrong), MAX_SHOWN_ERRORS)} of {len(wrong)} wrong predictions:", "",
                  "| text | asked for | gold | output |", "|---|---|---|---|"]
        lines += [f"| {_cell(r['text'])} | {_cell(', '.join(r['requested']))} | {_cell(completion(r['gold']))} "
                  f"| {_cell(r['output'])} |" for r in wrong[:MAX_SHOWN_ERRORS]]
    return "\n".join(lines) + "\n"
