"""Pure-Python Gemma 3 tokenizer: SentencePiece-BPE exactly as llama.cpp runs it from GGUF metadata.

The algorithm follows llama.cpp (`llm_tokenizer_spm_session` and `tokenizer_st_partition`):

1. Partition the raw text on special tokens. Candidates are user-defined tokens (always) and
   control/unknown tokens (only when ``parse_special``), taken longest text first; each one splits
   every remaining raw fragment at its leftmost non-overlapping occurrences.
2. Each remaining raw fragment has " " replaced by "\u2581" (and, when ``add_space_prefix`` is set,
   a leading space if the previous fragment was a token or it is the first one). It is split into
   characters, and the adjacent pair whose concatenation is a vocabulary piece with the highest score
   is merged, repeatedly (ties: leftmost), with a heap. No pre-splitting on spaces.
3. Each final symbol is emitted as its piece id; a symbol not in the vocabulary (always a single
   character) falls back to one ``<0xXX>`` byte token per UTF-8 byte.

Also readable: a Hugging Face ``tokenizer.json`` (BPE with merges) and a SentencePiece
``tokenizer.model`` (protobuf parsed by hand), so the package needs neither `sentencepiece` nor
`tokenizers`.
"""

from __future__ import annotations

import codecs
import heapq
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Tokenizer", "StreamDecoder"]

# Token types (llama.cpp / SentencePiece numbering).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_VALID_TYPES = frozenset((NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE))

SPACE = "\u2581"  # "▁"
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>\Z")

_CACHE_MAX_FRAGMENT = 64      # fragments up to this many characters are memoised
_CACHE_MAX_ENTRIES = 1 << 16


