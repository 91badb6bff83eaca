"""Sampling (pure functions on logits), the stop-string matcher, and generation through `LM` on tiny models."""

import math
import random

import pytest
import torch

from tinygemma.errors import ContextLengthError
from tinygemma.generate import StopMatcher, generate_step
from tinygemma.lm import LM
from tinygemma.sampling import SamplingParams, apply_penalties, filter_logits, make_generator, sample, top_candidates

from tinymodels import random_tensors, tiny_config, tiny_tokenizer

# Hand-picked distribution: probabilities 0.5, 0.3, 0.15, 0.05 (no cumulative sum lands on a test threshold).
PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])
LOGITS = PROBS.log()


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.isfinite(logits).nonzero().flatten().tolist())


def draws(logits, params, n, seed=0, history=None):
    gen = make_generator(seed)
    return [sample(logits, params, history, gen) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- sampling


def test_greedy_is_argmax():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(100, generator=g)
        assert sample(logits, SamplingParams()) == int(logits.argmax())
    # Temperature 0 ignores the filters entirely (they only matter when sampling).
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    assert sample(logits, SamplingParams(temperature=0.0, top_k=1, top_p=0.1, min_p=0.5)) == 1
    assert SamplingParams().greedy and not SamplingParams(temperature=0.1).greedy


@pytest.mark.parametrize("k", [1, 3, 7])
def test_top_k_keeps_exactly_k(k):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(50, generator=g) * 0.3          # fairly flat: every kept token gets drawn
    top = set(torch.topk(logits, k).indices.tolist())
    p = SamplingParams(temperature=1.0, top_k=k)
    assert kept(filter_logits(logits, p)) == top
    seen = set(draws(logits, p, 600, seed=3))
    assert seen == top                                   # never outside the top k, and all k reachable
    # top_k larger than the vocabulary is a no-op.
    assert kept(filter_logits(logits, SamplingParams(temperature=1.0, top_k=500))) == set(range(50))


@pytest.mark.parametrize("top_p, expected", [
    (0.3, {0}),            # 0.5 alone reaches 0.3
    (0.7, {0, 1}),         # 0.5 < 0.7 <= 0.8
    (0.85, {0, 1, 2}),     # 0.8 < 0.85 <= 0.95
    (0.99, {0, 1, 2, 3}),
    (1.0, {0, 1, 2, 3}),
])
def test_top_p_keeps_smallest_set_reaching_p(top_p, expected):
    p = SamplingParams(temperature=1.0, top_p=top_p)
    out = filter_logits(LOGITS, p)
    assert kept(out) == expected
    # The survivors are renormalised in their original proportions.
    idx = sorted(expected)
    want = PROBS[idx] / PROBS[idx].sum()
    torch.testing.assert_close(out.softmax(-1)[idx], want, atol=1e-6, rtol=0)
    # Independent of vocabulary order.
    perm = torch.tensor([2, 0, 3, 1])
    assert kept(filter_logits(LOGITS[perm], p)) == {j for j, i in enumerate(perm.tolist()) if i in expected}
    assert set(draws(LOGITS, p, 300)) <= expected


@pytest.mark.parametrize("min_p, expected", [
    (0.05, {0, 1, 2, 3}),   # threshold 0.025
    (0.2, {0, 1, 2}),       # threshold 0.1
    (0.5, {0, 1}),          # threshold 0.25
    (0.7, {0}),             # threshold 0.35
])
def test_min_p(min_p, expected):
    p = SamplingParams(temperature=1.0, min_p=min_p)
    assert kept(filter_logits(LOGITS, p)) == expected
    assert set(draws(LOGITS, p, 300)) <= expected


def test_filters_combine_in_order():
    # top_k 2 first, then top_p 0.6 on the renormalised 0.625 / 0.375: the top token alone reaches 0.6.
    # (top_p 0.6 on the full distribution would keep two.)
    assert kept(filter_logits(LOGITS, SamplingParams(temperature=1.0, top_k=2, top_p=0.6))) == {0}
    assert kept(filter_logits(LOGITS, SamplingParams(temperature=1.0, top_p=0.6))) == {0, 1}


def test_temperature_scales_logits_and_flattens_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    for t in (0.25, 0.7, 1.0, 3.0):
        out = filter_logits(logits, SamplingParams(temperature=t))
        torch.testing.assert_close(out - out.max(), (logits - logits.max()) / t)   # up to a constant shift
        torch.testing.assert_close(out.softmax(-1), (logits / t).softmax(-1))
    # Empirical frequencies follow softmax(logits / T).
    n = 4000
    for t in (0.5, 2.0):
        counts = torch.bincount(torch.tensor(draws(logits, SamplingParams(temperature=t), n, seed=5)), minlength=4)
        freq = counts.double() / n
        torch.testing.assert_close(freq, (logits.double() / t).softmax(-1), atol=0.03, rtol=0)
    cold = draws(logits, SamplingParams(temperature=0.5), 1000, seed=1).count(0)
    hot = draws(logits, SamplingParams(temperature=2.0), 1000, seed=1).count(0)
    assert cold > hot + 200


@pytest.mark.parametrize("t", [1e-3, 1e-20, 1e-39, 1e-45])
def test_tiny_temperature_samples_the_top_token(t):
    """A valid but tiny temperature behaves like greedy (logits / t must not overflow to inf -> NaN probs)."""
    logits = torch.tensor([30.0, 1.0, -5.0, 29.0])
    p = SamplingParams(temperature=t)
    assert torch.isfinite(filter_logits(logits, p).softmax(-1)).all()
    assert set(draws(logits, p, 20)) == {0}


def test_repetition_penalty_hand_computed():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0])
    history = torch.tensor([0, 1, 1, 4])
    before = logits.clone()
    out = apply_penalties(logits, history, SamplingParams(repetition_penalty=2.0))
    # positive seen logits are divided, negative ones multiplied; unseen untouched; repeats do not compound.
    torch.testing.assert_close(out, torch.tensor([1.0, -2.0, 0.5, 3.0, -4.0]))
    assert torch.equal(logits, before)                   # input not modified


