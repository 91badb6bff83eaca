"""tinygemma tokenize TEXT: token ids (and pieces) of a text."""

from __future__ import annotations

import json
import sys


def build_parser(p):
    p.add_argument("text", help="text to tokenize ('-' reads standard input)")
    p.add_argument("--model", metavar="PATH", help="GGUF file, Hugging Face directory, 'base' or 'chat' (default: the embedded model)")
    p.add_argument("--json", action="store_true", help="print JSON: ids, pieces, count")
    p.add_argument("--no-bos", action="store_true", help="do not prepend <bos>")
    p.add_argument("--no-special", action="store_true", help="treat special-token text as plain text")
    return p


def load_tokenizer(path):
    """The tokenizer alone, without reading any weights."""
    from pathlib import Path

    from ..errors import WeightsError
    from ..tokenizer import Tokenizer
    from ..weights.default import default_model_path

    from ..models import is_name

    path = default_model_path() if not path or is_name(path) else Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).is_file():
                return Tokenizer.from_file(path / name)
        raise WeightsError(f"{path}: no tokenizer.json or tokenizer.model")
    from ..weights.gguf import read_metadata

    return Tokenizer.from_gguf_metadata(read_metadata(path))


def main(args) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    tok = load_tokenizer(args.model)
    ids = tok.encode(text, add_bos=not args.no_bos, parse_special=not args.no_special)
    if args.json:
        print(json.dumps({"ids": ids, "pieces": [tok.id_to_piece(i) for i in ids], "count": len(ids)},
                         ensure_ascii=False))
    else:
        print(" ".join(map(str, ids)))
    return 0
