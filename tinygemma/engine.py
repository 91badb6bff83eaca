"""Continuous batching: many requests, one model thread. No HTTP in here.

Requests arrive through `Engine.submit` (any thread) and wait in a bounded queue; the engine thread owns
the model and runs steps. Each step:
1. decodes one token for every generating request, all in ONE forward pass (batch = those requests;
   attention runs row by row against each request's own cache, see cache.RowCaches);
2. then spends a token budget on prompt chunks of requests still prefilling (chunks start at multiples of
   `prefill_chunk`, so how a prompt is cut never depends on the other requests).
A request therefore gets the same tokens alone or among many: on the fast path the kernels compute each
batch row independently of the others (quant.py), so greedy outputs are bit-for-bit identical.

Conversation reuse: a finished request leaves its cache in a memory-bounded LRU store (cache.IdleCaches).
A new prompt that continues an earlier request's tokens takes that cache and prefills only its new tokens.
A prompt that shares only part of them (an edited or re-tokenized turn) gets a copy cut back to the shared
prefix when the sliding-window rings still hold what the next position needs; otherwise the prompt is
recomputed and `reuse_fallbacks` counts it.
"""

from __future__ import annotations

import copy
import enum
import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .cache import IdleCaches, RowCaches, can_truncate, make_cache, truncate
from .errors import ContextLengthError, TinyGemmaError
from .generate import StopMatcher
from .sampling import SamplingParams, make_generator, sample, top_candidates
from .structured import ConstraintError
from .tokenizer import StreamDecoder

log = logging.getLogger(__name__)

MIN_SHARED_PREFIX = 16       # a partial match shorter than this is not worth copying a cache for
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)   # seconds
RATE_WINDOW = 10.0           # seconds over which tokens_per_second is measured


class QueueFullError(TinyGemmaError):
    """The engine's waiting queue is full: try again later."""


@dataclass(frozen=True)
class EngineConfig:
    """How the engine schedules work (sampling is per request, in GenerationRequest)."""

    max_batch: int = 32                  # requests generating at once (one decode row each)
    max_queue: int = 64                  # requests waiting for a slot; submit() refuses more
    prefill_chunk: int = 256             # prompt tokens per prefill forward pass
    prefill_budget: int = 512            # prompt tokens per step, after the decode rows
    context: int | None = None           # tokens per request (prompt + output); None: the model's limit
    idle_cache_bytes: int = 1 << 30      # memory for caches kept for follow-up turns (0 = no reuse)

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "prefill_chunk", "prefill_budget"):
            if getattr(self, name) < 1:
                raise ValueError(f"engine: {name} must be >= 1, got {getattr(self, name)}")
        if self.context is not None and self.context < 2:
            raise ValueError(f"engine: context must be >= 2, got {self.context}")


@dataclass
class GenerationRequest:
    """One completion: prompt token ids and how to sample."""

    prompt_ids: list[int]
    params: SamplingParams = SamplingParams()
    max_tokens: int = 256                # clamped to what the context leaves
    stop: tuple[str, ...] = ()           # stop strings (not included in the output)
    stop_ids: tuple[int, ...] = ()       # extra stop tokens (the tokenizer's always stop)
    grammar: str | None = None           # an llguidance grammar (structured.grammar_for): constrained output


@dataclass
class Event:
    """A piece of output; the last one of a request has finish_reason set."""

    text: str
    finish_reason: str | None = None     # "stop", "length", "cancelled" or "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0               # prompt tokens whose keys/values came from an earlier request
    error: str | None = None
    error_type: str | None = None        # with "error": "invalid_request" (the request's own fault) or "server"