def test_presence_and_frequency_penalties_hand_computed():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0])
    history = torch.tensor([0, 1, 1, 4, 1])              # counts: 0 -> 1, 1 -> 3, 4 -> 1
    out = apply_penalties(logits, history, SamplingParams(presence_penalty=0.5))
    torch.testing.assert_close(out, torch.tensor([1.5, -1.5, 0.5, 3.0, -2.5]))
    out = apply_penalties(logits, history, SamplingParams(frequency_penalty=0.25))
    torch.testing.assert_close(out, torch.tensor([1.75, -1.75, 0.5, 3.0, -2.25]))
    # All three: repetition first, then presence + frequency.
    out = apply_penalties(logits, history, SamplingParams(repetition_penalty=2.0, presence_penalty=0.5,
                                                          frequency_penalty=0.25))
    torch.testing.assert_close(out, torch.tensor([1.0 - 0.75, -2.0 - 1.25, 0.5, 3.0, -4.0 - 0.75]))
    # Negative presence penalty encourages seen tokens.
    out = apply_penalties(logits, history, SamplingParams(presence_penalty=-1.0))
    torch.testing.assert_close(out, torch.tensor([3.0, 0.0, 0.5, 3.0, -1.0]))


def test_penalty_last_n_only_looks_at_recent_tokens():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0])
    history = torch.tensor([0, 3, 1, 4])
    out = apply_penalties(logits, history, SamplingParams(repetition_penalty=2.0, penalty_last_n=2))
    torch.testing.assert_close(out, torch.tensor([2.0, -2.0, 0.5, 3.0, -4.0]))


def test_penalties_apply_before_greedy_and_sampling():
    logits = torch.tensor([1.0, 0.9, -5.0])
    assert sample(logits, SamplingParams(repetition_penalty=2.0), torch.tensor([0])) == 1
    assert sample(logits, SamplingParams(repetition_penalty=2.0), torch.tensor([], dtype=torch.long)) == 0
    assert sample(logits, SamplingParams(presence_penalty=0.2), torch.tensor([0])) == 1
    # Sampling with top_k=1 after a penalty: always the penalised winner.
    p = SamplingParams(temperature=1.0, top_k=1, frequency_penalty=0.1)
    assert set(draws(logits, p, 50, history=torch.tensor([0, 0]))) == {1}


def test_same_seed_same_tokens_different_seed_different():
    logits = torch.zeros(1000)
    p = SamplingParams(temperature=1.0)
    a, b = draws(logits, p, 40, seed=123), draws(logits, p, 40, seed=123)
    assert a == b
    others = [draws(logits, p, 40, seed=s) for s in (1, 2, 3)]
    assert all(o != a for o in others)
    # An unseeded generator still works (and is not stuck on one value).
    assert len(set(draws(logits, p, 40, seed=None))) > 1


