"""LoRA: low-rank updates W + (alpha / r) * B @ A wrapped around the model's nn.Linear projections, merging,
and the adapter file (safetensors tensors + a small JSON config) that `tinygemma.load(adapter=...)` reads.

Adapter layout: ADAPTER_FILE holds `<module>.lora_A` (r, in) and `<module>.lora_B` (out, r) for every wrapped
projection, plus `score.weight` (num_labels, hidden) for a classification head; CONFIG_FILE holds the
AdapterConfig. A path may name the directory or the .safetensors file in it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import TinyGemmaError

ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
# Every projection of a block; the default targets all of them, as QLoRA found best for small ranks.
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HEAD = "score.weight"


class AdapterError(TinyGemmaError, ValueError):
    """An adapter directory or file is missing, malformed, or does not fit the model."""


@dataclass
class AdapterConfig:
    rank: int = 16                        # r: the rank of B @ A
    alpha: float = 32.0                   # updates are scaled by alpha / rank
    targets: tuple[str, ...] = ALL_TARGETS  # projection names (last part of the module name) that get LoRA
    task: str = "causal_lm"               # "causal_lm" or "classification" (then `labels` and a score head)
    labels: list[str] = field(default_factory=list)
    base_model: str = ""                  # the weights it was trained on (informational)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * B(A(dropout(x))); `base` frozen, B starts at zero so training starts at the base."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))     # as nn.Linear's own init (and peft's)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight: callers use its dtype to cast their inputs."""
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The scaling goes on the small (r, out) factor, not on the (tokens, out) update.
        update = (self.dropout(x) @ self.lora_A.T.to(x.dtype)) @ (self.lora_B.T * self.scaling).to(x.dtype)
        return self.base(x) + update

    def delta(self) -> torch.Tensor:
        """The merged update (out, in) in float32."""
        return self.scaling * (self.lora_B.float() @ self.lora_A.float())


def add_lora(model: nn.Module, config: AdapterConfig, dropout: float = 0.0, layers: range | None = None,
             base_dtype: torch.dtype | None = None) -> list[str]:
    """Wrap the target projections of `model` in LoRALinear (in place); returns the wrapped module names.

    layers: only these blocks (default all). base_dtype: store the frozen base weights in this dtype (bfloat16
    under bfloat16 autocast: the matmuls see the same values, without a cast of every weight in every step).
    """
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in config.targets
             and (layers is None or int(name.split(".")[1]) in layers)]
    if not names:
        raise AdapterError(f"no projection matches the LoRA targets {', '.join(config.targets)}")
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, attr)
        base.weight.requires_grad_(False)
        if base_dtype is not None:
            base.weight.data = base.weight.data.to(base_dtype)
        setattr(parent, attr, LoRALinear(base, config.rank, config.alpha, dropout))
    return names


def lora_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA factors of a wrapped model, keyed `<module>.lora_A` / `<module>.lora_B` (float32)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            out[f"{name}.lora_A"] = m.lora_A.detach().float().contiguous()
            out[f"{name}.lora_B"] = m.lora_B.detach().float().contiguous()
    return out


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under the plain model's names, with every LoRA update merged (float32)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            out[f"{name}.weight"] = m.base.weight.detach().float() + m.delta()
    for name, t in model.state_dict().items():
        if ".lora_" not in name and ".base." not in name:
            out[name] = t.detach().float()
    return out


def merge_adapter(tensors: dict[str, torch.Tensor], adapter: "Adapter") -> dict[str, torch.Tensor]:
    """Base tensors (our names, float) with the adapter's LoRA updates merged into a float32 copy of each target."""
    config, factors, source = adapter.config, adapter.factors, adapter.path
    out = dict(tensors)
    modules = sorted({k.rsplit(".", 1)[0] for k in factors if k.endswith((".lora_A", ".lora_B"))})
    for module in modules:
        key = f"{module}.weight"
        a, b = factors.get(f"{module}.lora_A"), factors.get(f"{module}.lora_B")
        if a is None or b is None:
            raise AdapterError(f"{source}: {module} has only one of lora_A / lora_B")
        if key not in tensors:
            raise AdapterError(f"{source}: {module} is not a projection of this model")
        w = tensors[key]
        if a.shape != (config.rank, w.shape[1]) or b.shape != (w.shape[0], config.rank):
            raise AdapterError(f"{source}: {module} factors {tuple(b.shape)} x {tuple(a.shape)} do not fit "
                               f"the weight {tuple(w.shape)} at rank {config.rank}")
        out[key] = w.float() + config.scaling * (b.float() @ a.float())
    return out


