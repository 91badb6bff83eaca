"""The continuous-batching engine on tiny random models: batch equals single, reuse equals recompute,
scheduling limits, cancellation, stop rules."""

import threading
import time

import pytest
import torch

from tinygemma import fast
from tinygemma.cache import IdleCaches, can_truncate, make_cache, truncate
from tinygemma.engine import Engine, EngineConfig, GenerationRequest, QueueFullError
from tinygemma.errors import ContextLengthError
from tinygemma.generate import generate_step
from tinygemma.lm import LM
from tinygemma.sampling import SamplingParams

from tinymodels import random_tensors, tiny_config, tiny_tokenizer

GREEDY = SamplingParams()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def fast_model():
    cfg = tiny_config(tie_word_embeddings=False)       # untied: varied greedy output from a random model
    return fast.build_fast_model(cfg, random_tensors(cfg, 0))


@pytest.fixture(scope="module")
def exact_model(tok):
    cfg = tiny_config(tie_word_embeddings=False, sliding_window=64)
    return LM.from_tensors(cfg, random_tensors(cfg, 1), tok).model


def prompts(n: int, vocab: int, seed: int = 0, lengths=range(1, 60)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = list(lengths)
    return [[2] + torch.randint(10, vocab, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(n)]


def run(model, tok, requests, **config):
    """Submit all requests at once; returns [(text, final event)] in order, and the engine's metrics."""
    with Engine(model, tok, EngineConfig(**config)) as engine:
        handles = [engine.submit(r) for r in requests]
        return [h.result() for h in handles], engine.metrics


def signature(results):
    return [(text, e.finish_reason, e.completion_tokens) for text, e in results]


def test_batch_equals_single_on_the_fast_path(fast_model, tok):
    """25 requests of different lengths, greedy and seeded sampling, run together give exactly what each
    gives alone (the fast path's kernels compute each row independently of the batch)."""
    ps = prompts(25, fast_model.config.vocab_size, lengths=range(1, 75, 3))
    requests = [GenerationRequest(p, GREEDY if i % 3 else SamplingParams(temperature=1.0, top_k=20, seed=i),
                                  max_tokens=12 + i % 7) for i, p in enumerate(ps)]
    config = dict(prefill_chunk=16, prefill_budget=32, idle_cache_bytes=0)
    alone = [signature(run(fast_model, tok, [r], **config)[0])[0] for r in requests]
    together, metrics = run(fast_model, tok, requests, **config)
    assert signature(together) == alone
    tokens = sum(e.completion_tokens for _, e in together)
    assert metrics.steps < tokens / 5          # really batched: many decode rows per step


def test_engine_equals_generate_step(exact_model, tok):
    """Alone in the engine, a request computes what the one-conversation loop computes (same chunking)."""
    for prompt in prompts(3, exact_model.config.vocab_size, seed=3, lengths=[5, 70, 130]):
        want = list(generate_step(exact_model, prompt, GREEDY, max_tokens=20, prefill_chunk=32))
        [(text, event)], _ = run(exact_model, tok, [GenerationRequest(prompt, GREEDY, max_tokens=20)],
                                 prefill_chunk=32)
        assert event.finish_reason == "length" and event.completion_tokens == 20
        assert text == tok.decode(want, skip_special=True)


@pytest.mark.parametrize("window, keep", [(8, 20), (8, 21), (64, 5), (64, 20)])
def test_truncated_cache_continues_like_a_fresh_one(window, keep):
    """Cut a cache back (as reuse does) and continue: the logits equal a full pass, also past the window."""
    cfg = tiny_config(sliding_window=window)
    model = LM.from_tensors(cfg, random_tensors(cfg, 2), tiny_tokenizer()).model
    ids = prompts(1, cfg.vocab_size, seed=4, lengths=[29])[0]           # 30 tokens
    cache = make_cache(cfg)
    with torch.inference_mode():
        model(torch.tensor([ids[:21]]), cache=cache)                    # 21 entries
        assert can_truncate(cache, keep)
        truncate(cache, keep)
        got = model(torch.tensor([ids[keep:]]), cache=cache)[0]
        want = model(torch.tensor([ids]))[0, keep:]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_ring_refuses_cuts_it_cannot_serve():
    cfg = tiny_config(sliding_window=8)
    cache = make_cache(cfg)
    model = LM.from_tensors(cfg, random_tensors(cfg, 2), tiny_tokenizer()).model
    with torch.inference_mode():
        model(torch.tensor([list(range(10, 30))]), cache=cache)          # 20 entries, ring wrapped
    assert can_truncate(cache, 20) and can_truncate(cache, 19)          # keep all, or drop one
    assert not can_truncate(cache, 18) and not can_truncate(cache, 21)
    with pytest.raises(ValueError):
        truncate(cache, 10)


def test_follow_up_turn_reuses_the_cache(exact_model, tok):
    """The next turn continues the first request's tokens: only its new tokens are prefilled, and the
    answer equals a fresh engine's, which recomputes everything."""
    vocab = exact_model.config.vocab_size
    first = prompts(1, vocab, seed=5, lengths=[40])[0]
    reply = list(generate_step(exact_model, first, GREEDY, max_tokens=10))
    follow = first + reply + prompts(1, vocab, seed=6, lengths=[12])[0][1:]
    with Engine(exact_model, tok, EngineConfig(prefill_chunk=16)) as engine:
        engine.submit(GenerationRequest(first, GREEDY, max_tokens=10)).result()
        text, event = engine.submit(GenerationRequest(follow, GREEDY, max_tokens=10)).result()
        m = engine.metrics
        # The first request's last token was sampled but never run through the model.
        assert m.reuse_hits == 1 and event.cached_tokens == len(first) + len(reply) - 1
        assert m.prefill_tokens == len(first) + len(follow) - event.cached_tokens
        assert m.reused_tokens == event.cached_tokens
    [(fresh, _)], fresh_metrics = run(exact_model, tok, [GenerationRequest(follow, GREEDY, max_tokens=10)],
                                      prefill_chunk=16)
    assert fresh_metrics.reuse_hits == 0 and text == fresh


def test_partial_prefix_reuse_copies_and_falls_back_past_the_window(tok):
    """An edited last turn shares a prefix: within the window a copy is cut back and reused; once the
    ring has wrapped past the shared part it cannot be, and the prompt is recomputed (and counted)."""
    for window, expect in ((64, "reuse_partial"), (8, "reuse_fallbacks")):
        cfg = tiny_config(sliding_window=window)
        model = LM.from_tensors(cfg, random_tensors(cfg, 3), tok).model
        base = prompts(1, cfg.vocab_size, seed=7, lengths=[30])[0]
        edited = base[:25] + [50, 51, 52]
        with Engine(model, tok, EngineConfig()) as engine:
            engine.submit(GenerationRequest(base, GREEDY, max_tokens=4)).result()
            _, event = engine.submit(GenerationRequest(edited, GREEDY, max_tokens=4)).result()
            m = engine.metrics
            assert getattr(m, expect) == 1
            assert event.cached_tokens == (25 if expect == "reuse_partial" else 0)
            assert m.prefill_tokens == len(base) + len(edited) - event.cached_tokens
            # A copy was used: the original stays for its own conversation.
            assert engine.stats()["idle_caches"] == 2


def test_idle_caches_are_bounded_lru():
    cfg = tiny_config()
    one = make_cache(cfg, capacity=16)
    size = sum(layer.nbytes for layer in one)
    store = IdleCaches(max_bytes=2 * size)
    for i in range(3):
        store.put([2, 10 + i], make_cache(cfg, capacity=16))
    assert len(store) == 2 and store.evictions == 1 and store.nbytes == 2 * size
    key, shared = store.best_match([2, 12, 7])
    assert shared == 2 and store.get(key)[0] == (2, 12)
    assert store.best_match([2, 10])[1] == 1                  # (2, 10) was evicted first


def test_stop_strings_tokens_and_lengths(exact_model, tok):
    prompt = prompts(1, exact_model.config.vocab_size, seed=8, lengths=[10])[0]
    [(full, e)], _ = run(exact_model, tok, [GenerationRequest(prompt, GREEDY, max_tokens=30)])
    assert e.finish_reason == "length" and e.completion_tokens == 30 and e.prompt_tokens == len(prompt)
    stop = full[5:7]
    [(cut, e)], _ = run(exact_model, tok, [GenerationRequest(prompt, GREEDY, max_tokens=30, stop=(stop,))])
    assert e.finish_reason == "stop" and cut == full[:full.index(stop)]
    first = list(generate_step(exact_model, prompt, GREEDY, max_tokens=30))
    [(_, e)], _ = run(exact_model, tok, [GenerationRequest(prompt, GREEDY, max_tokens=30, stop_ids=(first[3],))])
    assert e.finish_reason == "stop" and e.completion_tokens == first.index(first[3])
    # The context bounds the output; a prompt that fills it is refused.
    [(_, e)], _ = run(exact_model, tok, [GenerationRequest(prompt, GREEDY, max_tokens=500)], context=20)
    assert e.finish_reason == "length" and e.completion_tokens == 20 - len(prompt)
    with Engine(exact_model, tok, EngineConfig(context=20)) as engine:
        with pytest.raises(ContextLengthError, match="context limit is 20"):
            engine.submit(GenerationRequest(list(range(10, 30))))
        with pytest.raises(ValueError, match="outside the vocabulary"):
            engine.submit(GenerationRequest([2, 10**6]))
        with pytest.raises(ValueError, match="empty"):
            engine.submit(GenerationRequest([]))


def test_cancel_frees_the_slot_and_full_queue_is_refused(exact_model, tok):
    long = GenerationRequest(prompts(1, exact_model.config.vocab_size, seed=9, lengths=[5])[0], GREEDY,
                             max_tokens=200)
    with Engine(exact_model, tok, EngineConfig(max_batch=1, max_queue=1, context=256)) as engine:
        running = engine.submit(long)
        next(iter(running))                                  # it is generating
        waiting = engine.submit(long)
        with pytest.raises(QueueFullError, match="retry later"):
            engine.submit(long)
        assert engine.metrics.rejected == 1
        running.cancel()
        events = list(running)
        assert events[-1].finish_reason == "cancelled"
        # The freed slot goes to the waiting request at once.
        first = next(iter(waiting))
        assert first.finish_reason is None and engine.stats()["active_requests"] == 1
        waiting.cancel()
        assert list(waiting)[-1].finish_reason == "cancelled"
        deadline = time.time() + 5
        while engine.stats()["active_requests"] and time.time() < deadline:
            time.sleep(0.01)
        assert engine.stats()["active_requests"] == 0
        assert engine.metrics.finished["cancelled"] == 2


def test_callbacks_and_close_end_every_request(exact_model, tok):
    events = []
    done = threading.Event()

    def on_event(e):
        events.append(e)
        if e.finish_reason:
            done.set()

    engine = Engine(exact_model, tok, EngineConfig(max_batch=1)).start()
    engine.submit(GenerationRequest([2, 11, 12], GREEDY, max_tokens=3), on_event=on_event)
    assert done.wait(10) and events[-1].finish_reason == "length"
    queued = [engine.submit(GenerationRequest([2, 11], GREEDY, max_tokens=5000)) for _ in range(3)]
    engine.close()
    assert all(list(h)[-1].finish_reason == "cancelled" for h in queued)
    with pytest.raises(RuntimeError, match="not running"):
        engine.submit(GenerationRequest([2]))
