"""Perplexity of a text, by llama.cpp's `llama-perplexity` method so the figures compare directly.

The text is tokenized once (BOS first) and cut into chunks of `ctx` tokens; each chunk's first token is
replaced by BOS and the chunk runs as one sequence; only the second half is scored: logits at positions
ctx/2 .. ctx-2 predict the tokens after them (255 predictions per 512-token chunk).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch


@dataclass
class PerplexityResult:
    ppl: float
    nll: float                      # mean negative log-likelihood (nats per token)
    chunks: int
    tokens_scored: int
    seconds: float
    chunk_ppl: list[float] = field(default_factory=list)


@torch.inference_mode()
def perplexity(lm, text: str, ctx: int = 512, max_chunks: int | None = None, progress=None) -> PerplexityResult:
    """Perplexity of `text` under `lm` (an LM), in chunks of `ctx` tokens."""
    if ctx < 4 or ctx > lm.config.max_position_embeddings:
        raise ValueError(f"ctx must be between 4 and {lm.config.max_position_embeddings}, got {ctx}")
    ids = lm.tokenizer.encode(text, add_bos=True)
    n_chunks = len(ids) // ctx
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks == 0:
        raise ValueError(f"text has {len(ids)} tokens, fewer than one chunk of {ctx}")
    first = ctx // 2
    total, count, per_chunk = 0.0, 0, []
    t0 = time.perf_counter()
    for c in range(n_chunks):
        chunk = ids[c * ctx:(c + 1) * ctx]
        chunk[0] = lm.tokenizer.bos_id
        logits = lm.model(torch.tensor([chunk]), logit_slice=slice(first, ctx - 1))[0]   # (ctx-1-first, V)
        targets = torch.tensor(chunk[first + 1:])
        nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
        total += nll
        count += len(targets)
        per_chunk.append(math.exp(nll / len(targets)))
        if progress:
            progress(c + 1, n_chunks, math.exp(total / count))
    return PerplexityResult(math.exp(total / count), total / count, n_chunks, count,
                            time.perf_counter() - t0, per_chunk)
