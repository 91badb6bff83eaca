"""Evaluations for an instruction-following model, base and tuned through the same harness:

- story compliance on the 50 fixed choice sets of tinygemma.train.stories (never trained on): the story names
  the chosen character and setting, ends by itself (not cut by the token budget), and its length is within
  the requested word range; scored by code;
- GSM8K accuracy on a fixed, seeded subset of the test split (the last number of the answer, or the one after
  "answer is" / "####", against the reference's "#### N").

Both generate greedily through the continuous-batching engine; an instruction-tuned model gets the chat
template, the base model the story page's book prompt and a plain "Question: ... Answer:" prompt.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..files import atomic_write_text
from ..jsonl import read_jsonl
from ..story import LENGTHS, StoryChoices, finish_story, story_prompt
from ..train.stories import count_words, held_out_choices   # count_words: as the training stories were sized

GSM8K_SUBSET = 250
GSM8K_SEED = 0
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


# ------------------------------------------------------------------------------------------------ stories

def _key_noun(phrase: str) -> str:
    """The word a story must mention for a choice: 'a curious cat' -> 'cat', 'in a magical forest' -> 'forest'."""
    words = re.findall(r"[A-Za-z]+", phrase)
    return words[-1].lower() if words else phrase.lower()


@dataclass
class StoryScore:
    choices: dict
    story: str
    names_character: bool
    names_setting: bool
    ended: bool
    words: int
    length_ok: bool

    @property
    def compliant(self) -> bool:
        return self.names_character and self.names_setting and self.ended and self.length_ok


def score_story(choices: StoryChoices, text: str, finish_reason: str) -> StoryScore:
    story = finish_story(text)
    low, high = LENGTHS[choices.length]
    words = count_words(story)
    lowered = story.lower()
    return StoryScore(asdict(choices), story, _key_noun(choices.character) in lowered,
                      _key_noun(choices.setting) in lowered, finish_reason == "stop", words, low <= words <= high)


def run_stories(lm, sets: list[StoryChoices] | None = None, instruction_tuned: bool | None = None,
                batch: int = 32, progress=None) -> dict:
    """Generate a story for each choice set (greedy) and score it; returns the report dict."""
    from ..engine import Engine, EngineConfig, GenerationRequest
    from ..sampling import SamplingParams

    sets = sets if sets is not None else held_out_choices()
    tuned = lm.is_instruction_tuned if instruction_tuned is None else instruction_tuned
    prompts = [story_prompt(c, tuned) for c in sets]
    scores = []
    with Engine.from_lm(lm, EngineConfig(max_batch=batch, max_queue=len(sets) + 1, idle_cache_bytes=0)) as engine:
        handles = []
        for p in prompts:
            ids = (lm.tokenizer.encode_chat(p.messages) if p.messages is not None
                   else lm.tokenizer.encode(p.text, add_bos=True, parse_special=False))
            handles.append(engine.submit(GenerationRequest(ids, SamplingParams(), max_tokens=p.max_tokens,
                                                           stop=p.stop)))
        for i, (c, p, h) in enumerate(zip(sets, prompts, handles), 1):
            text, event = h.result()
            scores.append(score_story(c, p.opening + text, event.finish_reason))
            if progress:
                progress(i, len(sets))
    n = len(scores)
    metrics = {name: sum(getattr(s, name) for s in scores) / n for name in
               ("compliant", "names_character", "names_setting", "ended", "length_ok")}
    return {"metrics": metrics, "prompt_format": "chat" if tuned else "story book",
            "results": [{**asdict(s), "compliant": s.compliant} for s in scores]}


# -------------------------------------------------------------------------------------------------- GSM8K

def gsm8k_subset(path: str | Path, n: int = GSM8K_SUBSET, seed: int = GSM8K_SEED) -> list[dict]:
    """A fixed subset of the test split: `n` rows drawn with `seed` (in file order)."""
    rows = [row for _, row in read_jsonl(path)]
    for k, row in enumerate(rows):
        if not isinstance(row.get("question"), str) or "####" not in str(row.get("answer", "")):
            raise ValueError(f"{path}: row {k + 1} needs 'question' and an 'answer' ending in '#### N'")
    if n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None


def gsm8k_reference(answer: str) -> float | None:
    return _number(answer.split("####")[-1].strip())


def gsm8k_prediction(response: str) -> float | None:
    """The number after the last 'answer is' or '####' if any, else the last number in the response."""
    for marker in ("####", "answer is"):
        if marker in response:
            found = _NUMBER.findall(response.rsplit(marker, 1)[1])
            if found:
                return _number(found[0])
    found = _NUMBER.findall(response)
    return _number(found[-1]) if found else None


def run_gsm8k(lm, rows: list[dict], max_tokens: int = 512, instruction_tuned: bool | None = None,
              batch: int = 32, progress=None) -> dict:
    from ..engine import GenerationRequest, generate_finished

    tuned = lm.is_instruction_tuned if instruction_tuned is None else instruction_tuned
    if tuned:
        ids = [lm.tokenizer.encode_chat([{"role": "user", "content": r["question"]}]) for r in rows]
        stop = ()
    else:
        ids = [lm.tokenizer.encode(f"Question: {r['question']}\nAnswer:", add_bos=True) for r in rows]
        stop = ("\nQuestion:",)
    outputs = generate_finished(lm, [GenerationRequest(i, max_tokens=max_tokens, stop=stop) for i in ids], batch,
                                progress)
    results = []
    for row, (out, reason) in zip(rows, outputs):
        want, got = gsm8k_reference(row["answer"]), gsm8k_prediction(out)
        results.append({"question": row["question"], "reference": want, "prediction": got, "response": out,
                        "correct": want is not None and got is not None and abs(want - got) < 1e-6,
                        "ended": reason == "stop"})
    return {"metrics": {"accuracy": sum(r["correct"] for r in results) / len(results),
                        "ended_by_itself": sum(r["ended"] for r in results) / len(results)},
            "prompt_format": "chat" if tuned else "Question/Answer", "max_tokens": max_tokens, "results": results}


def write_report(report: dict, out_dir: str | Path, name: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return out / f"{name}.json"
