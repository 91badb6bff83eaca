"""Structured output: the token-bytes mapping handed to llguidance, and constrained generation that always
parses and validates (tiny random models through the engine; the default model through the server)."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tinygemma import fast
from tinygemma.engine import Engine, EngineConfig, GenerationRequest
from tinygemma.sampling import SamplingParams
from tinygemma.server import create_app
from tinygemma.structured import ConstraintError, check_grammar, grammar_for, lltokenizer

from serving import serve
from tinymodels import random_tensors, tiny_config, tiny_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "mood", "tags", "ok"],
    "additionalProperties": False,
}


def valid(obj) -> bool:
    """SCHEMA's rules, checked by hand."""
    return (isinstance(obj, dict) and set(obj) == {"name", "age", "mood", "tags", "ok"}
            and isinstance(obj["name"], str) and len(obj["name"]) <= 12
            and type(obj["age"]) is int and 0 <= obj["age"] <= 120
            and obj["mood"] in ("happy", "sad", "calm") and isinstance(obj["ok"], bool)
            and isinstance(obj["tags"], list) and len(obj["tags"]) <= 3
            and all(isinstance(t, str) and len(t) <= 6 for t in obj["tags"]))


@pytest.fixture(scope="module")
def tiny_engine():
    cfg = tiny_config(tie_word_embeddings=False, max_position_embeddings=4096)
    with Engine(fast.build_fast_model(cfg, random_tensors(cfg, 0)), tiny_tokenizer()) as engine:
        yield engine


def sample_all(engine, grammar, n=20, max_tokens=300, prompt=(2, 60, 61)):
    """n seeded samples at temperature 1, all at once: [(text, final event)]."""
    handles = [engine.submit(GenerationRequest(list(prompt), SamplingParams(temperature=1.0, seed=s),
                                               max_tokens=max_tokens, grammar=grammar)) for s in range(n)]
    return [h.result() for h in handles]


def test_token_bytes_round_trip_through_llguidance(default_lm):
    tok = default_lm.tokenizer
    ll = lltokenizer(tok)
    assert ll.vocab_size == tok.vocab_size and ll.eos_token == tok.eos_id
    text = "Hello, wörld! 日本語 <b>\n\n  tabs\tand émojis 🎉"
    ids = tok.encode(text, add_bos=False)
    assert ll.decode_bytes(ids) == text.encode()
    assert ll.is_special_token(tok.bos_id) and ll.is_special_token(tok.piece_to_id("<end_of_turn>"))
    assert not ll.is_special_token(ids[0])
    assert lltokenizer(tok) is ll                      # built once


def test_json_schema_samples_always_validate(tiny_engine):
    results = sample_all(tiny_engine, grammar_for(json_schema=SCHEMA))
    for text, event in results:
        assert event.finish_reason == "stop", text
        assert valid(json.loads(text)), text
    assert len({text for text, _ in results}) > 10        # really sampled


def test_json_object_choices_and_regex(tiny_engine):
    for text, event in sample_all(tiny_engine, grammar_for(json_object=True), n=8, max_tokens=400):
        assert event.finish_reason in ("stop", "length")
        if event.finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
    labels = ["positive", "negative", "neutral (mixed)", "a.b*c"]
    picked = [text for text, _ in sample_all(tiny_engine, grammar_for(choices=labels))]
    assert set(picked) <= set(labels) and len(set(picked)) > 1
    for text, _ in sample_all(tiny_engine, grammar_for(regex=r"[A-Z][a-z]{2,5}-[0-9]{3}")):
        assert re.fullmatch(r"[A-Z][a-z]{2,5}-[0-9]{3}", text), text


def test_cut_off_by_max_tokens_says_length(tiny_engine):
    for text, event in sample_all(tiny_engine, grammar_for(json_schema=SCHEMA), n=3, max_tokens=4):
        assert event.finish_reason == "length" and event.completion_tokens == 4
        with pytest.raises(ValueError):
            json.loads(text)


@pytest.mark.parametrize("kwargs, message", [
    (dict(regex="(("), "invalid regex"),
    (dict(json_schema={"type": "nope"}), "nope"),
    (dict(choices=[]), "non-empty"),
    (dict(regex="a", choices=["a"]), "exactly one"),
    (dict(regex="a" * 200_000), "too large"),
])
def test_bad_constraints_are_one_line_errors(kwargs, message):
    with pytest.raises(ConstraintError, match=re.escape(message)) as e:
        check_grammar(grammar_for(**kwargs), tiny_tokenizer())
    assert "\n" not in str(e.value)


@pytest.mark.real
def test_default_model_json_schema_over_http(default_lm):
    """The official client, response_format json_schema, 20 random seeds at once: every answer validates."""
    with serve(create_app(Engine.from_lm(default_lm, EngineConfig()), "gemma")) as base:
        c = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}

        def ask(seed):
            return c.chat.completions.create(
                model="gemma", messages=[{"role": "user", "content": "Describe a person as JSON."}],
                response_format=fmt, temperature=1.0, seed=seed, max_tokens=120)

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(ask, range(20)))
        for r in answers:
            assert r.choices[0].finish_reason == "stop"
            assert valid(json.loads(r.choices[0].message.content)), r.choices[0].message.content
        label = c.chat.completions.create(
            model="gemma", messages=[{"role": "user", "content": "Is 'I love it' positive or negative?"}],
            max_tokens=10, extra_body={"guided_choice": ["positive", "negative"]})
        assert label.choices[0].message.content in ("positive", "negative")
