"""Training data: rows from .jsonl / .csv files, turned into token ids with per-token targets, and batches.

Row kinds (each file holds one kind; the first row decides):
- {"text": ...}: language modelling on every token;
- {"prompt": ..., "completion": ...}: the loss covers only the completion tokens (and a final <eos>);
- {"messages": [{"role", "content"}, ...]}: the Gemma 3 chat template; the loss covers the assistant turns;
- classification rows (text column + label column, .csv or .jsonl) for the classification tasks.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TinyGemmaError
from ..jsonl import read_jsonl

IGNORE = -100          # target of a position that is not scored (cross_entropy's ignore_index)
# The generative classifier's prompt and completion: " {label}" then <eos>, which ends a label so that a
# label that is a prefix of another ("card" vs "card_arrival") still scores as itself.
CLASSIFY_PROMPT = "Text: {text}\nLabel:"


class DataError(TinyGemmaError, ValueError):
    """A data file is missing, malformed, or lacks a needed field; the message names file, line and field."""


@dataclass
class Example:
    ids: list[int]
    targets: list[int] | None = None   # per position: the next token id to predict, or IGNORE (language modelling)
    label: int | None = None           # class index (classification head)

    @property
    def scored(self) -> int:
        """Positions that count in the loss."""
        return 1 if self.label is not None else sum(t != IGNORE for t in self.targets)


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a .jsonl (one JSON object a line) or .csv (header row) file, each tagged with its line number."""
    path = Path(path)
    if not path.is_file():          # also refuses FIFOs and devices, which would block or never end
        raise DataError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise DataError(f"{path}: data files must be .jsonl or .csv, not {suffix or 'no extension'}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")          # a byte-order mark (spreadsheet exports) is dropped
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            if not reader.fieldnames:
                raise DataError(f"{path}: empty csv file (a header row is needed)")
            rows = [{"_line": reader.line_num, **row} for row in reader]
        except csv.Error as e:                  # NUL bytes, a field over csv's size limit...
            raise DataError(f"{path}:{reader.line_num + 1}: not valid CSV ({e})") from None
    else:
        rows = [{"_line": n, **row} for n, row in read_jsonl(path, DataError)]
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _field(path, row: dict, name: str, kind=str):
    value = row.get(name)
    if value is None or (kind is str and not isinstance(value, str)) or (kind is list and not isinstance(value, list)):
        what = "a string" if kind is str else "a list"
        raise DataError(f"{path}:{row['_line']}: field {name!r} is missing or not {what}")
    return value


def lm_examples(path, rows: list[dict], tokenizer, max_length: int) -> list[Example]:
    """Language-modelling examples from text, prompt/completion or messages rows (the first row decides)."""
    first = rows[0]
    kind = "messages" if "messages" in first else "prompt" if "prompt" in first else "text" if "text" in first else None
    if kind is None:
        raise DataError(f"{path}:{first['_line']}: a row needs 'text', 'prompt'/'completion' or 'messages'")
    out = []
    for row in rows:
        if kind == "messages":
            ids, trained = chat_tokens(path, row, tokenizer)
            out.append(_lm_example(path, row, ids[:max_length], trained[:max_length]))
            continue
        if kind == "text":
            segments = [(_field(path, row, "text"), True)]
        else:
            segments = [(_field(path, row, "prompt"), False), (_field(path, row, "completion"), True)]
        ids, trained = [tokenizer.bos_id], [False]
        for text, train in segments:
            piece = tokenizer.encode(text, add_bos=False)
            ids += piece
            trained += [train] * len(piece)
        if kind == "prompt":            # a completion ends with <eos>, so the model learns to stop
            ids.append(tokenizer.eos_id)
            trained.append(True)
        out.append(_lm_example(path, row, ids[:max_length], trained[:max_length]))
    return out


def _lm_example(path, row, ids: list[int], trained: list[bool]) -> Example:
    # Position t predicts token t + 1, which counts when token t + 1 is trained.
    targets = [nxt if train else IGNORE for nxt, train in zip(ids[1:], trained[1:])] + [IGNORE]
    if all(t == IGNORE for t in targets):
        raise DataError(f"{path}:{row['_line']}: no tokens to train on (empty completion, or truncated away)")
    return Example(ids, targets)


