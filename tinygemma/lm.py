"""The model handle: `load()` returns an `LM` bundling model, tokenizer and generation."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

import torch

from .config import Gemma3Config
from .errors import ContextLengthError, TinyGemmaError
from .generate import GenerationChunk, stream_generate
from .model import Gemma3Model, empty_model
from .sampling import SamplingParams

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FAST = "fast"          # the fast CPU path: int8 layers and output projection (see fast.py)
DEFAULT_DTYPE = FAST   # what dtype=None means


def load(path: str | os.PathLike | None = None, dtype: str | None = None,
         adapter: str | os.PathLike | None = None, default: str = "base") -> "LM":
    """Load a model: a GGUF file, a Hugging Face directory, or a name tinygemma ships (models.py): "base"
    (the embedded Gemma 3 270M, what None means) or "chat" (tinygemma's instruction-tuned 270M).

    dtype: None (recommended: the fast path, also named "fast"), "float32" (the exact path) or "bfloat16".
    adapter: a LoRA adapter directory (or its .safetensors file) from `tinygemma finetune`, merged into the
    float32 weights before any conversion (after the chat model's own); `LM.adapter` then holds it (labels,
    classification head). default: the name that path=None means.
    """
    from .models import resolve
    from .weights import load_weights

    name = DEFAULT_DTYPE if dtype is None else str(dtype).removeprefix("torch.")
    if name != FAST and name not in DTYPES:
        raise ValueError(f"dtype must be one of {FAST}, {', '.join(DTYPES)} (float16 overflows in Gemma 3), "
                         f"got {dtype!r}")
    if name == "bfloat16":
        from .kernels import native_bf16
        if not native_bf16():
            _warn_once("this CPU has no native bfloat16 (AVX512_BF16, AMX or ARM BF16): dtype=bfloat16 is "
                       "emulated, many times slower than float32 or the fast path")
    resolved = resolve(path, adapter, default)
    if name == FAST:
        lm = _load_fast(resolved.source, resolved.adapters)
    else:
        weights = load_weights(resolved.source)
        lm = LM.from_tensors(weights.config, _merged(weights, resolved.adapters), weights.tokenizer, DTYPES[name],
                             weights)
    lm.resolved = resolved
    lm.adapter = resolved.adapters[-1] if adapter is not None else None
    return lm


@functools.cache
def _warn_once(message: str) -> None:
    print(f"tinygemma: {message}", file=sys.stderr)


def _merged(weights, adapters: list) -> dict[str, torch.Tensor]:
    """The weights' tensors with the adapters' LoRA updates merged in order (float32), or as they are."""
    from .train.lora import merge_adapters

    return merge_adapters(weights.tensors, adapters)


def _load_fast(source: Path, adapters: list) -> "LM":
    """The fast model, from the converted-weights cache when it is there (a memory map: no conversion)."""
    from . import fast
    from .kernels import q8
    from .weights import load_weights
    from .weights.default import cache_dir

    kernels = q8()
    key = fast.cache_key(source, kernels is not None, tuple(f for a in adapters for f in a.files))
    cache_file = cache_dir() / "fast" / f"{key}.weights"
    buffers = None
    if cache_file.is_file():
        weights = load_weights(source, tensors=False)     # config, tokenizer and the strict shape check
        try:
            buffers = fast.map_buffers(cache_file)
            model = fast.assemble(weights.config, buffers, kernels)
        except (OSError, ValueError, KeyError, RuntimeError):
            buffers = None                                # damaged cache: rebuild it below
    if buffers is None:
        weights = load_weights(source)
        # One-time work of ~15 s for the default model: say so rather than look hung.
        print(f"tinygemma: converting {source.name} for the fast path (once; cached in {cache_file.parent})",
              file=sys.stderr, flush=True)
        buffers = fast.convert(weights.config, _merged(weights, adapters), native=kernels is not None)
        weights.tensors = {}
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            fast.save_buffers(cache_file, buffers)
        except OSError as e:
            log.warning("could not write the converted-weights cache %s: %s", cache_file, e)
        model = fast.assemble(weights.config, buffers, kernels)
    return LM(model, weights.tokenizer, weights)


class LM:
    """A loaded model: `tokenizer`, `config`, `model` (a Gemma3Model), and generation methods."""

    def __init__(self, model: Gemma3Model, tokenizer, weights=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config: Gemma3Config = model.config
        self.weights = weights     # LoadedWeights facts (source, format, tensor types), or None
        self.adapter = None        # the user's merged LoRA adapter (train.lora.Adapter), or None
        self.resolved = None       # models.Resolved: source, merged adapters, shipped name

    @classmethod
    def from_tensors(cls, config: Gemma3Config, tensors: dict[str, torch.Tensor], tokenizer,
                     dtype: torch.dtype = torch.float32, weights=None) -> "LM":
        """Build from float32 tensors under our names (already checked against `config`).

        With dtype=bfloat16 the layers' matrices are bfloat16; norm gains and the (tied) embedding /
        output projection stay float32: a bfloat16 output projection alone flips ~2% of greedy picks.
        """
        model = empty_model(config)
        keep_fp32 = {"embed_tokens.weight", "lm_head.weight"}
        state = {k: v.to(torch.float32 if k in keep_fp32 or v.ndim == 1 else dtype) for k, v in tensors.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return cls(model, tokenizer, weights)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def is_instruction_tuned(self) -> bool:
        """Known for the shipped models ("chat" is, "base" is not); else a guess from the file's metadata or
        directory name ('-it', 'instruct', a finetune tag)."""
        if self.resolved is not None and self.resolved.instruction_tuned is not None:
            return self.resolved.instruction_tuned
        w = self.weights
        if w is None:
            return False
        text = " ".join(str(w.metadata.get(k, "")) for k in ("general.name", "general.finetune", "general.basename"))
        text = f"{text} {w.source.name}".lower()
        return any(tag in text for tag in ("-it", " it", "instruct", "_it"))

    def _check_ids(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        return ids

    @torch.inference_mode()
    def logits(self, ids) -> torch.Tensor:
        """float32 logits (len(ids), vocab_size): one full forward pass, no cache."""
        ids = self._check_ids(ids)
        if not ids:
            raise ValueError("logits() needs at least one token id")
        if len(ids) > self.config.max_position_embeddings:
            raise ContextLengthError(f"{len(ids)} tokens exceed the context limit of "
                                     f"{self.config.max_position_embeddings}")
        return self.model(torch.tensor([ids]))[0]

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_bos=True)
        return self._check_ids(prompt)

    def stream_generate(self, prompt: str | list[int], max_tokens: int = 256, temperature: float = 0.0,
                        top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                        repetition_penalty: float = 1.0, presence_penalty: float = 0.0,
                        frequency_penalty: float = 0.0, seed: int | None = None,
                        stop: list[str] | str | None = None, stop_ids: list[int] | None = None,
                        ) -> Iterator[GenerationChunk]:
        """Stream GenerationChunk objects (text, token, finish_reason, speeds) for a prompt (text or ids).

        A text prompt is tokenized with BOS and special tokens parsed. Greedy unless temperature > 0.
        """
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                                frequency_penalty=frequency_penalty, seed=seed)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return stream_generate(self.model, self.tokenizer, self._prompt_ids(prompt), params,
                               max_tokens=max_tokens, stop=stops, stop_ids=stop_ids)

    def stream(self, prompt: str | list[int], **kwargs) -> Iterator[str]:
        """Yield text pieces as they are decoded (same arguments as stream_generate)."""
        for chunk in self.stream_generate(prompt, **kwargs):
            if chunk.text:
                yield chunk.text

    def generate(self, prompt: str | list[int], **kwargs) -> str:
        """The whole completion as one string (same arguments as stream_generate)."""
        return "".join(self.stream(prompt, **kwargs))

    def chat_stream(self, messages: list[dict], **kwargs) -> Iterator[GenerationChunk]:
        """Stream a reply to chat messages (Gemma 3 chat template; stops at <end_of_turn>)."""
        return self.stream_generate(self.tokenizer.encode_chat(messages), **kwargs)

    def chat(self, messages: list[dict], **kwargs) -> str:
        return "".join(c.text for c in self.chat_stream(messages, **kwargs))


__all__ = ["LM", "load", "TinyGemmaError"]
