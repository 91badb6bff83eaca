"""Generation for one conversation, in layers: generate_step (token ids) -> stream_generate (text) -> generate."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from .cache import make_cache
from .errors import ContextLengthError
from .model import Gemma3Model
from .sampling import SamplingParams, make_generator, sample

PREFILL_CHUNK = 512      # prompt tokens per forward pass during prefill


@torch.inference_mode()
def prefill(model: Gemma3Model, ids: list[int], cache: list, chunk: int = PREFILL_CHUNK) -> torch.Tensor:
    """Run prompt ids through the model in chunks, filling `cache`; returns the last position's logits (V,)."""
    if not ids:
        raise ValueError("prompt is empty: at least one token (e.g. BOS) is needed")
    logits = None
    for start in range(0, len(ids), chunk):
        part = torch.tensor([ids[start:start + chunk]])
        logits = model(part, cache=cache, last_only=True)
    return logits[0, -1]


@torch.inference_mode()
def generate_step(model: Gemma3Model, prompt_ids: list[int], params: SamplingParams = SamplingParams(),
                  max_tokens: int | None = None, prefill_chunk: int = PREFILL_CHUNK) -> Iterator[int]:
    """Yield generated token ids one by one (no stopping rule other than max_tokens and the context)."""
    ctx = model.config.max_position_embeddings
    if len(prompt_ids) >= ctx:
        raise ContextLengthError(
            f"prompt has {len(prompt_ids)} tokens; the context limit is {ctx} (prompt plus at least one new token)")
    budget = ctx - len(prompt_ids)
    max_tokens = budget if max_tokens is None else min(max_tokens, budget)
    cache = make_cache(model.config, dtype=model.dtype, capacity=min(ctx, len(prompt_ids) + max_tokens))
    generator = make_generator(params.seed) if not params.greedy else None
    history = torch.tensor(prompt_ids) if params.has_penalties else None
    logits = prefill(model, prompt_ids, cache, prefill_chunk)
    for i in range(max_tokens):
        token = sample(logits, params, history, generator)
        yield token
        if i + 1 == max_tokens:
            break     # no forward pass for a token nobody will sample
        if history is not None:
            history = torch.cat([history, torch.tensor([token])])
        logits = model(torch.tensor([[token]]), cache=cache)[0, -1]


@dataclass
class GenerationChunk:
    """One streamed piece: its text, the token that produced it, and, on the last piece, why it stopped."""

    text: str
    token: int | None
    finish_reason: str | None = None     # "stop" (stop token or string), "length" (max_tokens/context)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prompt_tps: float = 0.0              # prefill tokens per second
    generation_tps: float = 0.0          # decode tokens per second (after the first token)


class StopMatcher:
    """Holds back text that could still become a stop string; reports where a stop string starts."""

    def __init__(self, stops: Iterable[str]):
        self.stops = [s for s in stops if s]
        self.text = ""
        self.emitted = 0

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit now, whether a stop string was hit)."""
        self.text += piece
        if not self.stops:
            out, self.emitted = self.text[self.emitted:], len(self.text)
            return out, False
        longest = max(len(s) for s in self.stops)
        search_from = max(0, self.emitted - longest + 1)
        hits = [i for i in (self.text.find(s, search_from) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            out = self.text[self.emitted:end] if end > self.emitted else ""
            self.emitted = max(self.emitted, end)
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        safe = max(self.emitted, len(self.text) - hold)
        out, self.emitted = self.text[self.emitted:safe], safe
        return out, False

    def flush(self) -> str:
        out, self.emitted = self.text[self.emitted:], len(self.text)
        return out


def stream_generate(model: Gemma3Model, tokenizer, prompt_ids: list[int], params: SamplingParams = SamplingParams(),
                    max_tokens: int = 256, stop: Iterable[str] = (), stop_ids: Iterable[int] | None = None,
                    prefill_chunk: int = PREFILL_CHUNK) -> Iterator[GenerationChunk]:
    """Stream text pieces. Stops on a stop token (tokenizer.stop_ids plus `stop_ids`), a stop string
    (not included in the output), max_tokens, or the context limit. The last chunk has finish_reason set."""
    from .tokenizer import StreamDecoder

    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    stops_ids = set(tokenizer.stop_ids) | set(stop_ids or ())
    decoder = StreamDecoder(tokenizer)
    matcher = StopMatcher(stop)
    t0 = time.perf_counter()
    t_first = None
    n = 0
    finish = "length"
    token = None

    def chunk(text, reason=None):
        now = time.perf_counter()
        first = t_first or now
        return GenerationChunk(text, token, reason, len(prompt_ids), n,
                               len(prompt_ids) / max(first - t0, 1e-9),
                               (n - 1) / (now - first) if n > 1 and now > first else 0.0)

    for token in generate_step(model, prompt_ids, params, max_tokens, prefill_chunk):
        if t_first is None:
            t_first = time.perf_counter()
        if token in stops_ids:
            finish = "stop"
            break
        n += 1
        text, hit = matcher.feed(decoder.push(token))
        if hit:
            finish = "stop"
            yield chunk(text, finish)
            return
        if text:
            yield chunk(text)
    tail, hit = matcher.feed(decoder.flush())
    text = tail if hit else tail + matcher.flush()
    yield chunk(text, "stop" if hit else finish)
