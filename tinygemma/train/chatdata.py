"""Instruction data for `finetune --task chat`, built from permissively licensed instruction sets.

    tinygemma chat-data ../shared/data/instruct --out data/chat        # train.jsonl, valid.jsonl, DATA_CARD.md

Sources (each optional: a missing folder is reported and skipped), as laid out in ../shared/data/instruct:
- flan_cot/*.tsv: FLAN v2 chain-of-thought (question, answer, rationale) -> the rationale, then the answer;
- gpteacher/{codegen,roleplay}-instruct.json: instruction (+ input) -> response (written by GPT-4); the
  toolformer file is left out (its answers call tools in a syntax nobody here runs);
- self_instruct/*.jsonl: human-written tasks with their instances;
- oasst/*.jsonl: OpenAssistant trees, every root-to-leaf path a multi-turn conversation (deleted or
  rejected messages dropped);
- chitchat (PyPI `chitchat-dataset`, if installed): casual human conversations, a capped share;
- stories (tinygemma.train.stories): the story page's prompts answered by stories that keep to the choices.
A share of single-turn examples gets verifiable instructions added (tinygemma.train.constraints: the answer
edited so every instruction holds, checked with the project's IFEval checkers).

Every example is a {"messages": [...], "source": ...} row. Rows are deduplicated (by their normalised user
turns), cut to the training length (a conversation loses whole trailing turns until it fits; a single turn
that does not fit is dropped), and any row sharing an 8-word sequence with an IFEval prompt is dropped (IFEval
is for evaluation only). DATA_CARD.md records sources, licences, counts and the overlap check.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import TinyGemmaError
from ..files import atomic_write_text

NGRAM = 8                   # a row sharing this many consecutive words with an IFEval prompt is dropped
VALID_SHARE = 0.02          # held-out share (at most MAX_VALID rows)
MAX_VALID = 500
CHITCHAT_LIMIT = 1000       # casual conversations at most: a seasoning, not the meal

LICENCES = {
    "flan_cot": "Apache-2.0 (FLAN); data: AQuA Apache-2.0, CREAK MIT, ECQA, GSM8K MIT, QASC CC BY 4.0, "
                "Sen-Making, StrategyQA MIT",
    "gpteacher": "MIT (text generated with GPT-4: OpenAI's terms apply to whoever generated it)",
    "self_instruct": "Apache-2.0",
    "oasst": "Apache-2.0",
    "chitchat": "MIT (PyPI chitchat-dataset)",
    "stories": "Apache-2.0 (composed by tinygemma.train.stories from the story page's choices)",
}


class ChatDataError(TinyGemmaError):
    """A source that cannot be read (one-line message naming the file)."""


@dataclass
class Example:
    messages: list[dict]
    source: str
    constraints: list[str] = field(default_factory=list)

    def user_text(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")

    def row(self) -> dict:
        row = {"messages": self.messages, "source": self.source}
        if self.constraints:
            row["constraints"] = self.constraints
        return row


def _turns(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user.strip()}, {"role": "assistant", "content": assistant.strip()}]


# ---------------------------------------------------------------------------------------------- sources

def read_flan_cot(folder: Path) -> Iterator[Example]:
    for path in sorted(folder.glob("*.tsv")):
        name = path.stem.removesuffix("_train")
        with open(path, encoding="utf-8", newline="") as f:
            for n, cols in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                if len(cols) != 3:
                    raise ChatDataError(f"{path}:{n}: expected 3 tab-separated columns, got {len(cols)}")
                question, answer, rationale = (c.replace("\\n", "\n").strip() for c in cols)
                if question and answer and rationale:
                    yield Example(_turns(question, f"{rationale}\nSo the answer is {answer}."), f"flan_cot/{name}")


def _json_list(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ChatDataError(f"{path}: {e}") from None
    if not isinstance(data, list):
        raise ChatDataError(f"{path}: expected a JSON list")
    return data


def _with_input(instruction: str, extra: str) -> str:
    instruction, extra = instruction.strip(), (extra or "").strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def read_gpteacher(folder: Path) -> Iterator[Example]:
    for name in ("codegen-instruct", "roleplay-instruct"):
        path = folder / f"{name}.json"
        if not path.is_file():
            continue
        for item in _json_list(path):
            if isinstance(item, dict) and item.get("instruction") and item.get("response"):
                yield Example(_turns(_with_input(item["instruction"], item.get("input")), item["response"]),
                              f"gpteacher/{name.split('-')[0]}")


def _jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as e:
                    raise ChatDataError(f"{path}:{n}: not valid JSON ({e})") from None


def read_self_instruct(folder: Path) -> Iterator[Example]:
    for path in sorted(folder.glob("*.jsonl")):
        for task in _jsonl(path):
            for inst in task.get("instances") or []:
                if inst.get("output", "").strip():
                    yield Example(_turns(_with_input(task.get("instruction", ""), inst.get("input")), inst["output"]),
                                  "self_instruct")


def read_oasst(folder: Path) -> Iterator[Example]:
    """Every root-to-leaf path of each tree whose messages are all kept, alternating user / assistant."""
    def paths(node, prefix):
        if node.get("deleted") or node.get("review_result") is False or not node.get("text", "").strip():
            return
        role = "user" if node.get("role") == "prompter" else "assistant"
        here = prefix + [{"role": role, "content": node["text"].strip()}]
        replies = [r for r in node.get("replies") or [] if isinstance(r, dict)]
        if not replies and role == "assistant":
            yield here
        for reply in replies:
            yield from paths(reply, here)

    for path in sorted(folder.glob("*.jsonl")):
        for tree in _jsonl(path):
            if tree.get("prompt", {}).get("lang", "en") != "en":
                continue
            for conversation in paths(tree.get("prompt", {}), []):
                yield Example(conversation, "oasst")


def read_chitchat(limit: int = CHITCHAT_LIMIT) -> Iterator[Example]:
    """Casual conversations from PyPI `chitchat-dataset` (if installed): the first speaker is the user; each
    speaker's consecutive lines are one turn."""
    try:
        import chitchat_dataset
    except ImportError:
        return
    data = json.loads((Path(chitchat_dataset.__file__).parent / "dataset.json").read_text(encoding="utf-8"))
    for k, convo in enumerate(data.values()):
        if k >= limit:
            return
        turns = [" ".join(m["text"].strip() for m in block) for block in convo.get("messages", []) if block]
        turns = turns[:len(turns) // 2 * 2][:8]
        if len(turns) >= 2:
            yield Example([{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                           for i, t in enumerate(turns)], "chitchat")


SOURCES: dict[str, Callable[[Path], Iterable[Example]]] = {
    "flan_cot": read_flan_cot, "gpteacher": read_gpteacher, "self_instruct": read_self_instruct,
    "oasst": read_oasst,
}


# -------------------------------------------------------------------------------------------- cleaning

def _normal(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def ifeval_ngrams(path: Path | None) -> set[tuple[str, ...]]:
    """8-word sequences of IFEval's prompts (read only to keep them out of the training data)."""
    if path is None or not path.is_file():
        return set()
    grams: set[tuple[str, ...]] = set()
    for row in _jsonl(path):
        grams |= ngrams(row.get("prompt", ""))
    return grams


def fit(example: Example, count_tokens: Callable[[list[dict]], int], max_tokens: int) -> Example | None:
    """The example cut to `max_tokens` by dropping whole trailing user/assistant pairs; None if even its
    first exchange does not fit."""
    messages = example.messages
    while len(messages) >= 2:
        if count_tokens(messages) <= max_tokens:
            return Example(messages, example.source, example.constraints)
        messages = messages[:-2]
    return None


# ---------------------------------------------------------------------------------------------- build

@dataclass
class BuildReport:
    read: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    too_long: Counter = field(default_factory=Counter)
    ifeval_overlap: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    constraints: Counter = field(default_factory=Counter)
    constrained_examples: int = 0
    multi_turn: int = 0
    skipped_sources: dict = field(default_factory=dict)
    train: int = 0
    valid: int = 0


def build(source_dir: str | Path, tokenizer, out_dir: str | Path, max_tokens: int = 512, seed: int = 0,
          constraint_share: float = 0.35, ifeval: str | Path | None = None, sources: list[str] | None = None,
          chitchat: bool = True, stories: int = 2000, command: str = "") -> BuildReport:
    """Read the sources, clean, add constraints, split and write train.jsonl, valid.jsonl and DATA_CARD.md."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if not source_dir.is_dir():
        raise ChatDataError(f"{source_dir}: not a directory of instruction data")
    if not 0.0 <= constraint_share <= 1.0:
        raise ChatDataError(f"constraint share must be in [0, 1], got {constraint_share}")
    if max_tokens < 16:
        raise ChatDataError(f"max tokens must be at least 16, got {max_tokens}")
    unknown = sorted(set(sources or []) - set(SOURCES) - {"chitchat", "stories"})
    if unknown:
        raise ChatDataError(f"unknown source {unknown[0]!r} (known: {', '.join([*SOURCES, 'chitchat', 'stories'])})")
    if stories < 0:
        raise ChatDataError(f"stories must be >= 0, got {stories}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    report = BuildReport()
    banned = ifeval_ngrams(Path(ifeval) if ifeval else None)

    def count_tokens(messages):
        return len(tokenizer.encode_chat(messages, add_generation_prompt=False))

    examples: list[Example] = []
    seen: set[str] = set()
    readers = [(name, lambda f=fn, n=name: f(source_dir / n)) for name, fn in SOURCES.items()
               if not sources or name in sources]
    if chitchat and (not sources or "chitchat" in sources):
        readers.append(("chitchat", read_chitchat))
    if stories and (not sources or "stories" in sources):
        from .stories import story_conversations

        readers.append(("stories", lambda: (Example(m, "stories") for m in story_conversations(stories, seed))))
    for name, read in readers:
        if name not in ("chitchat", "stories") and not (source_dir / name).is_dir():
            report.skipped_sources[name] = "folder not found"
            continue
        before = len(examples)
        for ex in read():
            report.read[ex.source] += 1
            key = hashlib.sha1("\x00".join(_normal(m["content"][:300]) for m in ex.messages).encode()).hexdigest()
            if key in seen:
                report.duplicates[ex.source] += 1
                continue
            seen.add(key)
            if banned and ngrams(ex.user_text()) & banned:
                report.ifeval_overlap[ex.source] += 1
                continue
            examples.append(ex)
        if name == "chitchat" and len(examples) == before:
            report.skipped_sources[name] = "not installed (pip install chitchat-dataset)"

    examples = _add_constraints(examples, constraint_share, rng, report, banned)
    kept = []
    for ex in examples:
        cut = fit(ex, count_tokens, max_tokens)
        if cut is None:
            report.too_long[ex.source] += 1
            continue
        kept.append(cut)
        report.kept[cut.source] += 1
        report.multi_turn += len(cut.messages) > 2
    rng.shuffle(kept)
    n_valid = min(MAX_VALID, int(len(kept) * VALID_SHARE))
    valid, train = kept[:n_valid], kept[n_valid:]
    report.train, report.valid = len(train), len(valid)
    atomic_write_text(out_dir / "train.jsonl", "".join(json.dumps(e.row(), ensure_ascii=False) + "\n" for e in train))
    atomic_write_text(out_dir / "valid.jsonl", "".join(json.dumps(e.row(), ensure_ascii=False) + "\n" for e in valid))
    atomic_write_text(out_dir / "DATA_CARD.md", data_card(report, max_tokens, seed, constraint_share,
                                                          bool(banned), command))
    return report


def _add_constraints(examples: list[Example], share: float, rng: random.Random, report: BuildReport,
                     banned: set) -> list[Example]:
    """Single-turn examples (not code, not stories) get verifiable instructions with probability `share`."""
    try:
        from .constraints import augment
    except ImportError:
        return examples
    out = []
    for ex in examples:
        if (share and len(ex.messages) == 2 and ex.source not in ("gpteacher/codegen", "stories")
                and rng.random() < share):
            aug = augment(ex.messages[0]["content"], ex.messages[1]["content"], rng)
            if aug is not None and not (banned and ngrams(aug.prompt) & banned):
                ex = Example(_turns(aug.prompt, aug.response), ex.source, list(aug.instruction_ids))
                report.constrained_examples += 1
                report.constraints.update(aug.instruction_ids)
        out.append(ex)
    return out


def data_card(r: BuildReport, max_tokens: int, seed: int, share: float, checked_ifeval: bool, command: str) -> str:
    sources = sorted(set(r.read) | set(r.kept))
    lines = [
        "# Chat instruction data: data card", "",
        f"Built {datetime.date.today().isoformat()} by tinygemma.train.chatdata"
        + (f" (`{command}`)" if command else "") + f"; seed {seed}; at most {max_tokens} tokens per conversation "
        "(Gemma 3 chat template); " + f"{r.train} training and {r.valid} held-out conversations, "
        f"{r.multi_turn} of them multi-turn.", "",
        "| source | read | duplicates | IFEval overlap | too long | kept | licence |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in sources:
        lines.append(f"| {s} | {r.read[s]} | {r.duplicates[s]} | {r.ifeval_overlap[s]} | {r.too_long[s]} | "
                     f"{r.kept[s]} | {LICENCES.get(s.split('/')[0], '?')} |")
    total = sum(r.kept.values())
    lines += ["", f"Total kept: {total}."]
    for name, why in r.skipped_sources.items():
        lines.append(f"Skipped source {name}: {why}.")
    lines += ["", "## Verifiable instructions",
              f"{r.constrained_examples} single-turn examples (share asked: {share:.0%} of eligible ones, code "
              "excluded) carry instructions of IFEval's kinds, in our own wordings, with the answer edited so "
              "that each holds (checked with tinygemma's IFEval checkers before the example is kept):", ""]
    lines += [f"- {k}: {v}" for k, v in r.constraints.most_common()] or ["- none"]
    lines += ["", "## IFEval overlap",
              (f"Rows sharing any {NGRAM}-word sequence with an IFEval prompt were dropped: "
               f"{sum(r.ifeval_overlap.values())} in all." if checked_ifeval else
               "IFEval prompts were not given (--ifeval): the overlap was NOT checked."),
              "", "## Licences and terms",
              "Each source keeps its licence (table). GPTeacher's text was written by GPT-4. A model trained on "
              "this data is a Gemma derivative: the Gemma terms of use apply to it."]
    return "\n".join(lines) + "\n"