def chat_tokens(path, row: dict, tokenizer) -> tuple[list[int], list[bool]]:
    """The conversation's ids through the chat template (tokenizer.encode_chat: message content is text, only
    the template's markers are control tokens, as at inference) and which of them are trained: each assistant
    turn's content and its <end_of_turn>; everything else (system, user turns, role headers) is context."""
    messages = _field(path, row, "messages", list)
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{path}:{row['_line']}: field 'messages' needs objects with string 'role' and 'content'")
    if not any(m["role"] in ("assistant", "model") for m in messages):
        raise DataError(f"{path}:{row['_line']}: field 'messages' has no assistant turn to train on")
    ids, trained = [tokenizer.bos_id], [False]
    try:
        for i, m in enumerate(messages):
            if m["role"] not in ("assistant", "model"):
                continue
            prompt = tokenizer.encode_chat(messages[:i], add_generation_prompt=True)
            full = tokenizer.encode_chat(messages[:i + 1], add_generation_prompt=False)
            if prompt[:len(ids)] != ids or full[:len(prompt)] != prompt:
                raise DataError(f"{path}:{row['_line']}: the conversation does not split into turns")
            trained += [False] * (len(prompt) - len(ids)) + [True] * (len(full) - len(prompt))
            ids = full
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}:{row['_line']}: {e}") from None
    return ids, trained


def label_set(path, rows: list[dict], label_column: str) -> list[str]:
    """The sorted labels of classification rows."""
    return sorted({_label(path, row, label_column) for row in rows})


def _label(path, row: dict, column: str) -> str:
    value = row.get(column)
    if value is None or str(value).strip() == "":
        raise DataError(f"{path}:{row['_line']}: field {column!r} is missing or empty")
    return str(value).strip()


def classification_texts(path, rows: list[dict], text_column: str) -> list[str]:
    return [_field(path, row, text_column) for row in rows]


def head_examples(path, rows, tokenizer, labels: list[str], text_column: str, label_column: str,
                  max_length: int) -> list[Example]:
    """Examples for the classification head: BOS + text ids and the label's index."""
    index = {label: i for i, label in enumerate(labels)}
    out = []
    for row, text in zip(rows, classification_texts(path, rows, text_column)):
        label = _label(path, row, label_column)
        if label not in index:
            raise DataError(f"{path}:{row['_line']}: label {label!r} is not among the training labels")
        out.append(Example(tokenizer.encode(text, add_bos=True)[:max_length], label=index[label]))
    return out


def generative_examples(path, rows, tokenizer, text_column: str, label_column: str,
                        max_length: int) -> list[Example]:
    """Prompt/completion examples for the generative classifier: CLASSIFY_PROMPT, then " {label}" <eos>."""
    out = []
    for row, text in zip(rows, classification_texts(path, rows, text_column)):
        label_ids = tokenizer.encode(" " + _label(path, row, label_column), add_bos=False) + [tokenizer.eos_id]
        # Truncate the text, never the label.
        prompt = tokenizer.encode(CLASSIFY_PROMPT.format(text=text), add_bos=True)[:max(1, max_length - len(label_ids))]
        ids = prompt + label_ids
        out.append(_lm_example(path, row, ids, [False] * len(prompt) + [True] * len(label_ids)))
    return out


def split_rows(path, rows: list[dict], fraction: float, limit: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) rows: a seeded random `fraction` of the rows (at most `limit`) is held out."""
    if fraction <= 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n = min(limit, max(1, round(fraction * len(rows))))
    if n >= len(rows):
        raise DataError(f"{path}: holding out {n} of {len(rows)} rows leaves none to train on (lower eval_fraction)")
    held = set(order[:n])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


@dataclass
class Batch:
    ids: torch.Tensor          # (B, L) right-padded with the pad id
    lengths: torch.Tensor      # (B,) real tokens per row
    targets: torch.Tensor | None   # (B, L) next-token targets, IGNORE on padding and context
    labels: torch.Tensor | None    # (B,) class indices

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Right padding: causal attention never lets a real token see the padding after it, so the plain causal
    forward (positions 0..L-1) is exact for every row."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
    lengths = torch.tensor([len(e.ids) for e in examples])
    if examples[0].label is not None:
        return Batch(ids, lengths, None, torch.tensor([e.label for e in examples]))
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        targets[i, :len(e.targets)] = torch.tensor(e.targets)
    return Batch(ids, lengths, targets, None)