def merge_adapters(tensors: dict[str, torch.Tensor], adapters: list["Adapter"]) -> dict[str, torch.Tensor]:
    """merge_adapter for each adapter in order (the chat model's own first, then the user's)."""
    for adapter in adapters:
        tensors = merge_adapter(tensors, adapter)
    return tensors


@dataclass
class Adapter:
    """A loaded adapter: its config, LoRA factors, and the classification head (or None)."""

    config: AdapterConfig
    factors: dict[str, torch.Tensor]
    head: torch.Tensor | None
    path: Path

    @property
    def files(self) -> tuple[Path, Path]:
        """The tensors file and the config file (both decide what a merge gives)."""
        return self.path, self.path.parent / CONFIG_FILE


def adapter_file(path: str | os.PathLike) -> Path:
    """The adapter's .safetensors file, given it or its directory."""
    path = Path(path)
    return path / ADAPTER_FILE if path.is_dir() else path


def save_adapter(path: str | os.PathLike, config: AdapterConfig, factors: dict[str, torch.Tensor],
                 head: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write an adapter directory (ADAPTER_FILE + CONFIG_FILE), factors stored as `dtype` (merging reads them
    as float32 whatever they are stored as); returns the directory.

    Both files are written in a temporary directory and renamed into place once complete, so a crash or a full
    disk leaves the previous adapter (FileWriteError, one line)."""
    from ..export.safetensors import atomic_dir, save_safetensors

    out = Path(path)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in factors.items()}
    if head is not None:
        tensors[HEAD] = head.detach().float().contiguous()
    with atomic_dir(out) as tmp:
        save_safetensors(tensors, tmp / ADAPTER_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
    return out


def read_adapter(path: str | os.PathLike) -> Adapter:
    """Read an adapter directory (or its .safetensors file); one-line AdapterError when it is unusable."""
    file = adapter_file(path)
    config_path = file.parent / CONFIG_FILE
    for p in (file, config_path):
        if not p.is_file():
            raise AdapterError(f"{p}: no such adapter file")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:          # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AdapterError(f"{config_path}: not a valid adapter config ({str(e).splitlines()[0]})") from None
    config = _adapter_config(config_path, raw)
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{file}: not a readable safetensors file ({e})") from None
    head = tensors.pop(HEAD, None)
    if config.task == "classification" and (head is None or head.shape[0] != len(config.labels)):
        raise AdapterError(f"{file}: a classification adapter needs {HEAD} with one row per label "
                           f"({len(config.labels)})")
    return Adapter(config, tensors, head, file)


def _adapter_config(path: Path, raw) -> AdapterConfig:
    """An AdapterConfig from the JSON object, every field checked: one-line AdapterError naming the field."""
    if not isinstance(raw, dict):
        raise AdapterError(f"{path}: the adapter config must be a JSON object")
    unknown = sorted(set(raw) - set(AdapterConfig.__dataclass_fields__))
    if unknown:
        raise AdapterError(f"{path}: unknown key {unknown[0]!r}")
    config = AdapterConfig(**raw)

    def strings(value) -> bool:
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)

    checks = (("rank", isinstance(config.rank, int) and not isinstance(config.rank, bool) and config.rank >= 1,
               "an integer of at least 1"),
              ("alpha", isinstance(config.alpha, (int, float)) and not isinstance(config.alpha, bool)
               and math.isfinite(config.alpha), "a number"),
              ("targets", strings(config.targets), "a list of projection names"),
              ("task", config.task in ("causal_lm", "classification"), "'causal_lm' or 'classification'"),
              ("labels", strings(config.labels), "a list of strings"),
              ("base_model", isinstance(config.base_model, str), "a string"))
    for name, ok, want in checks:
        if not ok:
            raise AdapterError(f"{path}: {name} must be {want}, got {getattr(config, name)!r}")
    config.targets = tuple(config.targets)
    return config
