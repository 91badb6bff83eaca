"""Pure functions on logits: penalties, temperature, top-k, top-p, min-p, and seeded sampling.

Order (as Hugging Face's logits processors): penalties -> temperature -> top-k -> top-p -> min-p -> draw.
Temperature 0 means greedy (argmax after penalties).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

# The smallest normal float32: a positive temperature or repetition penalty below it would round to 0 in the
# float32 arithmetic below (x / 0 -> inf, 0 / 0 and -inf * 0 -> NaN), so it is used in their place.
TINY = torch.finfo(torch.float32).tiny
HUGE = torch.finfo(torch.float32).max


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token. Defaults are greedy decoding."""

    temperature: float = 0.0          # 0 = greedy; otherwise logits / temperature
    top_k: int = 0                    # keep the k most likely tokens (0 = off)
    top_p: float = 1.0                # keep the smallest set with cumulative probability >= top_p
    min_p: float = 0.0                # drop tokens below min_p * p(most likely)
    repetition_penalty: float = 1.0   # divide positive / multiply negative logits of seen tokens (CTRL)
    presence_penalty: float = 0.0     # subtract once from every seen token (OpenAI)
    frequency_penalty: float = 0.0    # subtract per occurrence (OpenAI)
    penalty_last_n: int = 0           # penalties look at the last n tokens (0 = all: prompt and output)
    seed: int | None = None           # seeds the sampler's own generator for reproducible draws

    def __post_init__(self):
        checks = [
            ("temperature", self.temperature, 0.0 <= self.temperature <= 100.0, "between 0 and 100"),
            ("top_k", self.top_k, isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0"),
            ("top_p", self.top_p, 0.0 < self.top_p <= 1.0, "in (0, 1]"),
            ("min_p", self.min_p, 0.0 <= self.min_p < 1.0, "in [0, 1)"),
            ("repetition_penalty", self.repetition_penalty, 0.0 < self.repetition_penalty <= 10.0,
             "in (0, 10]"),
            ("presence_penalty", self.presence_penalty, -2.0 <= self.presence_penalty <= 2.0, "in [-2, 2]"),
            ("frequency_penalty", self.frequency_penalty, -2.0 <= self.frequency_penalty <= 2.0,
             "in [-2, 2]"),
            ("penalty_last_n", self.penalty_last_n,
             isinstance(self.penalty_last_n, int) and self.penalty_last_n >= 0, "an integer >= 0"),
        ]
        for name, value, ok, rule in checks:
            if isinstance(value, float) and not math.isfinite(value) or not ok:
                raise ValueError(f"sampling: {name} must be {rule}, got {value!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)


def apply_penalties(logits: torch.Tensor, history: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Penalise tokens in `history` (1-D ids). logits: (V,) float32; returns a new tensor."""
    if not p.has_penalties or history.numel() == 0:
        return logits
    if p.penalty_last_n:
        history = history[-p.penalty_last_n:]
    counts = torch.bincount(history, minlength=logits.shape[-1]).to(logits.dtype)
    seen = counts > 0
    out = logits.clone()
    if p.repetition_penalty != 1.0:
        rp = max(p.repetition_penalty, TINY)
        # A tiny penalty must not turn a logit into inf (or -inf * 0 into NaN): the result stays finite.
        penalised = torch.where(out > 0, (out / rp).clamp(max=HUGE), out * rp)
        out = torch.where(seen, penalised, out)
    out -= p.presence_penalty * seen.to(out.dtype) + p.frequency_penalty * counts
    return out


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p on (V,) logits; removed tokens become -inf."""
    # Shift so the maximum is 0 first: a tiny (valid) temperature then sends the others to -inf, never inf/NaN.
    # A temperature that float32 cannot hold (1e-300 rounds to 0: 0 / 0 = NaN) acts as the smallest it can.
    logits = (logits - logits.max()) / max(p.temperature, TINY)
    if p.top_k and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already reach top_p (the top token always stays).
        drop = (probs.cumsum(-1) - probs) >= p.top_p
        drop[..., 0] = False     # even when top_p is below what float32 can hold (1e-300 -> 0)
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    if p.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    return logits


def make_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else torch.seed())
    return gen


def top_candidates(logits: torch.Tensor, params: list[SamplingParams]) -> list[tuple | None]:
    """For rows of (B, V) logits that will draw among their top k (no penalties), their (values, ids),
    computed in one batched top-k per distinct k: the same per row as `torch.topk` on that row alone."""
    out: list[tuple | None] = [None] * len(params)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(params):
        if not p.greedy and not p.has_penalties and 0 < p.top_k < logits.shape[-1]:
            groups.setdefault(p.top_k, []).append(i)
    for k, rows in groups.items():
        values, ids = torch.topk(logits[rows], k)
        for j, i in enumerate(rows):
            out[i] = (values[j], ids[j])
    return out


def sample(logits: torch.Tensor, p: SamplingParams, history: torch.Tensor | None = None,
           generator: torch.Generator | None = None, top: tuple | None = None) -> int:
    """Pick the next token id from (V,) float32 logits. top: this row's (values, ids) from
    `top_candidates` when it was computed with a batch."""
    if history is not None:
        logits = apply_penalties(logits, history, p)
    if p.greedy:
        return int(logits.argmax())
    if p.top_k and p.top_k < logits.shape[-1]:
        # Only the k best can survive: filter and draw among them (a vocabulary-wide sort costs ~10 ms).
        values, ids = top if top is not None else torch.topk(logits, p.top_k)
        probs = filter_logits(values, replace(p, top_k=0)).softmax(-1)
        return int(ids[torch.multinomial(probs, 1, generator=generator)])
    probs = filter_logits(logits, p).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))
