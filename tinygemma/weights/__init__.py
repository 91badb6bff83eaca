"""Weight loading: GGUF files and Hugging Face safetensors directories, both strict."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import Gemma3Config
from ..errors import WeightsError
from .check import regular_file


@dataclass
class LoadedWeights:
    """What a weight source provides: architecture, float32 tensors (our names), tokenizer, facts for `info`."""

    config: Gemma3Config
    tensors: dict[str, torch.Tensor]
    tokenizer: Any
    source: Path
    format: str                                            # "gguf" or "safetensors"
    tensor_types: dict[str, int] = field(default_factory=dict)   # storage type name -> tensor count
    file_size: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


def load_weights(path: str | os.PathLike, tensors: bool = True) -> LoadedWeights:
    """Load a .gguf file or a Hugging Face model directory.

    tensors=False checks names and shapes but reads no tensor data (`tensors` is then empty).
    """
    from ..tokenizer import Tokenizer

    path = Path(path)
    if path.is_dir():
        from .safetensors import config_from_dir, load_safetensors_dir, safetensors_files

        config = config_from_dir(path)
        tok_file = next((path / n for n in ("tokenizer.json", "tokenizer.model") if (path / n).exists()), None)
        if tok_file is None:
            raise WeightsError(f"{path}: no tokenizer.json or tokenizer.model")
        tokenizer = _tokenizer(Tokenizer.from_file, regular_file(tok_file, "tokenizer file"))
        loaded, types = load_safetensors_dir(path, config, read=tensors)
        size = sum(f.stat().st_size for f in safetensors_files(path))
        return LoadedWeights(config, loaded, tokenizer, path, "safetensors", types, size)
    if not path.exists():
        raise WeightsError(f"{path}: no such file or directory")
    from .gguf import GGUFFile, config_from_gguf, load_gguf_tensors

    gf = GGUFFile(path)
    config = config_from_gguf(gf)
    # Names and shapes before the tokenizer: every token then has its embedding row in the file, so the
    # vocabulary the tokenizer builds is bounded by the file's size.
    load_gguf_tensors(gf, config, read=False)
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        n = gf.array_length(key)
        if n is not None and n != config.vocab_size:
            raise WeightsError(f"{path}: tokenizer: {key} has {n} entries for {config.vocab_size} tokens")
    tokenizer = _tokenizer(Tokenizer.from_gguf_metadata, gf.metadata, source=path)
    if tokenizer.vocab_size != config.vocab_size:
        raise WeightsError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, "
                           f"the embedding has {config.vocab_size} rows")
    loaded = load_gguf_tensors(gf, config, check=False) if tensors else {}
    types = {}
    for info in gf.tensors.values():
        types[info.type.name] = types.get(info.type.name, 0) + 1
    return LoadedWeights(config, loaded, tokenizer, path, "gguf", types, gf.file_size, gf.facts())


def _tokenizer(build, arg, source=None):
    try:
        return build(arg)
    except (ValueError, KeyError, TypeError, OSError) as e:
        if isinstance(e, WeightsError):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{source or arg}: tokenizer: {msg}") from None
