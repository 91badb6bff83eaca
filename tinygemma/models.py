"""The models tinygemma ships, by name: "base" (Gemma 3 270M pretrained, the embedded Q4_K_M GGUF) and "chat"
(the same weights with tinygemma's instruction-tuning LoRA adapter merged; docs/chat_model.md).

Everywhere a model path is accepted, these names work too. A file or folder of the same name in the working
directory wins over the name, as a path always does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

BASE = "base"
CHAT = "chat"
NAMES = (BASE, CHAT)
CHAT_ADAPTER = Path(__file__).parent / "chat"          # adapter.safetensors + adapter_config.json (package data)
CHAT_MODEL_ID = "tinygemma-270m-it"                    # its id in /v1/models and exported files ("-it": tuned)


@dataclass
class Resolved:
    source: Path                                       # GGUF file or Hugging Face directory
    adapters: list = field(default_factory=list)      # train.lora.Adapter objects merged in this order
    name: str | None = None                            # BASE, CHAT, or None for a path
    instruction_tuned: bool | None = None              # known from the name (None: guess from the file)


def is_name(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path) in NAMES and not Path(path).exists()


def resolve(path: str | os.PathLike | None, adapter: str | os.PathLike | None = None,
            default: str = BASE) -> Resolved:
    """The weights file and the adapters to merge for a model argument (None: `default`), with the user's
    `adapter` (a directory or .safetensors file from `tinygemma finetune`) merged last."""
    from .train.lora import read_adapter
    from .weights.default import default_model_path

    if path is None:
        path = default
    if is_name(path):
        name = str(path)
        out = Resolved(default_model_path(), name=name, instruction_tuned=name == CHAT)
        if name == CHAT:
            out.adapters.append(read_adapter(CHAT_ADAPTER))
    else:
        out = Resolved(Path(path))
    if adapter is not None:
        out.adapters.append(read_adapter(adapter))
    return out


def model_id(resolved: Resolved) -> str:
    """A short id for /v1/models and exported files."""
    if resolved.name == CHAT:
        return CHAT_MODEL_ID
    stem = resolved.source.stem if resolved.source.suffix else resolved.source.name
    return stem + "".join(f"+{a.path.parent.name}" for a in resolved.adapters)
