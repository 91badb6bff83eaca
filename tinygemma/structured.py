"""Structured output: constrain generation to a JSON schema, any JSON object, a set of strings or a regex.

Built on llguidance: its matcher computes, for each step, the set of tokens that keep the output inside the
grammar. Our tokenizer is handed to it as the bytes of every token id (special tokens marked with a 0xFF
prefix, llguidance's convention, so they never spell text) plus our own encoder.

    constraint = Constraint(grammar_for(tokenizer_info(tok), json_schema={"type": "object"}))
    constraint.mask(logits)         # disallowed tokens -> -inf
    constraint.advance(token)       # after sampling

When the grammar is complete only the end-of-sequence token stays allowed, so generation stops there.
A grammar cut off by max_tokens is not complete: its request finishes with finish_reason "length".
"""

from __future__ import annotations

import json
import threading
from functools import lru_cache

import numpy as np
import torch

# Compact JSON (no free whitespace): a small model cannot wander off into endless blanks.
JSON_OPTIONS = {"whitespace_flexible": False}
MAX_GRAMMAR_CHARS = 100_000      # a larger schema, regex or label list is refused
# Work llguidance may do for one grammar: lexer states in all (memory) and lexer steps per token mask (time).
# A regex like "a{1000000}" or "((a{100}){100}){100}" otherwise costs 0.2-0.4 s of CPU at its first mask and
# again in the engine thread at its first token (stalling every stream); with these it fails in ~10-20 ms
# (an error the request alone gets). JSON schemas, label lists and everyday regexes mask in < 1 ms, far below
# them; a{5000} still works (~9 ms a step).
LEXER_STATES = 10_000
INITIAL_LEXER_FUEL = 20_000
STEP_LEXER_FUEL = 10_000
# Characters that are special in llguidance's (Rust) regex syntax, escaped as Rust's regex::escape does.
REGEX_META = set("\\.+*?()|[]{}^$#&-~")

_tokenizers_lock = threading.Lock()
_compile_lock = threading.Lock()     # one grammar compiles at a time: a burst of them takes one core, not all


class ConstraintError(ValueError):
    """A grammar, schema or regex that cannot be compiled (one-line message)."""


def _escape_regex(text: str) -> str:
    return "".join("\\" + c if c in REGEX_META else c for c in text)


class _TokenizerAdapter:
    """The shape llguidance.TokenizerWrapper expects: token bytes, special ids and an encoder."""

    def __init__(self, tokenizer):
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = [i for i in range(tokenizer.vocab_size) if tokenizer.is_special(i)]
        special = set(self.special_token_ids)
        self.tokens = [b"\xff" + tokenizer.id_to_piece(i).encode() if i in special else tokenizer.token_bytes(i)
                       for i in range(tokenizer.vocab_size)]
        self._tokenizer = tokenizer

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return self._tokenizer.encode(text, add_bos=False, parse_special=False)


@lru_cache(maxsize=4)
def _lltokenizer(tokenizer):
    import llguidance

    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_TokenizerAdapter(tokenizer)))


def lltokenizer(tokenizer):
    """llguidance's view of our tokenizer (built once per tokenizer: ~1 s for Gemma's 262,144 tokens)."""
    with _tokenizers_lock:
        return _lltokenizer(tokenizer)


def grammar_for(json_schema: dict | bool | None = None, json_object: bool = False,
                choices: list[str] | None = None, regex: str | None = None) -> str:
    """An llguidance grammar for exactly one of: a JSON schema, any JSON object, one of `choices`, a regex."""
    from llguidance import LLMatcher

    given = [x for x in (json_schema is not None, json_object, choices is not None, regex is not None) if x]
    if len(given) != 1:
        raise ConstraintError("give exactly one of a JSON schema, json_object, a list of choices or a regex")
    if json_object:
        json_schema = {"type": "object"}
    if json_schema is not None:
        text = json.dumps(json_schema)
        if len(text) > MAX_GRAMMAR_CHARS:
            raise ConstraintError(f"JSON schema is too large ({len(text)} characters; limit {MAX_GRAMMAR_CHARS})")
        try:
            return LLMatcher.grammar_from_json_schema(text, defaults=JSON_OPTIONS)
        except ValueError as e:
            raise ConstraintError(f"invalid JSON schema: {_one_line(e)}") from None
    if choices is not None:
        if not choices or not all(isinstance(c, str) and c for c in choices):
            raise ConstraintError("choices must be a non-empty list of non-empty strings")
        regex = "(" + "|".join(_escape_regex(c) for c in choices) + ")"
    if len(regex) > MAX_GRAMMAR_CHARS:
        raise ConstraintError(f"regex is too large ({len(regex)} characters; limit {MAX_GRAMMAR_CHARS})")
    return LLMatcher.grammar_from_regex(regex)


def check_grammar(grammar: str, tokenizer) -> None:
    """Raise ConstraintError with llguidance's message when the grammar does not compile."""
    from llguidance import LLMatcher

    error = LLMatcher.validate_grammar(grammar, lltokenizer(tokenizer))
    if error and not error.startswith("WARNING"):
        raise ConstraintError(f"invalid constraint: {_one_line(error)}")


def _one_line(e) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class Constraint:
    """One request's grammar state: masks logits before sampling, follows the sampled tokens."""

    def __init__(self, grammar: str, tokenizer):
        """Compiles the grammar and computes its first mask (both release the GIL), so that a grammar that
        cannot be compiled within the limits, or that no output can satisfy, is refused here, before the
        request reaches the engine: ConstraintError."""
        from llguidance import LLMatcher, LLParserLimits

        self.vocab_size = tokenizer.vocab_size
        limits = LLParserLimits(max_lexer_states=LEXER_STATES, initial_lexer_fuel=INITIAL_LEXER_FUEL,
                                step_lexer_fuel=STEP_LEXER_FUEL)
        llt = lltokenizer(tokenizer)
        with _compile_lock:
            self.matcher = LLMatcher(llt, grammar, log_level=0, limits=limits)
            self._check()
            self._first = self._allowed()
        # llguidance stops with NoExtensionBias when its grammar allows no token at all.
        nothing = self.matcher.is_error() and _one_line(self.matcher.get_error()) == "NoExtensionBias"
        if nothing or not self._first.any():
            raise ConstraintError("constraint cannot be satisfied: no output matches it")
        self._check()

    def _check(self) -> None:
        if self.matcher.is_error():
            raise ConstraintError(f"invalid constraint: {_one_line(self.matcher.get_error())}")

    def _allowed(self) -> np.ndarray:
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[:self.vocab_size].astype(bool)

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits (V,) of tokens the grammar does not allow next to -inf, in place.
        ConstraintError when the grammar fails (a limit reached) or allows nothing."""
        allowed = self._first if self._first is not None else self._allowed()
        self._first = None
        self._check()
        if not allowed.any():
            raise ConstraintError("constraint: no token can continue the output")
        logits.masked_fill_(~torch.from_numpy(allowed), float("-inf"))

    def advance(self, token: int) -> None:
        """Follow a sampled token (raises ConstraintError if the grammar did not allow it)."""
        if not self.matcher.consume_token(token):
            raise ConstraintError(f"constraint: {_one_line(self.matcher.get_error())}")
