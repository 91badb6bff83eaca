"""KV caches: a growing full cache for global layers, a ring buffer of the window size for sliding layers.

Both follow one protocol: ``update(k, v, pos) -> (keys, values, key_pos)``, where k and v are the new
entries (B, H_kv, L, D) and pos their absolute positions (B, L). The returned ``key_pos`` (B, S) gives the
position of every returned key; slots that hold nothing carry position -1 and are masked out. Attention
masks are derived from positions alone, so left padding in a batch is expressed by giving pad tokens
position -1.

Worked example, window W = 4, one sequence: after a 6-token prefill the ring holds positions
[4, 5, 2, 3] in slots 0..3 (slot = index % W). Decoding the token at position 6 first writes it to slot 2
(evicting position 2, which position 6 no longer sees: it sees 3, 4, 5, 6), then attends over the ring.
A multi-token chunk instead attends over the old ring plus the new entries, then writes the new entries,
because its first tokens still need keys its last tokens would evict.

For a batch of separate sequences (the engine's decode step), ``RowCaches`` holds one cache list per batch
row; the model then runs attention row by row, each row against its own cache, with no padding.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .config import SLIDING, Gemma3Config


class _Buffers:
    """K, V and position buffers (B, H, capacity, D) that grow by doubling up to `limit` entries."""

    def __init__(self, batch: int, n_heads: int, head_dim: int, dtype: torch.dtype, capacity: int, limit: int):
        self.limit = limit
        capacity = min(capacity, limit)
        self.k = torch.zeros(batch, n_heads, capacity, head_dim, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((batch, capacity), -1, dtype=torch.long)
        self.offset = 0   # entries written

    def _reserve(self, n: int):
        cap = self.k.shape[2]
        if n <= cap:
            return
        grow = min(max(n, 2 * cap), self.limit) - cap
        b, h, _, d = self.k.shape
        self.k = torch.cat([self.k, self.k.new_zeros(b, h, grow, d)], dim=2)
        self.v = torch.cat([self.v, self.v.new_zeros(b, h, grow, d)], dim=2)
        self.pos = torch.cat([self.pos, self.pos.new_full((b, grow), -1)], dim=1)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.pos.nbytes

    def truncate(self, n: int) -> None:
        """Forget every entry from position n on (the next write is position n)."""
        if not self.can_truncate(n):
            raise ValueError(f"cache cannot be cut back to {n} entries")
        self.pos.masked_fill_(self.pos >= n, -1)
        self.offset = n


class KVCache(_Buffers):
    """Full cache for global-attention layers; grows by doubling up to the context length."""

    def __init__(self, batch: int, n_heads: int, head_dim: int, dtype: torch.dtype, capacity: int = 256,
                 limit: int = 1 << 62):
        super().__init__(batch, n_heads, head_dim, dtype, capacity, limit)

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        n = k.shape[2]
        end = self.offset + n
        self._reserve(end)
        self.k[:, :, self.offset:end] = k
        self.v[:, :, self.offset:end] = v
        self.pos[:, self.offset:end] = pos
        self.offset = end
        return self.k[:, :, :end], self.v[:, :, :end], self.pos[:, :end]

    def can_truncate(self, n: int) -> bool:
        return 0 <= n <= self.offset

    def claim_one(self) -> tuple[int, int]:
        """Room for one more entry, written by the caller (the native decode kernel): (its slot, the number
        of slots to attend over once it is written)."""
        slot = self.offset
        self._reserve(slot + 1)
        self.offset += 1
        return slot, self.offset


class RingKVCache(_Buffers):
    """Ring buffer of `window` entries for sliding-window layers (slot = entry index % window).

    It starts small and grows to the window as entries arrive; before its first wrap the slots fill in order.
    """

    def __init__(self, batch: int, n_heads: int, head_dim: int, dtype: torch.dtype, window: int,
                 capacity: int = 256):
        super().__init__(batch, n_heads, head_dim, dtype, capacity, limit=window)
        self.window = window

    @property
    def filled(self) -> int:
        """Slots in use; until the ring first wraps they are the first ones, in order."""
        return min(self.offset, self.window)

    def can_truncate(self, n: int) -> bool:
        """Whether the ring still holds what position n attends to: positions n - window + 1 .. n - 1.

        It holds positions offset - window .. offset - 1, so cutting back works before the first wrap,
        or by at most one entry after it.
        """
        return 0 <= n <= self.offset and (self.offset <= self.window or n >= self.offset - 1)

    def claim_one(self) -> tuple[int, int]:
        """As KVCache.claim_one: the slot one window back is overwritten, as in a decode update."""
        self._reserve(min(self.offset + 1, self.window))
        slot = self.offset % self.window
        self.offset += 1
        return slot, self.filled

    def _write(self, k, v, pos):
        n = k.shape[2]
        self._reserve(min(self.offset + n, self.window))
        if n == 1:      # decode: one slot, no index tensor
            slot = self.offset % self.window
            self.k[:, :, slot] = k[:, :, 0]
            self.v[:, :, slot] = v[:, :, 0]
            self.pos[:, slot] = pos[:, 0]
            self.offset += 1
            return
        keep = min(n, self.window)
        start = self.offset + n - keep
        slots = torch.arange(start, start + keep) % self.window
        self.k.index_copy_(2, slots, k[:, :, n - keep:])
        self.v.index_copy_(2, slots, v[:, :, n - keep:])
        self.pos.index_copy_(1, slots, pos[:, n - keep:])
        self.offset += n

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        if k.shape[2] == 1:
            # The evicted entry is exactly one window old: the new query no longer sees it.
            self._write(k, v, pos)
            n = self.filled      # attend over the filled slots only
            return self.k[:, :, :n], self.v[:, :, :n], self.pos[:, :n]
        filled = self.filled
        keys = torch.cat([self.k[:, :, :filled], k], dim=2)
        values = torch.cat([self.v[:, :, :filled], v], dim=2)
        key_pos = torch.cat([self.pos[:, :filled], pos], dim=1)
        self._write(k, v, pos)
        return keys, values, key_pos


def make_cache(config: Gemma3Config, batch: int = 1, dtype: torch.dtype = torch.float32,
               capacity: int = 256) -> list:
    """One cache per layer: RingKVCache for sliding layers, KVCache for full-attention layers."""
    shape = (batch, config.num_key_value_heads, config.head_dim, dtype)
    return [RingKVCache(*shape, window=config.sliding_window, capacity=capacity) if t == SLIDING
            else KVCache(*shape, capacity=capacity, limit=config.max_position_embeddings)
            for t in config.layer_types]


class RowCaches:
    """One cache list (as make_cache builds it) per batch row, for a batch of separate sequences.

    model(ids (B, 1), positions (B, 1), RowCaches([c0, c1, ...])) runs the projections and MLPs batched
    and attention row by row against each row's own cache: no padding, no copying, and each row's
    attention is exactly what it would be alone.
    """

    def __init__(self, rows: list[list]):
        self.rows = rows

    def __getitem__(self, layer: int) -> "LayerRows":
        return LayerRows(row[layer] for row in self.rows)


class LayerRows(list):
    """One layer's caches, one per batch row (what RowCaches gives each layer)."""


