"""Tokenizing long texts in a separate process, so that it never holds the server's GIL.

The tokenizer is pure Python: a 262,000-character prompt takes ~1-2 s, and in a thread of the server process
it would hold the GIL that the engine thread needs between its native calls (every stream stalls). Texts up
to INLINE_CHARS are tokenized in the caller's process (a few milliseconds); longer ones go to a worker
process, started with `spawn` (no fork of a threaded process) and run at a lower priority than the server,
so the engine keeps its CPU share. A worker that dies is replaced; its request fails alone.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import threading
from concurrent.futures.process import BrokenProcessPool

INLINE_CHARS = 4096          # texts (or conversations) at most this long are tokenized in the caller's process
WORKER_NICE = 10             # the worker's priority below the server's (Unix nice increment)

_tokenizer = None            # in the worker process


def _init(blob: bytes) -> None:
    global _tokenizer
    _tokenizer = pickle.loads(blob)
    if hasattr(os, "nice"):
        try:
            os.nice(WORKER_NICE)
        except OSError:
            pass


def _call(method: str, args: tuple, kwargs: dict):
    return getattr(_tokenizer, method)(*args, **kwargs)


class TokenizerPool:
    """`encode(...)` / `encode_chat(...)` of a Tokenizer, long inputs in a worker process (see the module).

    Methods block: call them from a worker thread (anyio.to_thread) in async code."""

    def __init__(self, tokenizer, workers: int = 1, inline_chars: int = INLINE_CHARS):
        self.tokenizer = tokenizer
        self.workers = workers
        self.inline_chars = inline_chars
        self._blob: bytes | None = None
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the worker now (pickling the tokenizer, ~0.1 s) rather than on the first long text."""
        self._get_pool()

    def encode(self, text: str, **kwargs) -> list[int]:
        return self._run(len(text), "encode", (text,), kwargs)

    def encode_chat(self, messages: list[dict], **kwargs) -> list[int]:
        chars = sum(len(m.get("content") or "") for m in messages if isinstance(m, dict))
        return self._run(chars, "encode_chat", (messages,), kwargs)

    def _run(self, chars: int, method: str, args: tuple, kwargs: dict):
        if chars <= self.inline_chars:
            return getattr(self.tokenizer, method)(*args, **kwargs)
        pool = self._get_pool()
        try:
            return pool.submit(_call, method, args, kwargs).result()
        except BrokenProcessPool:
            with self._lock:       # the worker died (e.g. out of memory): the next request gets a new one
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError("the tokenizer worker process died") from None

    def _get_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                if self._blob is None:
                    self._blob = pickle.dumps(self.tokenizer, protocol=pickle.HIGHEST_PROTOCOL)
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
                    initargs=(self._blob,))
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