class RequestHandle:
    """A submitted request: iterate it for its events (unless an on_event callback takes them), cancel()."""

    def __init__(self, request_id: int, on_event: Callable[[Event], None] | None, wake: Callable[[], None]):
        self.id = request_id
        self.cancelled = False
        self._events: queue.Queue | None = queue.Queue() if on_event is None else None
        self._on_event = on_event if on_event is not None else self._events.put
        self._wake = wake

    def _send(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:        # a consumer that has gone away: stop generating for it
            log.warning("request %d: event callback failed; cancelling", self.id, exc_info=True)
            self.cancelled = True

    def cancel(self) -> None:
        """Stop the request; its slot is freed at the start of the engine's next step."""
        self.cancelled = True
        self._wake()

    def __iter__(self) -> Iterator[Event]:
        if self._events is None:
            raise RuntimeError("this request's events go to its on_event callback")
        while True:
            event = self._events.get()
            yield event
            if event.finish_reason is not None:
                return

    def result(self) -> tuple[str, Event]:
        """Wait for the end: (the whole text, the final event)."""
        parts = []
        for event in self:
            parts.append(event.text)
        return "".join(parts), event


class State(enum.Enum):
    WAITING = "waiting"      # in the queue, no slot yet
    PREFILL = "prefill"      # has a slot; prompt chunks still to run
    DECODE = "decode"        # generating: one token per step
    DONE = "done"


@dataclass
class _Sequence:
    """A request's state inside the engine (touched by the engine thread only, once submitted)."""

    request: GenerationRequest
    handle: RequestHandle
    max_tokens: int
    stop_ids: frozenset[int]
    constraint: object | None
    decoder: StreamDecoder
    matcher: StopMatcher
    generator: torch.Generator | None
    t_submit: float
    state: State = State.WAITING
    tokens: list[int] = field(default_factory=list)    # prompt, then generated tokens
    cache: list | None = None
    computed: int = 0               # tokens whose keys/values are in the cache
    generated: int = 0
    cached_tokens: int = 0
    t_first: float | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)    # per bucket, not cumulative; last = +Inf
    total: float = 0.0
    count: int = 0

    def __post_init__(self):
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        i = next((k for k, b in enumerate(self.buckets) if value <= b), len(self.buckets))
        self.counts[i] += 1
        self.total += value
        self.count += 1


@dataclass
class EngineMetrics:
    """Counters since start (written by the engine thread, read by anyone)."""

    finished: Counter = field(default_factory=Counter)     # finish_reason -> requests
    rejected: int = 0                  # refused by submit() because the queue was full
    prompt_tokens: int = 0             # prompt tokens of admitted requests
    prefill_tokens: int = 0            # prompt tokens actually computed
    reused_tokens: int = 0             # prompt tokens served from an earlier request's cache
    generated_tokens: int = 0
    reuse_hits: int = 0                # prompt continued an earlier request: its cache was taken
    reuse_partial: int = 0             # prompt shared a prefix: a copy of the cache, cut back, was used
    reuse_fallbacks: int = 0           # prompt shared a prefix the sliding window no longer held: recomputed
    reuse_misses: int = 0              # no earlier request shared a useful prefix
    steps: int = 0
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))