def test_batched_top_candidates_draw_as_each_row_alone():
    """The engine takes every row's top-k in one batched call: the draws equal those of each row alone."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 5000, generator=g) * 3
    params = [SamplingParams(temperature=0.7, top_k=64, top_p=0.95), SamplingParams(temperature=1.0, top_k=5),
              SamplingParams(), SamplingParams(temperature=0.7, top_k=64, top_p=0.95),
              SamplingParams(temperature=1.0), SamplingParams(temperature=1.0, top_k=5, presence_penalty=0.5)]
    tops = top_candidates(logits, params)
    # Greedy, full-vocabulary and penalised rows draw without precomputed candidates.
    assert [t is None for t in tops] == [False, False, True, False, True, True]
    for row, p, top in zip(logits, params, tops):
        history = torch.tensor([1, 2]) if p.has_penalties else None
        for seed in range(5):
            alone = sample(row, p, history, make_generator(seed))
            assert sample(row, p, history, make_generator(seed), top) == alone


@pytest.mark.parametrize("field, value", [
    ("temperature", -1.0), ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", 1000.0),
    ("top_k", -1), ("top_k", 2.5),
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", float("nan")),
    ("min_p", -0.1), ("min_p", 1.0),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_penalty", float("inf")),
    ("presence_penalty", 2.5), ("presence_penalty", float("nan")),
    ("frequency_penalty", -3.0),
    ("penalty_last_n", -1), ("penalty_last_n", 1.5),
])
def test_invalid_params_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_valid_edge_params_accepted():
    SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=10.0,
                   presence_penalty=-2.0, frequency_penalty=2.0, penalty_last_n=0)
    SamplingParams(temperature=100.0, top_p=1e-6, min_p=0.999, repetition_penalty=1e-3)


# ---------------------------------------------------------------------------------------------- StopMatcher


def feed_all(stops, pieces):
    m = StopMatcher(stops)
    out, hit = [], False
    for piece in pieces:
        text, hit = m.feed(piece)
        out.append(text)
        if hit:
            break
    if not hit:
        out.append(m.flush())
    return "".join(out), hit, out


def test_stop_string_split_across_pieces_is_not_emitted():
    m = StopMatcher(["STOP"])
    assert m.feed("abc ST") == ("abc ", False)      # "ST" held back
    assert m.feed("O") == ("", False)
    assert m.feed("P and more") == ("", True)
    text, hit, _ = feed_all(["STOP"], ["x", "yS", "T", "OP", "z"])
    assert (text, hit) == ("xy", True)


def test_partial_match_that_is_not_a_stop_is_emitted():
    m = StopMatcher(["STOP"])
    assert m.feed("ab ST") == ("ab ", False)
    assert m.feed("O") == ("", False)
    assert m.feed("x") == ("STOx", False)           # released once it can no longer become "STOP"
    m = StopMatcher(["STOP"])
    assert m.feed("tail S") == ("tail ", False)
    assert m.flush() == "S"                          # held text comes out at the end
    assert feed_all(["STOP"], ["S", "T", "O", "R", "M"]) == ("STORM", False, ["", "", "", "STOR", "M", ""])


def test_multiple_stops_earliest_wins():
    assert feed_all(["world", "lo"], ["hello world"])[:2] == ("hel", True)
    assert feed_all(["world", "lo"], ["hel", "l", "o w", "orld"])[:2] == ("hel", True)
    assert feed_all(["xyz", "b"], ["a", "xy", "b"])[:2] == ("axy", True)
    # Only stops completed so far count: "c" completes first, so the longer "abcb" (starting earlier but
    # completed by the next piece) never gets the chance.
    assert feed_all(["abcb", "c"], ["babc", "b"])[:2] == ("bab", True)
    assert feed_all(["abcb", "c"], ["babcb"])[:2] == ("b", True)
    # A longer stop pending while a shorter one completes later in the text.
    assert feed_all(["abcd", "bce"], ["ab", "c", "e"])[:2] == ("a", True)
    assert feed_all(["aab"], ["a", "a", "a", "b"])[:2] == ("a", True)


def test_no_stops_passes_everything_through():
    assert feed_all([], ["a", "b", ""])[:2] == ("ab", False)
    assert feed_all([""], ["a", "b"])[:2] == ("ab", False)     # empty stop strings are ignored


def test_stop_matcher_against_reference_on_random_splits():
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 14)))
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, max(0, len(text) - 1)))) if len(text) > 1 else []
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        # Reference: after each piece, if the text so far contains any stop string, the output is the text
        # before the earliest-starting one (a stop completed by a later piece cannot matter any more).
        want, stopped, so_far = text, False, ""
        for piece in pieces:
            so_far += piece
            hits = [i for i in (so_far.find(s) for s in stops) if i >= 0]
            if hits:
                want, stopped = so_far[:min(hits)], True
                break
        got, hit, _ = feed_all(stops, pieces)
        assert (got, hit) == (want, stopped), (text, stops, pieces)
        # Streamed output never runs ahead: every emitted prefix is a prefix of the final answer.
        assert all(want.startswith("".join(feed_all(stops, pieces)[2][:k])) for k in range(len(pieces) + 1))


# ---------------------------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def lm():
    # Untied embeddings: with tied ones a random tiny model mostly repeats its last token, which would make
    # the cache-versus-recompute comparison weak. This one produces a varied greedy sequence.
    cfg = tiny_config(tie_word_embeddings=False)
    return LM.from_tensors(cfg, random_tensors(cfg, 0), tiny_tokenizer())


PROMPT = "Hello world"


def greedy_by_recompute(lm, ids, n):
    ids = list(ids)
    out = []
    for _ in range(n):
        tok = int(lm.logits(ids)[-1].argmax())
        out.append(tok)
        ids.append(tok)
    return out


def final(chunks):
    chunks = list(chunks)
    assert all(c.finish_reason is None for c in chunks[:-1])
    return chunks, chunks[-1]


def test_greedy_with_cache_equals_full_recompute_past_the_window(lm):
    assert lm.config.sliding_window == 8
    ids = lm.tokenizer.encode(PROMPT)
    n = 30
    ref = greedy_by_recompute(lm, ids, n)
    assert len(set(ref)) >= 10                       # a varied sequence, not one token repeated
    assert not set(ref) & lm.tokenizer.stop_ids      # so lm.generate runs all n tokens
    assert list(generate_step(lm.model, ids, max_tokens=n)) == ref
    for chunk in (1, 3, 512):                        # prefill chunking does not matter
        assert list(generate_step(lm.model, ids, max_tokens=n, prefill_chunk=chunk)) == ref
    chunks, last = final(lm.stream_generate(PROMPT, max_tokens=n))
    assert lm.generate(PROMPT, max_tokens=n) == lm.tokenizer.decode(ref, skip_special=True)
    assert lm.generate(ids, max_tokens=n) == lm.tokenizer.decode(ref, skip_special=True)
    assert last.generated_tokens == n and last.prompt_tokens == len(ids)


def test_stream_join_equals_generate(lm):
    assert "".join(lm.stream(PROMPT, max_tokens=25)) == lm.generate(PROMPT, max_tokens=25)
    kw = dict(max_tokens=25, temperature=0.9, top_k=40, seed=11)
    assert "".join(lm.stream(PROMPT, **kw)) == lm.generate(PROMPT, **kw)
    pieces = list(lm.stream(PROMPT, max_tokens=25))
    assert all(pieces) and len(pieces) > 1


@pytest.mark.parametrize("n", [0, 1, 7])
def test_max_tokens_honoured(lm, n):
    chunks, last = final(lm.stream_generate(PROMPT, max_tokens=n))
    assert last.finish_reason == "length"
    assert last.generated_tokens == n
    ids = lm.tokenizer.encode(PROMPT)
    assert "".join(c.text for c in chunks) == lm.tokenizer.decode(greedy_by_recompute(lm, ids, n), skip_special=True)


def test_negative_max_tokens_rejected(lm):
    with pytest.raises(ValueError, match="max_tokens"):
        lm.generate(PROMPT, max_tokens=-1)


def test_stop_token_ends_generation(lm):
    ids = lm.tokenizer.encode(PROMPT)
    ref = greedy_by_recompute(lm, ids, 20)
    stop_tok = ref[8]
    j = ref.index(stop_tok)
    chunks, last = final(lm.stream_generate(PROMPT, max_tokens=20, stop_ids=[stop_tok]))
    assert last.finish_reason == "stop"
    assert last.generated_tokens == j                # the stop token itself is not counted or shown
    assert "".join(c.text for c in chunks) == lm.tokenizer.decode(ref[:j], skip_special=True)


def test_stop_token_from_tokenizer_ends_generation():
    # A model's own stop tokens (EOS, <end_of_turn>) end generation without being passed: this seed's greedy
    # continuation of the prompt is one token, then EOS.
    cfg = tiny_config(tie_word_embeddings=False)
    lm = LM.from_tensors(cfg, random_tensors(cfg, 3), tiny_tokenizer())
    prompt = "the cat sat on"
    ref = greedy_by_recompute(lm, lm.tokenizer.encode(prompt), 4)
    j = next(i for i, t in enumerate(ref) if t in lm.tokenizer.stop_ids)
    assert j < 4
    chunks, last = final(lm.stream_generate(prompt, max_tokens=50))
    assert last.finish_reason == "stop" and last.generated_tokens == j and last.token == ref[j]
    assert "".join(c.text for c in chunks) == lm.tokenizer.decode(ref[:j], skip_special=True)
    assert lm.generate(prompt, max_tokens=50) == lm.tokenizer.decode(ref[:j], skip_special=True)


def test_stop_string(lm):
    full = lm.generate(PROMPT, max_tokens=30)
    stop = next(full[i:i + 2] for i in range(6, len(full) - 2) if full[i:i + 2].isalpha())
    want = full[:full.find(stop)]
    chunks, last = final(lm.stream_generate(PROMPT, max_tokens=30, stop=stop))
    assert last.finish_reason == "stop"
    assert "".join(c.text for c in chunks) == want
    assert lm.generate(PROMPT, max_tokens=30, stop=[stop]) == want
    assert lm.generate(PROMPT, max_tokens=30, stop=["not in the text", stop]) == want
    # A stop string that never appears changes nothing.
    _, last = final(lm.stream_generate(PROMPT, max_tokens=30, stop=["QQQ"]))
    assert last.finish_reason == "length"
    assert lm.generate(PROMPT, max_tokens=30, stop="QQQ") == full


def test_seeded_sampling_reproducible(lm):
    kw = dict(max_tokens=30, temperature=1.0, top_p=0.95)
    a = lm.generate(PROMPT, seed=42, **kw)
    assert a == lm.generate(PROMPT, seed=42, **kw)
    assert len({lm.generate(PROMPT, seed=s, **kw) for s in range(5)}) > 1
    greedy = lm.generate(PROMPT, max_tokens=30)
    assert lm.generate(PROMPT, max_tokens=30, seed=5) == greedy    # a seed does not change greedy decoding


def test_prompt_at_context_limit_raises(lm):
    ctx = lm.config.max_position_embeddings
    for n in (ctx, ctx + 10):
        prompt = [lm.tokenizer.bos_id] + [300] * (n - 1)
        with pytest.raises(ContextLengthError) as e:
            lm.generate(prompt, max_tokens=5)
        msg = str(e.value)
        assert "\n" not in msg and str(ctx) in msg and str(n) in msg
    # And it is a ValueError too (the CLI and callers catch it as one).
    with pytest.raises(ValueError):
        list(generate_step(lm.model, [2] * ctx))


def test_generation_stops_at_context_limit(lm):
    ctx = lm.config.max_position_embeddings
    g = torch.Generator().manual_seed(3)
    prompt = [lm.tokenizer.bos_id] + torch.randint(9, lm.config.vocab_size, (ctx - 7,), generator=g).tolist()
    assert len(prompt) == ctx - 6
    tokens = list(generate_step(lm.model, prompt, max_tokens=100))
    assert len(tokens) == 6
    assert tokens == greedy_by_recompute(lm, prompt, 6)
    assert not set(tokens) & lm.tokenizer.stop_ids
    _, last = final(lm.stream_generate(prompt, max_tokens=100))
    assert last.finish_reason == "length" and last.generated_tokens == 6


def test_chat(lm):
    tok = lm.tokenizer
    messages = [{"role": "user", "content": "hello"}]
    ids = tok.encode_chat(messages)
    tail = tok.encode("<start_of_turn>model\n", add_bos=False)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert ids[-len(tail):] == tail
    assert tail[0] == tok.piece_to_id("<start_of_turn>")
    reply = lm.chat(messages, max_tokens=12)
    assert isinstance(reply, str)
    assert reply == lm.generate(ids, max_tokens=12)
    chunks, last = final(lm.chat_stream(messages, max_tokens=12))
    assert last.finish_reason in ("stop", "length") and last.prompt_tokens == len(ids)
    # A follow-up turn renders the reply and ends with the generation prompt again.
    longer = tok.encode_chat(messages + [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "ok"}])
    assert longer[-len(tail):] == tail and len(longer) > len(ids)
    assert isinstance(lm.chat(messages + [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "ok"}],
                              max_tokens=5, temperature=0.7, seed=1), str)
