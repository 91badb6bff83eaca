"""Reading .jsonl files (one JSON object a line) with errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path, error: type[Exception] = ValueError) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; `error` (a one-line message) for a line that is not a
    JSON object."""
    rows = []
    with open(path, encoding="utf-8-sig") as f:      # -sig: a byte-order mark (as some editors write) is skipped
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise error(f"{path}:{n}: a row must be a JSON object")
            rows.append((n, row))
    return rows