class Engine:
    """Continuous-batching generation over one model. Use as a context manager (or start() / close())."""

    def __init__(self, model, tokenizer, config: EngineConfig = EngineConfig()):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        limit = model.config.max_position_embeddings
        self.context = min(config.context or limit, limit)
        self.metrics = EngineMetrics()
        self._inbox: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._queued = 0                 # submitted, not yet given a slot
        self._next_id = 0
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._idle = IdleCaches(config.idle_cache_bytes)
        self._recent: deque[tuple[float, int]] = deque()     # (time, tokens) of recent steps
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: str | None = None  # why the engine thread died, if it did

    @classmethod
    def from_lm(cls, lm, config: EngineConfig = EngineConfig()) -> "Engine":
        return cls(lm.model, lm.tokenizer, config)

    # ------------------------------------------------------------------------------------------ public

    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tinygemma-engine", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the engine thread; requests still queued or running end with finish_reason "cancelled"."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def stop(self) -> None:
        """Ask the engine thread to stop without waiting (safe in a signal handler): queued and running
        requests end with finish_reason "cancelled"; new ones are refused. close() waits for it."""
        self._stop.set()
        self._wake()

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, request: GenerationRequest, on_event: Callable[[Event], None] | None = None
               ) -> RequestHandle:
        """Queue a request. Raises ContextLengthError (prompt too long), QueueFullError, ValueError.

        on_event: called from the engine thread with each Event (it must not block); without it, iterate
        the returned handle.
        """
        from .structured import Constraint

        if self.failure is not None:
            raise RuntimeError(self.failure)
        if self._thread is None or self._stop.is_set():
            raise RuntimeError("the engine is not running (use it as a context manager or call start())")
        ids = [int(i) for i in request.prompt_ids]
        if not ids:
            raise ValueError("prompt is empty: at least one token (e.g. BOS) is needed")
        vocab = self.model.config.vocab_size
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
        if len(ids) >= self.context:
            raise ContextLengthError(f"prompt has {len(ids)} tokens; the context limit is {self.context} "
                                     "(prompt plus at least one new token)")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        constraint = Constraint(request.grammar, self.tokenizer) if request.grammar is not None else None
        with self._lock:
            if self._queued >= self.config.max_queue:
                self.metrics.rejected += 1
                raise QueueFullError(f"server busy: {self._queued} requests already waiting "
                                     f"(limit {self.config.max_queue}); retry later")
            self._queued += 1
            self._next_id += 1
            request_id = self._next_id
        params = request.params
        seq = _Sequence(
            request=request, handle=RequestHandle(request_id, on_event, self._wake),
            max_tokens=min(request.max_tokens, self.context - len(ids)),
            stop_ids=frozenset(self.tokenizer.stop_ids) | frozenset(request.stop_ids),
            constraint=constraint, decoder=StreamDecoder(self.tokenizer), matcher=StopMatcher(request.stop),
            generator=None if params.greedy else make_generator(params.seed), t_submit=time.perf_counter(),
            tokens=ids)
        self._inbox.put(seq)
        return seq.handle

    def stats(self) -> dict:
        """Gauges for monitoring: queue depth, active requests, idle caches, recent tokens per second."""
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= RATE_WINDOW]
        return {"queue_depth": self._queued, "active_requests": len(self._active),
                "idle_caches": len(self._idle), "idle_cache_bytes": self._idle.nbytes,
                "idle_cache_evictions": self._idle.evictions,
                "tokens_per_second": sum(n for _, n in recent) / RATE_WINDOW}

    # ------------------------------------------------------------------------------------ engine thread

    def _wake(self) -> None:
        self._inbox.put(None)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._receive(block=not self._active and not self._waiting)
                self._drop_cancelled()
                self._admit()
                if not self._active:
                    continue
                try:
                    self._step()
                except Exception as e:     # a failed forward pass: end what was running, keep serving
                    log.exception("engine step failed")
                    for seq in list(self._active):
                        self._fail(seq, f"internal error: {type(e).__name__}: {e}")
        except BaseException as e:         # the loop itself broke: say so to everyone, refuse new requests
            log.exception("engine thread died")
            self.failure = f"engine thread died: {type(e).__name__}: {e}"
            self._stop.set()
            for seq in [*self._waiting, *self._active]:
                seq.handle._send(Event("", "error", seq.prompt_len, seq.generated, error=self.failure))
            self._waiting.clear()
            self._active.clear()
            return
        self._receive(block=False)
        for seq in [*self._waiting, *self._active]:
            seq.handle.cancelled = True
        self._drop_cancelled()

    @property
    def alive(self) -> bool:
        """True while the engine thread runs (False before start(), after close() or if it died)."""
        return self._thread is not None and self._thread.is_alive() and self.failure is None

    def _receive(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self._waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._waiting if s.handle.cancelled]:
            self._waiting.remove(seq)
            with self._lock:
                self._queued -= 1
            seq.handle._send(Event("", "cancelled", seq.prompt_len))
        for seq in [s for s in self._active if s.handle.cancelled]:
            self._finish(seq, "cancelled")

    def _admit(self) -> None:
        """Give waiting requests free slots, each with a reused or a fresh cache."""
        while self._waiting and len(self._active) < self.config.max_batch:
            seq = self._waiting.popleft()
            with self._lock:
                self._queued -= 1
            self._active.append(seq)
            try:
                seq.cache, seq.computed = self._reuse(seq.tokens)
                if seq.cache is None:
                    seq.cache = make_cache(self.model.config, dtype=self.model.dtype,
                                           capacity=min(self.context, seq.prompt_len + seq.max_tokens))
            except Exception as e:      # e.g. no memory for this one's cache: the others go on
                self._fail(seq, f"could not allocate the cache: {type(e).__name__}: {e}")
                continue
            seq.cached_tokens = seq.computed
            seq.state = State.PREFILL
            self.metrics.prompt_tokens += seq.prompt_len
            self.metrics.reused_tokens += seq.computed

    def _reuse(self, prompt: list[int]) -> tuple[list | None, int]:
        """(a cache holding a prefix of `prompt`, that prefix's length), or (None, 0)."""
        m = self.metrics
        key, shared = self._idle.best_match(prompt)
        if key is None:
            m.reuse_misses += 1
            return None, 0
        tokens, cache = self._idle.get(key)
        keep = min(shared, len(prompt) - 1)     # the last prompt token is always run: its logits are needed
        if shared == len(tokens):               # the prompt continues that request: take its cache
            cache = self._idle.take(key)
            if keep < shared:
                truncate(cache, keep)
            m.reuse_hits += 1
            return cache, keep
        if keep < MIN_SHARED_PREFIX:
            m.reuse_misses += 1
            return None, 0
        if not can_truncate(cache, keep):
            m.reuse_fallbacks += 1
            return None, 0
        cache = copy.deepcopy(cache)            # the original stays for its own conversation's next turn
        truncate(cache, keep)
        m.reuse_partial += 1
        return cache, keep

    @torch.inference_mode()
    def _step(self) -> None:
        """One decode row per generating request (one forward pass), then prompt chunks within the budget.

        What concerns one request alone (its constraint, its sampling, its prefill) fails for that request
        alone: it ends with an error event and the others go on. Only a failure of the shared decode pass
        ends every row in it."""
        self.metrics.steps += 1
        produced = 0
        decoding = [s for s in self._active if s.state is State.DECODE]
        if decoding:
            ids = torch.tensor([[s.tokens[-1]] for s in decoding])                # (B, 1)
            positions = torch.tensor([[s.computed] for s in decoding])            # (B, 1)
            logits = self.model(ids, positions, RowCaches([s.cache for s in decoding]))[:, -1]   # (B, V)
            for seq in decoding:
                seq.computed += 1
            ok = [self._guard(seq, self._constrain, seq, row) for seq, row in zip(decoding, logits)]
            tops = top_candidates(logits, [s.request.params for s in decoding])
            for seq, row, top, good in zip(decoding, logits, tops, ok):
                if good:
                    self._guard(seq, self._next_token, seq, row, top)
            produced += len(decoding)
        budget = self.config.prefill_budget
        for seq in [s for s in self._active if s.state is State.PREFILL]:
            before = self.metrics.prefill_tokens
            self._guard(seq, self._prefill, seq, budget)
            budget -= self.metrics.prefill_tokens - before       # what ran, even if it then failed
            produced += seq.state is not State.PREFILL
            if budget <= 0:
                break
        self._recent.append((time.perf_counter(), produced))
        while self._recent and time.perf_counter() - self._recent[0][0] > RATE_WINDOW:
            self._recent.popleft()

    def _prefill(self, seq: _Sequence, budget: int) -> None:
        """Run seq's next prompt chunks within `budget` tokens (counted in metrics.prefill_tokens); after the
        last one, its first token."""
        chunk = self.config.prefill_chunk
        while seq.state is State.PREFILL and budget > 0:
            # Chunks end at multiples of `chunk`: the cut never depends on other requests.
            end = min(seq.prompt_len, (seq.computed // chunk + 1) * chunk)
            part = torch.tensor([seq.tokens[seq.computed:end]])
            logits = self.model(part, cache=seq.cache, last_only=True)[0, -1]
            budget -= end - seq.computed
            self.metrics.prefill_tokens += end - seq.computed
            seq.computed = end
            if end == seq.prompt_len:
                seq.state = State.DECODE
                self._constrain(seq, logits)
                self._next_token(seq, logits)

    def _guard(self, seq: _Sequence, fn, *args) -> bool:
        """fn(*args); if it raises, seq alone ends with an error event. True when it did not raise."""
        try:
            fn(*args)
            return True
        except Exception as e:
            log.warning("request %d failed: %s: %s", seq.handle.id, type(e).__name__, e)
            if isinstance(e, ConstraintError):    # the request's own grammar gave up (a limit): its fault
                self._fail(seq, str(e), "invalid_request")
            else:
                self._fail(seq, str(e) if isinstance(e, TinyGemmaError) else f"{type(e).__name__}: {e}")
            return False

    def _fail(self, seq: _Sequence, error: str, error_type: str = "server") -> None:
        if seq.state is not State.DONE:
            self._finish(seq, "error", error=error, error_type=error_type)

    @staticmethod
    def _constrain(seq: _Sequence, logits: torch.Tensor) -> None:
        """Tokens seq's grammar does not allow next -> -inf in its logits (V,), in place."""
        if seq.constraint is not None:
            seq.constraint.mask(logits)

    def _next_token(self, seq: _Sequence, logits: torch.Tensor, top: tuple | None = None) -> None:
        """Sample seq's next token from its logits (V,), already constrained (`top`: its precomputed top-k
        candidates), stream its text, and finish it when it is done."""
        params = seq.request.params
        history = torch.tensor(seq.tokens) if params.has_penalties else None
        token = sample(logits, params, history, seq.generator, top)
        if seq.t_first is None:
            seq.t_first = time.perf_counter()
            self.metrics.ttft.observe(seq.t_first - seq.t_submit)
        if token in seq.stop_ids:
            self._finish(seq, "stop")
            return
        if seq.constraint is not None:
            seq.constraint.advance(token)      # ConstraintError: _guard ends the request
        seq.tokens.append(token)
        seq.generated += 1
        self.metrics.generated_tokens += 1
        text, hit = seq.matcher.feed(seq.decoder.push(token))
        if hit:
            self._finish(seq, "stop", text, flush=False)
        elif seq.generated >= seq.max_tokens:
            self._finish(seq, "length", text)
        elif text:
            seq.handle._send(Event(text))

    def _finish(self, seq: _Sequence, reason: str, text: str = "", flush: bool = True,
                error: str | None = None, error_type: str = "server") -> None:
        if flush and reason != "error":
            tail, hit = seq.matcher.feed(seq.decoder.flush())
            text += tail if hit else tail + seq.matcher.flush()
            reason = "stop" if hit else reason
        seq.state = State.DONE
        self._active.remove(seq)
        self.metrics.finished[reason] += 1
        if reason != "error" and seq.computed:
            self._idle.put(seq.tokens[:seq.computed], seq.cache)
        seq.cache = None
        seq.handle._send(Event(text, reason, seq.prompt_len, seq.generated, seq.cached_tokens, error,
                               error_type if reason == "error" else None))


def generate_all(lm, requests: list[GenerationRequest], batch: int = 32, progress=None) -> list[str]:
    """The output text of every request, `batch` at a time through one engine (no cache reuse): offline
    evaluation of many prompts. On the fast path a greedy row's output does not depend on the batch.
    progress(done, total) is called as outputs arrive, in order; a failed request raises TinyGemmaError."""
    return [text for text, _ in generate_finished(lm, requests, batch, progress)]


def generate_finished(lm, requests: list[GenerationRequest], batch: int = 32,
                      progress=None) -> list[tuple[str, str]]:
    """generate_all's outputs with each one's finish reason: "stop" (the model ended it, or a stop string)
    or "length" (the token limit)."""
    config = EngineConfig(max_batch=batch, max_queue=len(requests) + 1, idle_cache_bytes=0)
    outputs = []
    with Engine.from_lm(lm, config) as engine:
        handles = [engine.submit(r) for r in requests]
        for i, handle in enumerate(handles, 1):
            text, event = handle.result()
            if event.finish_reason == "error":
                raise TinyGemmaError(f"generation failed for request {i} of {len(requests)}: {event.error}")
            outputs.append((text, event.finish_reason))
            if progress:
                progress(i, len(requests))
    return outputs