def cache_nbytes(cache: list) -> int:
    return sum(layer.nbytes for layer in cache)


def can_truncate(cache: list, n: int) -> bool:
    return all(layer.can_truncate(n) for layer in cache)


def truncate(cache: list, n: int) -> None:
    """Cut every layer back to its first n positions (see can_truncate)."""
    for layer in cache:
        layer.truncate(n)


class IdleCaches:
    """Caches of finished requests, kept for follow-up turns: a least-recently-used store bounded in bytes.

    Each entry is (tokens whose keys and values the cache holds, the cache). take() removes and returns
    the entry that a prompt continues best; the caller then owns it.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[int, tuple[tuple[int, ...], list, int]] = OrderedDict()
        self.nbytes = 0
        self.evictions = 0
        self._next_key = 0

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, tokens: list[int], cache: list) -> None:
        size = cache_nbytes(cache)
        if not tokens or size > self.max_bytes:
            return
        self.entries[self._next_key] = (tuple(tokens), cache, size)
        self._next_key += 1
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, (_, _, dropped) = self.entries.popitem(last=False)
            self.nbytes -= dropped
            self.evictions += 1

    def best_match(self, prompt: list[int]) -> tuple[int | None, int]:
        """(key of the entry sharing the longest prefix with `prompt`, that prefix's length)."""
        best_key, best_len = None, 0
        for key, (tokens, _, _) in self.entries.items():
            n = _common_prefix(tokens, prompt)
            if n > best_len:
                best_key, best_len = key, n
        return best_key, best_len

    def get(self, key: int) -> tuple[tuple[int, ...], list]:
        """(tokens, cache) of an entry, left in place (and marked as recently used)."""
        self.entries.move_to_end(key)
        tokens, cache, _ = self.entries[key]
        return tokens, cache

    def take(self, key: int) -> list:
        _, cache, size = self.entries.pop(key)
        self.nbytes -= size
        return cache


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