class Tokenizer:
    """Gemma 3 SentencePiece-BPE tokenizer (llama.cpp semantics).

    Attributes: ``vocab_size``, ``bos_id``, ``eos_id``, ``pad_id``, ``unk_id`` (-1 when absent),
    ``add_bos`` (default for :meth:`encode`), ``add_space_prefix``, ``stop_ids`` (EOS and
    ``<end_of_turn>`` when present).
    """

    def __init__(self, tokens: Sequence[str], scores: Sequence[float], types: Sequence[int], *,
                 bos_id: int, eos_id: int, unk_id: int = -1, pad_id: int = -1,
                 add_bos: bool = True, add_space_prefix: bool = False,
                 merge_vocab: Mapping[str, int] | None = None, source: str = "tokenizer",
                 type_key: str = "token type"):
        n = len(tokens)
        if n == 0:
            raise ValueError(f"{source}: empty vocabulary")
        if len(scores) != n:
            raise ValueError(f"{source}: {len(scores)} scores for {n} tokens")
        if len(types) != n:
            raise ValueError(f"{source}: {len(types)} token types for {n} tokens")
        for name, value, required in (("bos_id", bos_id, True), ("eos_id", eos_id, True),
                                      ("unk_id", unk_id, False), ("pad_id", pad_id, False)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{source}: {name} must be an integer, got {value!r}")
            if value >= n or value < (0 if required else -1):
                raise ValueError(f"{source}: {name} {value} out of range for {n} tokens")

        self._pieces: list[str] = list(tokens)
        self._scores: list[float] = list(scores)
        self._types: list[int] = list(types)
        self.vocab_size = n
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = bos_id, eos_id, unk_id, pad_id
        self.add_bos = bool(add_bos)
        self.add_space_prefix = bool(add_space_prefix)

        # piece -> id; on duplicate texts the last id wins, like llama.cpp's token_to_id map.
        self._piece_to_id: dict[str, int] = dict(zip(self._pieces, range(n)))
        # Pieces a merge may produce (llama.cpp: every piece; tokenizer.json: merge results only).
        self._merge_vocab: Mapping[str, int] = self._piece_to_id if merge_vocab is None else merge_vocab

        types_l = self._types
        odd = [i for i, t in enumerate(types_l) if t != NORMAL]
        special: list[tuple[int, str, int]] = []    # (id, text, type) of partition candidates
        self._byte_of: dict[int, int] = {}          # byte-token id -> byte value
        for i in odd:
            t = types_l[i]
            if t not in _VALID_TYPES:
                raise ValueError(f"{source}: {type_key} of token {i} is {t!r}, not one of 1-6")
            text = self._pieces[i]
            if t in (CONTROL, UNKNOWN, USER_DEFINED):
                if text:
                    special.append((i, text, t))
            elif t == BYTE:
                m = _BYTE_PIECE.match(text)
                if m is None:
                    raise ValueError(f"{source}: byte token {i} has text {text!r}, expected <0xXX>")
                self._byte_of[i] = int(m.group(1), 16)

        # byte -> id for the fallback ("<0xXX>" like llama.cpp's byte_to_token, else the raw char).
        self._byte_ids: list[int] = []
        p2i = self._piece_to_id
        for b in range(256):
            tid = p2i.get(f"<0x{b:02X}>")
            if tid is None:
                tid = p2i.get(chr(b)) if b < 128 else None
            if tid is None:
                tid = unk_id if unk_id >= 0 else -1
            self._byte_ids.append(tid)
        self._missing_bytes = any(t < 0 for t in self._byte_ids)

        # Longest text first; equal lengths by id (llama.cpp's order there is unspecified, and no
        # two equal-length specials of Gemma 3 can overlap, so the choice cannot matter for it).
        special.sort(key=lambda s: (-len(s[1]), s[0]))
        self._special_all: list[tuple[str, int]] = [(s, i) for i, s, _ in special]
        self._special_user: list[tuple[str, int]] = [(s, i) for i, s, t in special if t == USER_DEFINED]

        self._control: frozenset[int] = frozenset(i for i in odd if types_l[i] in (CONTROL, UNKNOWN, UNUSED))
        stops = {eos_id}
        eot = p2i.get("<end_of_turn>")
        if eot is not None:
            stops.add(eot)
        self.stop_ids: frozenset[int] = frozenset(stops)
        self._bytes_cache: dict[int, bytes] = {}
        self._frag_cache: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any]) -> "Tokenizer":
        """Build from GGUF metadata (``tokenizer.ggml.*`` keys, plain Python values)."""
        src = "GGUF metadata"

        def need(key: str):
            if key not in meta:
                raise ValueError(f"{src}: missing key {key}")
            return meta[key]

        model = need("tokenizer.ggml.model")
        if model != "llama":
            raise ValueError(f"{src}: tokenizer.ggml.model is {model!r}; only 'llama' (SentencePiece BPE) is supported")
        tokens = need("tokenizer.ggml.tokens")
        scores = need("tokenizer.ggml.scores")
        types = need("tokenizer.ggml.token_type")
        for key, value in (("tokenizer.ggml.tokens", tokens), ("tokenizer.ggml.scores", scores),
                           ("tokenizer.ggml.token_type", types)):
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise ValueError(f"{src}: {key} must be an array, got {type(value).__name__}")
        n = len(tokens)
        if n == 0:
            raise ValueError(f"{src}: tokenizer.ggml.tokens is empty")
        if not isinstance(tokens[0], str):
            raise ValueError(f"{src}: tokenizer.ggml.tokens must hold strings, got {type(tokens[0]).__name__}")
        if len(scores) != n:
            raise ValueError(f"{src}: tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
        if len(types) != n:
            raise ValueError(f"{src}: tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
        if hasattr(scores, "tolist"):
            scores = scores.tolist()
        if hasattr(types, "tolist"):
            types = types.tolist()

        def ident(key: str, default: int) -> int:
            v = meta.get(key, default)
            if hasattr(v, "item"):
                v = v.item()
            if not isinstance(v, int) or isinstance(v, bool) or not -1 <= v < n:
                raise ValueError(f"{src}: {key} = {v!r} is not a token id below {n}")
            return v

        def flag(key: str, default: bool) -> bool:
            v = meta.get(key, default)
            if hasattr(v, "item"):
                v = v.item()
            if not isinstance(v, (bool, int)):
                raise ValueError(f"{src}: {key} = {v!r} is not a boolean")
            return bool(v)

        # Defaults are llama.cpp's for SPM vocabularies.
        bos = ident("tokenizer.ggml.bos_token_id", 1)
        eos = ident("tokenizer.ggml.eos_token_id", 2)
        if bos < 0:
            raise ValueError(f"{src}: tokenizer.ggml.bos_token_id must be set")
        if eos < 0:
            raise ValueError(f"{src}: tokenizer.ggml.eos_token_id must be set")
        return cls(tokens, scores, types, bos_id=bos, eos_id=eos,
                   unk_id=ident("tokenizer.ggml.unknown_token_id", 0),
                   pad_id=ident("tokenizer.ggml.padding_token_id", -1),
                   add_bos=flag("tokenizer.ggml.add_bos_token", True),
                   add_space_prefix=flag("tokenizer.ggml.add_space_prefix", True),
                   source=src, type_key="tokenizer.ggml.token_type")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        """Build from a Hugging Face ``tokenizer.json`` or a SentencePiece ``tokenizer.model``.

        A directory is searched for ``tokenizer.json`` then ``tokenizer.model``.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            for name in ("tokenizer.json", "tokenizer.model"):
                if os.path.isfile(os.path.join(path, name)):
                    return cls.from_file(os.path.join(path, name))
            raise ValueError(f"{path}: no tokenizer.json or tokenizer.model in this directory")
        with open(path, "rb") as f:
            data = f.read()
        head = data.lstrip()[:1]
        if head == b"{":
            return cls._from_hf_json(data, path)
        return cls._from_sentencepiece(data, path)

    @classmethod
    def _from_hf_json(cls, data: bytes, path: str) -> "Tokenizer":
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        model = doc.get("model")
        if not isinstance(model, dict):
            raise ValueError(f"{path}: missing key model")
        if model.get("type") != "BPE":
            raise ValueError(f"{path}: model.type is {model.get('type')!r}; only BPE is supported")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not vocab:
            raise ValueError(f"{path}: missing or empty key model.vocab")
        added = doc.get("added_tokens") or []
        size = max(max(vocab.values()), max((a["id"] for a in added), default=-1)) + 1
        tokens: list[str | None] = [None] * size
        for piece, i in vocab.items():
            if not isinstance(i, int) or i < 0:
                raise ValueError(f"{path}: model.vocab[{piece!r}] is not a token id")
            tokens[i] = piece
        types = [NORMAL] * size
        for a in added:
            i, content = a.get("id"), a.get("content")
            if not isinstance(i, int) or not isinstance(content, str):
                raise ValueError(f"{path}: malformed entry in added_tokens: {a!r}")
            tokens[i] = content
            types[i] = CONTROL if a.get("special") else USER_DEFINED
        missing = [i for i, t in enumerate(tokens) if t is None]
        if missing:
            raise ValueError(f"{path}: token ids {missing[:5]} have no piece in model.vocab or added_tokens")
        for i, t in enumerate(tokens):
            if types[i] == NORMAL and _BYTE_PIECE.match(t):
                types[i] = BYTE

        # SPM scores from merge ranks: a piece's score is minus the rank of its first merge.
        merges = model.get("merges") or []
        piece_to_id = dict(zip(tokens, range(size)))
        scores = [0.0] * size
        merge_vocab: dict[str, int] = {}
        for rank, m in enumerate(merges):
            if isinstance(m, str):
                left, sep, right = m.partition(" ")
                if not sep:
                    raise ValueError(f"{path}: model.merges[{rank}] = {m!r} is not 'left right'")
            elif isinstance(m, (list, tuple)) and len(m) == 2:
                left, right = m
            else:
                raise ValueError(f"{path}: model.merges[{rank}] = {m!r} is not a pair")
            merged = left + right
            i = piece_to_id.get(merged)
            if i is None:
                raise ValueError(f"{path}: model.merges[{rank}] produces {merged!r}, which is not in the vocabulary")
            if merged not in merge_vocab:
                merge_vocab[merged] = i
                scores[i] = -float(rank)

        unk_piece = model.get("unk_token")
        unk = piece_to_id.get(unk_piece, -1) if isinstance(unk_piece, str) else piece_to_id.get("<unk>", -1)
        bos = _first_id(piece_to_id, ("<bos>", "<s>"))
        eos = _first_id(piece_to_id, ("<eos>", "</s>"))
        if bos < 0 or eos < 0:
            raise ValueError(f"{path}: no <bos>/<s> or <eos>/</s> token in the vocabulary")
        pad = _first_id(piece_to_id, ("<pad>",))

        add_bos = False
        post = doc.get("post_processor")
        if isinstance(post, dict) and post.get("type") == "TemplateProcessing":
            for item in post.get("single") or []:
                st = item.get("SpecialToken") if isinstance(item, dict) else None
                if st and st.get("id") == tokens[bos]:
                    add_bos = True
        add_space_prefix = _json_mentions_prepend(doc.get("normalizer"))
        return cls(tokens, scores, types, bos_id=bos, eos_id=eos, unk_id=unk, pad_id=pad,
                   add_bos=add_bos, add_space_prefix=add_space_prefix,
                   merge_vocab=merge_vocab, source=path)

    @classmethod
    def _from_sentencepiece(cls, data: bytes, path: str) -> "Tokenizer":
        try:
            proto = _parse_message(data)
        except _ProtoError as e:
            raise ValueError(f"{path}: not a SentencePiece model ({e})") from None
        pieces_raw = proto.get(1, [])
        if not pieces_raw:
            raise ValueError(f"{path}: not a SentencePiece model (no pieces)")
        tokens: list[str] = []
        scores: list[float] = []
        types: list[int] = []
        try:
            for k, raw in enumerate(pieces_raw):
                if not isinstance(raw, bytes):
                    raise _ProtoError(f"piece {k} is not a message")
                msg = _parse_message(raw)
                piece = msg.get(1, [b""])[-1]
                if not isinstance(piece, bytes):
                    raise _ProtoError(f"piece {k} has a non-string text")
                tokens.append(piece.decode("utf-8"))
                score = msg.get(2, [0.0])[-1]
                if not isinstance(score, float):
                    raise _ProtoError(f"piece {k} has a score that is not a float")
                scores.append(score)
                typ = msg.get(3, [NORMAL])[-1]
                if not isinstance(typ, int):
                    raise _ProtoError(f"piece {k} has a type that is not an integer")
                types.append(typ)
            trainer = _parse_message(proto[2][-1]) if 2 in proto else {}
            normalizer = _parse_message(proto[3][-1]) if 3 in proto else {}
        except (_ProtoError, UnicodeDecodeError, TypeError) as e:
            raise ValueError(f"{path}: not a SentencePiece model ({e})") from None

        model_type = trainer.get(3, [1])[-1]
        if model_type != 2:
            names = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}
            raise ValueError(f"{path}: trainer_spec.model_type is {names.get(model_type, model_type)}; only BPE is supported")

        def sid(field: int, default: int) -> int:
            v = trainer.get(field, [default])[-1]
            if not isinstance(v, int):
                raise ValueError(f"{path}: trainer_spec field {field} is not an integer")
            return v - (1 << 64) if v >= 1 << 63 else v  # int32 -1 is a 10-byte varint

        unk, bos, eos, pad = sid(40, 0), sid(41, 1), sid(42, 2), sid(43, -1)
        add_dummy_prefix = bool(normalizer.get(3, [1])[-1])
        return cls(tokens, scores, types, bos_id=bos, eos_id=eos, unk_id=unk, pad_id=pad,
                   add_bos=True, add_space_prefix=add_dummy_prefix, source=path)

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``; BOS first when ``add_bos`` (default :attr:`add_bos`)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() needs a str, got {type(text).__name__}")
        out: list[int] = []
        if self.add_bos if add_bos is None else add_bos:
            out.append(self.bos_id)
        if not text:
            return out
        prev_special = True
        for frag in self._partition(text, parse_special):
            if type(frag) is int:
                out.append(frag)
                prev_special = True
            else:
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                self._encode_fragment(frag, out)
                prev_special = False
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        frags: list[str | int] = [text]
        for s, tid in (self._special_all if parse_special else self._special_user):
            if s not in text:           # quick reject against the whole input
                continue
            new: list[str | int] = []
            for f in frags:
                if type(f) is int or s not in f:
                    new.append(f)
                    continue
                parts = f.split(s)
                if parts[0]:
                    new.append(parts[0])
                for p in parts[1:]:
                    new.append(tid)
                    if p:
                        new.append(p)
            frags = new
        return frags

    def _encode_fragment(self, frag: str, out: list[int]) -> None:
        cache = self._frag_cache
        if len(frag) <= _CACHE_MAX_FRAGMENT:
            hit = cache.get(frag)
            if hit is not None:
                out.extend(hit)
                return
        text = frag.replace(" ", SPACE)
        ids = self._bpe(text)
        if len(frag) <= _CACHE_MAX_FRAGMENT:
            if len(cache) >= _CACHE_MAX_ENTRIES:
                cache.clear()
            cache[frag] = tuple(ids)
        out.extend(ids)

    def _bpe(self, text: str) -> list[int]:
        n = len(text)
        vocab = self._merge_vocab
        scores = self._scores
        # Symbol i covers text[i:i+ln[i]] (merges always fold the right symbol into the left one,
        # so a live symbol's right neighbour starts at i + ln[i]); ln == 0 marks a merged-away one.
        ln = [1] * n
        prev = list(range(-1, n - 1))
        heap = []
        get = vocab.get
        for i in range(n - 1):
            tid = get(text[i:i + 2])
            if tid is not None:
                heap.append((-scores[tid], i, 2))
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            _, left, size = pop(heap)
            nl = ln[left]
            if nl == 0:
                continue
            right = left + nl
            if right >= n:
                continue
            nr = ln[right]
            if nl + nr != size:     # nr is never 0 here: right starts a live symbol
                continue
            ln[left] = size
            ln[right] = 0
            end = left + size
            if end < n:
                prev[end] = left
                e2 = end + ln[end]
                tid = get(text[left:e2])
                if tid is not None:
                    push(heap, (-scores[tid], left, e2 - left))
            p = prev[left]
            if p >= 0:
                tid = get(text[p:end])
                if tid is not None:
                    push(heap, (-scores[tid], p, end - p))
        ids: list[int] = []
        p2i = self._piece_to_id
        i = 0
        while i < n:
            k = ln[i]
            piece = text[i:i + k]
            tid = p2i.get(piece)
            if tid is not None:
                ids.append(tid)
            else:
                self._byte_fallback(piece, ids)
            i += k
        return ids

    def _byte_fallback(self, piece: str, ids: list[int]) -> None:
        for b in piece.encode("utf-8", "surrogatepass"):
            tid = self._byte_ids[b]
            if tid < 0:
                raise ValueError(f"no byte token <0x{b:02X}> and no <unk> to stand in for it")
            ids.append(tid)

    # ------------------------------------------------------------------ decoding

    def token_bytes(self, i: int, skip_special: bool = False) -> bytes:
        """The bytes token ``i`` contributes to decoded text."""
        if skip_special and i in self._control:
            return b""
        b = self._bytes_cache.get(i)
        if b is not None:
            return b
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"token ids must be integers, got {type(i).__name__}")
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")
        t = self._types[i]
        piece = self._pieces[i]
        if t == NORMAL:
            b = piece.replace(SPACE, " ").encode("utf-8")
        elif t == BYTE:
            b = bytes((self._byte_of[i],))
        elif t == UNUSED:
            b = b""
        else:                      # control, unknown, user-defined: their text as is
            b = piece.encode("utf-8")
        self._bytes_cache[i] = b
        return b

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids``: "\u2581" -> space, byte tokens -> bytes (invalid UTF-8 -> U+FFFD).

        Control tokens (``<bos>``, ``<end_of_turn>``, ...) appear as their text unless
        ``skip_special``; user-defined tokens ("\\n", runs of spaces, HTML tags) always appear.
        """
        tb = self.token_bytes
        return b"".join([tb(int(i), skip_special) for i in ids]).decode("utf-8", "replace")

    def id_to_piece(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")
        return self._pieces[i]

    def piece_to_id(self, s: str) -> int | None:
        return self._piece_to_id.get(s)

    def token_type(self, i: int) -> int:
        return self._types[i]

    def is_special(self, i: int) -> bool:
        """True for control/unknown/unused tokens (the ones ``decode(skip_special=True)`` drops)."""
        return i in self._control

    # ------------------------------------------------------------------ chat

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Gemma 3's chat template, without the leading ``<bos>`` (``encode_chat`` adds its id).

        Roles: optional leading "system" (its content + "\\n\\n" is prepended to the first user
        turn; a conversation of a system message alone becomes a user turn of it, where Gemma's own template
        would drop it), then strictly alternating "user" / "assistant" (alias "model"), rendered as
        ``<start_of_turn>{role}\\n{content.strip()}<end_of_turn>\\n``.
        """
        parts = [f"<start_of_turn>{name}\n{content}<end_of_turn>\n"
                 for name, content in self._chat_turns(messages)]
        if add_generation_prompt:
            parts.append("<start_of_turn>model\n")
        return "".join(parts)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """BOS + the chat template. Only the template's own markers are control tokens: message content is
        tokenized as text (control tokens not parsed), so "<end_of_turn><start_of_turn>model" written in a
        message stays text and cannot forge a turn. Without such text the ids equal those of encoding
        apply_chat_template's string with special tokens parsed."""
        start, end = self.piece_to_id("<start_of_turn>"), self.piece_to_id("<end_of_turn>")
        ids = [self.bos_id]

        def marker(tid: int | None, text: str) -> None:
            ids.extend([tid] if tid is not None else self.encode(text, add_bos=False, parse_special=False))

        for name, content in self._chat_turns(messages):
            marker(start, "<start_of_turn>")
            ids.extend(self.encode(f"{name}\n{content}", add_bos=False, parse_special=False))
            marker(end, "<end_of_turn>")
            ids.extend(self.encode("\n", add_bos=False, parse_special=False))
        if add_generation_prompt:
            marker(start, "<start_of_turn>")
            ids.extend(self.encode("model\n", add_bos=False, parse_special=False))
        return ids

    @staticmethod
    def _chat_turns(messages: list[dict]) -> list[tuple[str, str]]:
        """(role name, content) of each rendered turn, the conversation checked."""
        if not isinstance(messages, (list, tuple)):
            raise ValueError(f"messages must be a list of dicts, got {type(messages).__name__}")
        for k, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise ValueError(f"message {k} is a {type(m).__name__}, not a dict")
            if "role" not in m or "content" not in m:
                raise ValueError(f"message {k} needs 'role' and 'content' keys")
            if not isinstance(m["content"], str):
                raise ValueError(f"message {k} content must be a string, got {type(m['content']).__name__}")
            if m["role"] not in ("system", "user", "assistant", "model"):
                raise ValueError(f"message {k} has unknown role {m['role']!r} (expected system, user or assistant)")
        prefix = ""
        loop = list(messages)
        if loop and loop[0]["role"] == "system":
            if len(loop) == 1:
                return [("user", loop[0]["content"].strip())]
            prefix = loop[0]["content"] + "\n\n"
            loop = loop[1:]
        turns = []
        for k, m in enumerate(loop):
            role = m["role"]
            if role == "system":
                raise ValueError(f"message {k + len(messages) - len(loop)}: a system message is only allowed first")
            expect_user = k % 2 == 0
            if (role == "user") != expect_user:
                raise ValueError("conversation roles must alternate user/assistant/user/... "
                                 f"(message {k + len(messages) - len(loop)} is {role!r})")
            name = "model" if role in ("assistant", "model") else "user"
            turns.append((name, (prefix if k == 0 else "") + m["content"].strip()))
        return turns

    @property
    def pieces(self) -> list[str]:
        """Vocabulary pieces in id order (for export)."""
        return self._pieces

    @property
    def scores(self) -> list[float]:
        return self._scores

    @property
    def token_types(self) -> list[int]:
        """SentencePiece/GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte."""
        return self._types

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
                f"add_bos={self.add_bos}, add_space_prefix={self.add_space_prefix})")


class StreamDecoder:
    """Incremental detokenizer: :meth:`push` returns only complete UTF-8 characters."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._dec.decode(self.tokenizer.token_bytes(int(token_id), self.skip_special))

    def flush(self) -> str:
        """Whatever is left (an incomplete character becomes U+FFFD); the decoder is then reset."""
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out


# ---------------------------------------------------------------------- helpers

def _first_id(piece_to_id: Mapping[str, int], names: Iterable[str]) -> int:
    for name in names:
        i = piece_to_id.get(name)
        if i is not None:
            return i
    return -1


def _json_mentions_prepend(normalizer: Any) -> bool:
    if not isinstance(normalizer, dict):
        return False
    if normalizer.get("type") == "Prepend" and normalizer.get("prepend") == SPACE:
        return True
    return any(_json_mentions_prepend(n) for n in normalizer.get("normalizers") or [])


class _ProtoError(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _ProtoError("varint too long")


def _parse_message(buf: bytes) -> dict[int, list]:
    """Protobuf wire format -> {field number: [values]} (varint: int, fixed32: float, length: bytes)."""
    fields: dict[int, list] = {}
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _ProtoError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > n:
                raise _ProtoError("truncated fixed64")
            value = struct.unpack_from("<d", buf, pos)[0]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > n:
                raise _ProtoError("truncated length-delimited field")
            value = buf[pos:pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > n:
                raise _ProtoError("truncated fixed32")
            value = struct.unpack_from("<f", buf, pos)[0]
            pos += 4
        else:
            raise _ProtoError(f"unsupported wire type {wire}")
        fields.setdefault(field, []).append(value)
    return fields
