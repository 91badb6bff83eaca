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
"""

from __future__ import annotations

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
