"""Verifiable instructions added to chat examples: the prompt gains a constraint, the response is edited so it holds.

`augment(prompt, response, rng)` picks one or more compatible constraints, edits the response deterministically
so that each one holds (splits it into bullets, sections or paragraphs, removes commas, adds a <<title>>, a
postscript, an end phrase, quotes, a JSON wrapper, changes case, ...), chooses the numbers a counting constraint
names from the edited response itself (words, sentences, keyword and letter counts), writes the instructions in
one of several wordings of our own, and keeps the example only if the project's IFEval checkers
(`tinygemma.eval.ifeval_checks`) pass every constraint on the final response. IFEval's own prompts are never read
here; the wordings below are ours.

Kinds covered (IFEval instruction ids, plus two of our own under "tinygemma:"): see `describe()`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field

from ..eval import ifeval_checks as ifc

LESS_THAN, AT_LEAST = ifc.LESS_THAN, ifc.AT_LEAST


@dataclass
class Augmented:
    prompt: str                     # the original prompt with the instruction texts added
    response: str                   # the edited response; every constraint holds on it
    instruction_ids: list[str]
    kwargs: list[dict]              # one per id, as the checker takes them
    instructions: list[str] = field(default_factory=list)   # the instruction texts added, one per id


# ---- our own kinds beyond IFEval ------------------------------------------------------------------------------

def _first_word_check(response, *, first_word):
    words = re.findall(r"\w+", response)
    return bool(words) and words[0].lower() == first_word.lower()


def _exact_sentences_check(response, *, num_sentences):
    return ifc.count_sentences(response) == num_sentences


EXTRA_CHECKS = {
    "tinygemma:first_word": _first_word_check,
    "tinygemma:exact_sentences": _exact_sentences_check,
}


def check(instruction_id: str, response: str, kwargs: dict) -> bool:
    """Whether `response` follows one instruction: the IFEval checker, or ours for the "tinygemma:" kinds."""
    if instruction_id in EXTRA_CHECKS:
        return bool(response.strip()) and EXTRA_CHECKS[instruction_id](response, **kwargs)
    return ifc.check(instruction_id, response, kwargs)


# ---- text helpers ---------------------------------------------------------------------------------------------

STOPWORDS = frozenset("""
a about above after again against all also although am an and any are as at be because been before being below
between both but by can could did do does doing down during each else even ever every few for from further had
has have having he her here hers him his how however i if in into is it its itself just like made make many may
me might more most much must my no nor not now of off often on once one only or other our ours out over own
per perhaps quite rather really same she should so some such than that the their theirs them then there these
they this those through thus to too under until up upon us use used using very was we were what when where
whether which while who whom whose why will with within without would yes yet you your yours also sure
certainly here okay well still each another example thing things way ways lot lots get got take
""".split())

_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022+]|\d+[.)])\s+(\S.*?)\s*$")
_WORD = re.compile(r"[A-Za-z]+")


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _groups(items: list[str], n: int) -> list[list[str]]:
    """`items` cut into n contiguous groups of near-equal size (n <= len(items))."""
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def _content_words(text: str) -> list[str]:
    """Distinct lowercase alphabetic words of 4+ letters that are not stop words, in order of appearance."""
    seen: dict[str, None] = {}
    for w in _WORD.findall(text):
        w = w.lower()
        if len(w) >= 4 and w not in STOPWORDS:
            seen.setdefault(w, None)
    return list(seen)


def _round_down(x: int, rng: random.Random) -> int:
    """A round number <= x (x >= 1), near x."""
    step = 1 if x < 10 else 5 if x < 60 else 10 if x < 200 else 25 if x < 600 else 50
    options = [m for m in range(step, x + 1, step)][-3:]
    return rng.choice(options) if options else x


def _round_up(x: int, rng: random.Random) -> int:
    """A round number > x, near x."""
    step = 1 if x < 10 else 5 if x < 60 else 10 if x < 200 else 25 if x < 600 else 50
    first = (x // step + 1) * step
    return first + step * rng.randint(0, 2)


def _is_english_like(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) / len(letters) > 0.98


_PLURALS = ("words", "times", "parts", "placeholders", "sentences", "passages", "phrases", "paragraphs", "points",
            "items", "sections", "bullets")


def _singular(text: str) -> str:
    """"at least 1 words" -> "at least 1 word"."""
    return re.sub(r"(?<![\d.,])\b1 ((?:[A-Za-z-]+ ){0,2}?)(%s)\b" % "|".join(_PLURALS),
                  lambda m: "1 " + m.group(1) + m.group(2)[:-1], text)


def _quoted_list(words: list[str]) -> str:
    quoted = [f'"{w}"' for w in words]
    return quoted[0] if len(quoted) == 1 else " and ".join([", ".join(quoted[:-1]), quoted[-1]])


ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]


# ---- comma removal ----------------------------------------------------------------------------------------------

_CONJ = re.compile(r"(?:and|or|but|so|yet|nor|which|who|whom|whose|while|because|although|though|then|too|including"
                   r"|such as|like|where|when|unless|since|as well as|especially|respectively|etc)\b", re.I)
_ASIDE = re.compile(r",\s*((?:such as|including|especially|for example|for instance|e\.g\.|i\.e\.|like)\b"
                    r"[^,.;:!?\n]{1,60}),\s*(?=[a-z])")
_INTRO = frozenset("""in on at for after before when whenever while if although though because since as once
unless until during with without by from to yes no however therefore moreover furthermore additionally also
first second third finally next then now today overall instead otherwise meanwhile still besides indeed sure
well ok okay so thus hence
likewise similarly unfortunately fortunately ultimately generally typically usually often sometimes of according
given despite unlike like after upon inside outside within across throughout behind beyond between among around near
under over above below through along toward towards""".split())
_CLAUSE = re.compile(r"(?:it|this|that|they|we|you|he|she|there|these|those|i|my|our|its|their|his|her)\b", re.I)


def remove_commas(text: str) -> str:
    """`text` without commas, rewritten so that it still reads: "1,000" -> "1000"; "x, such as y, z" -> "x (such
    as y) z"; "a, b, and c" -> "a and b and c"; ", but" -> " but"; a short opening phrase loses its comma; two
    clauses get ";" and an aside a dash."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = _ASIDE.sub(r" (\1) ", text)
    out_lines = []
    for line in text.split("\n"):
        pieces = re.split(r",\s*", line)
        result = pieces[0]
        for i, piece in enumerate(pieces[1:], 1):
            if not piece:
                continue
            sentence_left = re.split(r"(?<=[.;:!?])\s", result)[-1]
            left_words = len(sentence_left.split())
            head = re.split(r"(?<=[.;:!?])\s", piece)[0]
            right_words = len(head.split())
            after = pieces[i + 1] if i + 1 < len(pieces) else None
            list_context = (after is not None and (len(after.split()) <= 4 or re.match(r"(and|or)\b", after))
                            or re.search(r"\b(and|or)\b", piece))
            first = sentence_left.split()[0].lower().strip("\"'(*") if sentence_left.split() else ""
            intro = (first in _INTRO or first.endswith("ly")) and left_words <= 8
            last_clause = re.split(r"\b(?:and|but|or|so)\b", sentence_left)[-1]
            if _CONJ.match(piece):
                result += " " + piece                     # "x, and y" -> "x and y"
            elif (intro or left_words <= 2 and not list_context and not re.match(r"(the|a|an)\b", piece, re.I)
                  ) and right_words > 1:
                result += " " + piece                     # "In 2020, the firm" -> "In 2020 the firm"
            elif (list_context and head == piece and right_words <= 10 and not _CLAUSE.match(piece)
                  and not re.match(r"(the|a|an)\b", piece, re.I)):
                result += " and " + piece                 # "a, b, and c" -> "a and b and c"
            elif _CLAUSE.match(piece) and (left_words <= 2 or re.search(
                    r"\b(once|if|when|whenever|because|although|though|since|while|after|before|unless|until)\b",
                    last_clause, re.I)):
                result += " " + piece                     # "Once it is set, it lasts" -> "Once it is set it lasts"
            elif _CLAUSE.match(piece):
                result += "; " + piece                    # two clauses
            else:
                result += " \u2014 " + piece                # an aside
        out_lines.append(result)
    return "\n".join(out_lines).replace(",", "")


# ---- titles -----------------------------------------------------------------------------------------------------

_LEAD = re.compile(
    r"^(?:(?:please|kindly|hey|hi|hello|can you|could you|would you|will you|i need you to|i want you to|i would like"
    r" you to|help me|i need|i want)\s*,?\s*)+", re.I)
_VERB = re.compile(
    r"^(?:write|compose|draft|create|generate|give me|give|provide|produce|list|name|explain|describe|summari[sz]e|"
    r"tell me about|tell me|discuss|outline|suggest|share|make|design|plan|compare|define|translate|rewrite|"
    r"brainstorm|come up with|think of|identify|classify|find|prepare|develop|propose|recommend|what is|what are|"
    r"what's|who is|who was|who are|how (?:do|would|will|can) you (?:describe|explain)|can you)\b\s*"
    r"(?:me\s+|us\s+)?(?:an?\s+|some\s+|the\s+)?", re.I)
_SMALL = frozenset("a an the of in on and or for to with at by from as vs".split())


def make_title(prompt: str, response: str) -> str | None:
    """A short title from the prompt's key words ("Explain how tides work." -> "How Tides Work")."""
    sentences = [x.strip() for x in re.split(r"[.?!\n:;]", prompt) if x.strip()]
    setup = re.compile(r"(you are|you're|imagine|pretend|act as|as an?|suppose|assume|role-?play|take on)\b", re.I)
    first = next((x for x in sentences if not setup.match(x)), sentences[0] if sentences else "")
    text = _VERB.sub("", _LEAD.sub("", first.strip())).strip()
    words = re.findall(r"[\w'&-]+", text)
    if not (1 <= len(words) <= 10):
        words = [w for w in re.findall(r"[\w'&-]+", first) if w.lower() not in STOPWORDS][:5]
    words = words[:7]
    while words and words[-1].lower() in _SMALL:
        words.pop()
    if not words or not any(c.isalpha() for w in words for c in w):
        words = [w.capitalize() for w in _content_words(response)[:3]]
    if not words:
        return None
    titled = []
    for i, w in enumerate(words):
        if w != w.lower():
            titled.append(w)                             # keep "NASA", "iPhone", "Paris"
        elif i and w in _SMALL:
            titled.append(w)
        else:
            titled.append(w[0].upper() + w[1:])
    return " ".join(titled)


# ---- the state an example goes through --------------------------------------------------------------------------

class _Ctx:
    """The original pair and facts about it, computed once."""

    def __init__(self, prompt: str, response: str):
        self.prompt, self.response = prompt, response
        self.has_code = "```" in response or "```" in prompt
        self.english = _is_english_like(response)
        self._sentences = None
        self._language = "?"

    @property
    def sentences(self) -> list[str]:
        if self._sentences is None:
            self._sentences = ifc.split_sentences(self.response)
        return self._sentences

    @property
    def language(self) -> str | None:
        if self._language == "?":
            self._language = ifc.detect_language(self.response)
        return self._language


class _State:
    def __init__(self, text: str):
        self.text = text
        self.data: dict = {}


class _Kind:
    """One constraint kind: when it applies, how it edits the response, how its kwargs are read off the result,
    and how its instruction is worded."""

    id = ""
    stage = 9      # order of the edits: 0 edits, 1 layout, 2 inline, 3/4 prepend, 5-7 append, 8 case, 9 wrap, 10 counts
    conflicts: tuple = ()
    weight = 1.0

    def ok(self, ctx: _Ctx, chosen: list[str], rng: random.Random) -> bool:
        return True

    def apply(self, st: _State, ctx: _Ctx, rng: random.Random) -> bool:
        return True

    def measure(self, final: str, st: _State, ctx: _Ctx, rng: random.Random) -> dict | None:
        return {}

    def phrase(self, kw: dict, rng: random.Random) -> str:
        raise NotImplementedError


def _pick(rng: random.Random, options: list[str], **fmt) -> str:
    return rng.choice(options).format(**fmt)


# Layouts rewrite the whole body; only one per example.
_LAYOUTS = ("detectable_format:number_bullet_lists", "length_constraints:number_paragraphs",
            "length_constraints:nth_paragraph_first_word", "detectable_format:multiple_sections",
            "detectable_format:json_format", "combination:two_responses", "tinygemma:exact_sentences")
_CASES = ("change_case:english_lowercase", "change_case:english_capital", "change_case:capital_word_frequency")


class _Lowercase(_Kind):
    id, stage = "change_case:english_lowercase", 8
    conflicts = _CASES + ("detectable_format:multiple_sections", "detectable_format:json_format",
                          "detectable_format:constrained_response")

    def ok(self, ctx, chosen, rng):
        return ctx.english and not ctx.has_code

    def apply(self, st, ctx, rng):
        st.text = st.text.lower()
        return True

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Write your whole reply in lowercase letters, with no capitals at all.",
            "Use only lowercase letters throughout your answer.",
            "Please keep every letter of your response lowercase.",
            "Do not use a single uppercase character anywhere in the reply.",
            "Your reply must be entirely in lower case English.",
            "No capital letters please: the full answer should be lowercase.",
        ])


class _Capital(_Kind):
    id, stage = "change_case:english_capital", 8
    conflicts = _CASES + ("detectable_format:multiple_sections", "detectable_format:json_format",
                          "detectable_format:constrained_response", "language:response_language")

    def ok(self, ctx, chosen, rng):
        return ctx.english and not ctx.has_code

    def apply(self, st, ctx, rng):
        st.text = st.text.upper()
        return True

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Write the entire answer in capital letters.",
            "Respond using only uppercase letters.",
            "Please put your whole reply in ALL CAPS.",
            "Every letter of your response must be uppercase.",
            "Type your answer completely in upper case English.",
        ])


class _CapitalWords(_Kind):
    id, stage = "change_case:capital_word_frequency", 8
    conflicts = _CASES

    def ok(self, ctx, chosen, rng):
        return ctx.english and not ctx.has_code

    def apply(self, st, ctx, rng):
        st.data["cap_relation"] = AT_LEAST if rng.random() < 0.6 else LESS_THAN
        if st.data["cap_relation"] == AT_LEAST:       # emphasise a few key words in capitals
            in_prompt = set(_content_words(ctx.prompt))
            words = [w for w in _content_words(st.text) if len(w) >= 5]
            words = [w for w in words if w in in_prompt] or words
            if not words:
                st.data["cap_relation"] = LESS_THAN
                return True
            for w in rng.sample(words, min(len(words), rng.randint(1, 3))):
                st.text = re.sub(r"(?<![\w<\[*])" + w + r"\b", w.upper(), st.text, count=1)
        return True

    def measure(self, final, st, ctx, rng):
        count = sum(1 for word in ifc.word_tokens(final) if word.isupper())
        if st.data["cap_relation"] == AT_LEAST:
            if count < 1:
                return None
            n = rng.randint(max(1, count - 2), count)
        else:
            n = count + rng.randint(1, 4)
        return {"capital_frequency": n, "capital_relation": st.data["cap_relation"]}

    def phrase(self, kw, rng):
        n = kw["capital_frequency"]
        if kw["capital_relation"] == AT_LEAST:
            return _pick(rng, [
                "Use at least {n} words written entirely in capital letters.",
                "Include {n} or more fully capitalized words for emphasis.",
                "Make sure that at least {n} words appear in ALL CAPS.",
                "Stress key terms by writing at least {n} words in full capitals.",
            ], n=n)
        return _pick(rng, [
            "Use fewer than {n} words written in all capital letters.",
            "Keep the number of ALL-CAPS words below {n}.",
            "Words in full capitals should appear less than {n} times.",
            "Do not write {n} or more words entirely in uppercase.",
        ], n=n)


class _NoComma(_Kind):
    id, stage = "punctuation:no_comma", 0

    def ok(self, ctx, chosen, rng):
        return not ctx.has_code and ("combination:repeat_prompt" not in chosen or "," not in ctx.prompt)

    def apply(self, st, ctx, rng):
        st.text = remove_commas(st.text)
        return True

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Do not use any commas in your reply.",
            "Avoid commas entirely.",
            "Write your answer without a single comma.",
            "Commas are not allowed in your response.",
            "Please refrain from using the comma character.",
            "Leave out all commas.",
        ])


class _Title(_Kind):
    id, stage = "detectable_format:title", 3
    conflicts = ("detectable_format:json_format", "combination:two_responses", "tinygemma:exact_sentences",
                 "tinygemma:first_word")

    def apply(self, st, ctx, rng):
        t = make_title(ctx.prompt, ctx.response)
        if not t:
            return False
        t = t.replace("<", "").replace(">", "").replace(",", "")
        st.text = f"<<{t}>>" + rng.choice(["\n\n", "\n"]) + st.text
        return True

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Give your answer a title wrapped in double angle brackets, like <<my title>>.",
            "Start with a title enclosed in << and >>, for example <<A Short Title>>.",
            "Include a title surrounded by double angle brackets (<<title>>).",
            "Put a heading at the top in the form <<Heading>>.",
            "Your reply needs a title, written between << and >>.",
        ])


class _Bullets(_Kind):
    id, stage = "detectable_format:number_bullet_lists", 1
    conflicts = _LAYOUTS + ("detectable_format:number_highlighted_sections",)

    def ok(self, ctx, chosen, rng):
        return not ctx.has_code and (len(ctx.sentences) >= 2 or "\n" in ctx.response)

    def apply(self, st, ctx, rng):
        lines = st.text.split("\n")
        if sum(1 for line in lines if _LIST_LINE.match(line)) >= 2:
            out = []
            for line in lines:
                m = _LIST_LINE.match(line)
                out.append("* " + m.group(1) if m else line.lstrip("-*+ \u2022"))
            st.text = "\n".join(out)
            return True
        paras = _paragraphs(st.text)
        if 2 <= len(paras) <= 8 and all("\n" not in p for p in paras):
            units, intro = paras, None
        elif len(paras) == 1 and 2 <= len(lines) <= 8:
            units, intro = [line.strip() for line in lines if line.strip()], None
        else:
            units = ifc.split_sentences(" ".join(st.text.split()))
            intro = units.pop(0) if len(units) >= 4 and rng.random() < 0.4 else None
            if len(units) < 2:
                return False
            n = rng.randint(2, min(6, len(units)))
            units = [" ".join(g) for g in _groups(units, n)]
        body = "\n".join("* " + u.lstrip("-*+ \u2022") for u in units)
        st.text = (intro + "\n\n" + body) if intro else body
        return True

    def measure(self, final, st, ctx, rng):
        stars = re.findall(r"^\s*\*[^\*].*$", final, flags=re.MULTILINE)
        dashes = re.findall(r"^\s*-.*$", final, flags=re.MULTILINE)
        n = len(stars) + len(dashes)
        return {"num_bullets": n} if n >= 2 else None

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Format the answer as exactly {n} bullet points using markdown asterisks, like:\n* first point\n"
            "* second point",
            "Give precisely {n} bullet points, each on its own line starting with \"* \".",
            "Your reply should contain exactly {n} markdown bullets (lines that begin with an asterisk and a space).",
            "Use {n} bullet points, no more and no fewer, and mark each one with *.",
            "Answer with a list of exactly {n} items written as markdown bullets (* item).",
        ], n=kw["num_bullets"])


def _blocks(text: str, ctx: _Ctx, rng: random.Random, lo: int, hi: int) -> list[str] | None:
    """The response as lo..hi blocks: its own paragraphs (adjacent ones merged if too many), else groups of its
    sentences."""
    paras = _paragraphs(text)
    if len(paras) >= 2:
        if len(paras) > hi:
            paras = ["\n".join(g) for g in _groups(paras, hi)]
        return paras
    if "\n" in paras[0]:
        units = [line for line in paras[0].split("\n") if line.strip()]
        joiner = "\n"
    else:
        units, joiner = ifc.split_sentences(paras[0]), " "
    if len(units) < lo:
        return None
    n = rng.randint(lo, min(hi, len(units)))
    return [joiner.join(g) for g in _groups(units, n)]


class _Paragraphs(_Kind):
    id, stage = "length_constraints:number_paragraphs", 1
    conflicts = _LAYOUTS

    def ok(self, ctx, chosen, rng):
        return not ctx.has_code and "***" not in ctx.response and (len(ctx.sentences) >= 2 or "\n" in ctx.response)

    def apply(self, st, ctx, rng):
        blocks = _blocks(st.text, ctx, rng, 2, 6)
        if not blocks:
            return False
        st.text = rng.choice(["\n\n***\n\n", "\n***\n"]).join(blocks)
        return True

    def measure(self, final, st, ctx, rng):
        paragraphs = re.split(r"\s?\*\*\*\s?", final)
        count = len(paragraphs)
        for i, p in enumerate(paragraphs):
            if not p.strip():
                if i in (0, len(paragraphs) - 1):
                    count -= 1
                else:
                    return None
        return {"num_paragraphs": count} if count >= 2 else None

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Write {n} paragraphs, separated from each other by the markdown divider ***.",
            "Your answer should have exactly {n} paragraphs, with a line holding only *** between paragraphs.",
            "Use {n} paragraphs and divide them with ***.",
            "Structure the reply as {n} paragraphs; put the separator *** between consecutive ones.",
        ], n=kw["num_paragraphs"])


class _NthParagraph(_Kind):
    id, stage = "length_constraints:nth_paragraph_first_word", 1
    conflicts = _LAYOUTS

    def ok(self, ctx, chosen, rng):
        return not ctx.has_code and (len(ctx.sentences) >= 2 or "\n" in ctx.response)

    def apply(self, st, ctx, rng):
        blocks = _blocks(st.text, ctx, rng, 2, 6)
        if not blocks:
            return False
        st.text = "\n\n".join(blocks)
        return True

    def measure(self, final, st, ctx, rng):
        paragraphs = re.split(r"\n\n", final)
        count = sum(1 for p in paragraphs if p.strip())
        if count < 2:
            return None
        options = []
        for n in range(1, count + 1):
            p = paragraphs[n - 1].strip()
            if not p:
                continue
            word = p.split()[0].strip().lstrip("'").lstrip('"')
            found = ""
            for letter in word:
                if letter in ".,?!'\"":
                    break
                found += letter.lower()
            if found.isalpha() and found.isascii():
                options.append((n, found))
        if not options:
            return None
        later = [o for o in options if o[0] > 1]
        n, word = rng.choice(later if later and rng.random() < 0.8 else options)
        return {"num_paragraphs": count, "nth_paragraph": n, "first_word": word}

    def phrase(self, kw, rng):
        n, k, w = kw["num_paragraphs"], kw["nth_paragraph"], kw["first_word"]
        return _pick(rng, [
            "Write exactly {n} paragraphs separated by blank lines (two newlines). The {o} paragraph has to begin "
            "with the word \"{w}\".",
            "Answer in {n} paragraphs with an empty line between consecutive ones, and start paragraph {k} with the "
            "word {w}.",
            "Use {n} paragraphs separated by two line breaks, and make \"{w}\" the opening word of paragraph number "
            "{k}.",
            "The reply should be {n} paragraphs long, one blank line between each pair; its {o} paragraph must open "
            "with \"{w}\".",
        ], n=n, k=k, w=w, o=ORDINALS[k - 1] if k <= len(ORDINALS) else f"{k}th")


class _Sections(_Kind):
    id, stage = "detectable_format:multiple_sections", 1
    conflicts = _LAYOUTS + _CASES

    def ok(self, ctx, chosen, rng):
        return not ctx.has_code and (len(ctx.sentences) >= 2 or "\n" in ctx.response)

    def apply(self, st, ctx, rng):
        blocks = _blocks(st.text, ctx, rng, 2, 5)
        if not blocks:
            return False
        sp = rng.choice(["Section", "SECTION", "Part", "PART", "Section", "SECTION"])
        colon = rng.choice(["", ":"])
        st.text = "\n\n".join(f"{sp} {i}{colon}\n{b}" for i, b in enumerate(blocks, 1))
        st.data["sections"] = (sp, len(blocks))
        return True

    def measure(self, final, st, ctx, rng):
        sp, n = st.data["sections"]
        return {"section_spliter": sp, "num_sections": n}

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Split your answer into {n} sections, labelling each one \"{sp} X\" where X is its number.",
            "Organize the reply as {n} parts. Begin each part with {sp} followed by its number, e.g. {sp} 1.",
            "Your response needs {n} sections; mark the start of each with {sp} 1, {sp} 2 and so on.",
            "Divide what you write into {n} numbered sections headed \"{sp} 1\", \"{sp} 2\", etc.",
        ], n=kw["num_sections"], sp=kw["section_spliter"])


class _Json(_Kind):
    id, stage = "detectable_format:json_format", 9
    conflicts = _LAYOUTS + _CASES + (
        "detectable_format:title", "detectable_content:postscript", "startend:end_checker", "startend:quotation",
        "combination:repeat_prompt", "detectable_format:number_highlighted_sections",
        "detectable_format:constrained_response", "tinygemma:first_word", "detectable_content:number_placeholders")

    def apply(self, st, ctx, rng):
        key = rng.choice(["answer", "response", "reply", "answer", "text"])
        body = json.dumps({key: st.text}, ensure_ascii=False, indent=rng.choice([None, 2]))
        st.text = rng.choice(["```json\n{}\n```", "{}", "```\n{}\n```", "{}"]).format(body)
        return True

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Return the entire output as valid JSON.",
            "Format your whole reply as a JSON object; a markdown code block around it is fine.",
            "Respond with JSON only.",
            "Wrap your answer in JSON so that a program can parse it.",
            "Give the answer inside a JSON object and nothing outside it.",
        ])


class _TwoResponses(_Kind):
    id, stage = "combination:two_responses", 1
    conflicts = _LAYOUTS + ("detectable_format:title", "combination:repeat_prompt")

    def ok(self, ctx, chosen, rng):
        return len(ctx.sentences) >= 3 and "******" not in ctx.response and not ctx.has_code

    def apply(self, st, ctx, rng):
        last = st.text.strip().split("\n")[-1].strip()
        first = _paragraphs(st.text)[0]
        if re.match(r"(so |therefore |thus )?the (final )?answer is\b", last, re.I):
            short = last
        elif "\n" in first:
            return False
        else:
            sents = ifc.split_sentences(first)
            if not sents:
                return False
            short = sents[0]
            if len(short.split()) < 5 and len(sents) > 1:
                short = sents[0] + " " + sents[1]
        if (short[-1] not in ".!" or _LIST_LINE.match(short)
                or re.match(r"(sure|certainly|of course|here|okay|ok|great|absolutely)\b", short, re.I)):
            return False
        if short.strip() == st.text.strip():
            return False
        sep = rng.choice(["\n\n******\n\n", "\n******\n"])
        parts = [short, st.text] if rng.random() < 0.7 else [st.text, short]
        st.text = sep.join(parts)
        return True

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Give two different answers, separated by six asterisks (******).",
            "Provide two distinct responses with a line of six asterisks ****** between them and nothing else.",
            "Write two versions of the answer (a short one and a fuller one) divided by ******.",
            "I want two separate replies. Put ****** between them.",
        ])


class _Highlights(_Kind):
    id, stage = "detectable_format:number_highlighted_sections", 2
    conflicts = ("detectable_format:number_bullet_lists", "detectable_format:json_format")

    def ok(self, ctx, chosen, rng):
        return not ctx.has_code and "*" not in ctx.response

    def apply(self, st, ctx, rng):
        candidates = []
        for m in re.finditer(r"\b[A-Za-z][A-Za-z'-]{4,}\b", st.text):
            line_start = st.text.rfind("\n", 0, m.start()) + 1
            before = st.text[line_start:m.start()]
            if not before.strip() or m.group().lower() in STOPWORDS:
                continue
            candidates.append(m)
        if not candidates:
            return False
        # prefer distinct words that the prompt uses, and a two-word phrase now and then
        seen, picks = set(), []
        in_prompt = set(_content_words(ctx.prompt))
        shuffled = rng.sample(candidates, len(candidates))
        shuffled.sort(key=lambda m: m.group().lower() not in in_prompt)
        for m in shuffled:
            if m.group().lower() not in seen:
                seen.add(m.group().lower())
                picks.append(m)
            if len(picks) >= rng.randint(1, 4):
                break
        picks.sort(key=lambda m: m.start())
        out, pos = [], 0
        for m in picks:
            if m.start() < pos:
                continue
            end = m.end()
            nxt = re.match(r" [A-Za-z]{3,}\b", st.text[end:])
            if nxt and rng.random() < 0.3:
                end += nxt.end()
            out += [st.text[pos:m.start()], "*", st.text[m.start():end], "*"]
            pos = end
        out.append(st.text[pos:])
        st.text = "".join(out)
        return True

    def measure(self, final, st, ctx, rng):
        single = [h for h in re.findall(r"\*[^\n\*]*\*", final) if h.strip("*").strip()]
        double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", final) if h[2:-2].strip()]
        n = len(single) + len(double)
        return {"num_highlights": rng.randint(max(1, n - 1), n)} if n else None

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Highlight at least {n} parts of your answer with markdown, for example *an important phrase*.",
            "Emphasize {n} or more key phrases by wrapping them in single asterisks, like *this*.",
            "Mark at least {n} words or phrases in italics with asterisks (*like so*).",
            "Use markdown to highlight no fewer than {n} passages, e.g. *highlighted text*.",
        ], n=kw["num_highlights"])


class _Placeholders(_Kind):
    id, stage = "detectable_content:number_placeholders", 5
    conflicts = ("detectable_format:json_format", "tinygemma:exact_sentences")
    TEMPLATES = [
        "Prepared by [your name] on [date].",
        "Reach out to [name] at [email address] with any questions.",
        "Last updated: [date]",
        "Signed: [your name]",
        "Location: [city] | Contact: [phone number]",
        "Notes: [add your own details here]",
        "For: [recipient] | From: [your name] | Date: [date]",
        "Adjust this to fit [your situation] before using it.",
    ]

    def ok(self, ctx, chosen, rng):
        return not ctx.has_code

    def apply(self, st, ctx, rng):
        if not re.findall(r"\[.*?\]", st.text) or rng.random() < 0.3:
            st.text += "\n\n" + rng.choice(self.TEMPLATES)
        return True

    def measure(self, final, st, ctx, rng):
        n = len(re.findall(r"\[.*?\]", final))
        return {"num_placeholders": rng.randint(max(1, n - 1), n)} if n else None

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Include at least {n} placeholders in square brackets, like [name].",
            "Use {n} or more fill-in-the-blank placeholders written in square brackets, e.g. [date].",
            "Leave at least {n} bracketed placeholders such as [address] for details to be filled in later.",
            "The answer should contain no fewer than {n} placeholders in the form [placeholder].",
        ], n=kw["num_placeholders"])


class _Postscript(_Kind):
    id, stage = "detectable_content:postscript", 6
    conflicts = ("detectable_format:json_format", "tinygemma:exact_sentences")
    NOTES = [
        "I can go into more detail on any part of this if you like.",
        "Feel free to ask if something is unclear.",
        "Let me know which part you would like to explore further.",
        "These are general suggestions so adapt them to your own situation.",
        "Thanks for the interesting question!",
        "A follow-up question is always welcome.",
        "I kept this brief on purpose.",
        "Double-check the details that matter most to you.",
    ]

    def apply(self, st, ctx, rng):
        marker = "P.S." if rng.random() < 0.75 else "P.P.S"
        a, b = rng.sample(self.NOTES, 2)
        note = f"P.S. {a}" if marker == "P.S." else f"P.S. {a}\nP.P.S. {b}"
        st.text += rng.choice(["\n\n", "\n"]) + note
        st.data["ps"] = marker
        return True

    def measure(self, final, st, ctx, rng):
        return {"postscript_marker": st.data["ps"]}

    def phrase(self, kw, rng):
        return _pick(rng, [
            "At the end, append a postscript beginning with {m}",
            "Finish with a short note beginning with {m}",
            "Add a {m} line after your main answer.",
            "Please include a postscript ({m}) at the very end.",
            "Close with an extra remark introduced by {m}",
        ], m=kw["postscript_marker"])


class _EndPhrase(_Kind):
    id, stage = "startend:end_checker", 7
    conflicts = ("detectable_format:json_format",)
    PHRASES = [
        "Let me know if you need anything else.",
        "Hope this helps!",
        "That covers the main points.",
        "Feel free to ask more questions.",
        "Thanks for asking.",
        "Happy to help with more.",
        "Good luck!",
        "Any other questions?",
        "That is my answer.",
        "Enjoy!",
    ]

    def apply(self, st, ctx, rng):
        phrase = rng.choice(self.PHRASES)
        last = st.text.rstrip().split("\n")[-1]
        join = " " if (last.strip()[-1:] in (".", "!", "?") and not _LIST_LINE.match(last)
                       and rng.random() < 0.5) else "\n\n"
        st.text = st.text.rstrip() + join + phrase
        st.data["end"] = phrase
        return True

    def measure(self, final, st, ctx, rng):
        return {"end_phrase": st.data["end"]}

    def phrase(self, kw, rng):
        return _pick(rng, [
            "End your reply with the exact phrase \"{p}\" and write nothing after it.",
            "Your very last words must be: {p}",
            "Close your answer with this exact sentence: \"{p}\"",
            "Make sure the response finishes with \"{p}\", with nothing following.",
            "The final words of your reply should be exactly \"{p}\".",
        ], p=kw["end_phrase"])


class _Quotation(_Kind):
    id, stage = "startend:quotation", 9
    conflicts = ("detectable_format:json_format", "combination:repeat_prompt")

    def apply(self, st, ctx, rng):
        st.text = '"' + st.text + '"'
        return True

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Put double quotation marks around your whole answer.",
            "Wrap the entire response in double quotes.",
            "Enclose your reply, from start to finish, in \"double quotation marks\".",
            "Your full answer must sit inside a pair of double quotes.",
        ])


class _RepeatPrompt(_Kind):
    id, stage = "combination:repeat_prompt", 4
    conflicts = ("detectable_format:json_format", "startend:quotation", "combination:two_responses",
                 "tinygemma:first_word", "tinygemma:exact_sentences")

    def ok(self, ctx, chosen, rng):
        return (len(ctx.prompt) <= 300 and not ctx.has_code
                and ("punctuation:no_comma" not in chosen or "," not in ctx.prompt))

    def apply(self, st, ctx, rng):
        st.text = ctx.prompt + rng.choice(["\n\n", "\n"]) + st.text
        return True

    def measure(self, final, st, ctx, rng):
        return {"prompt_to_repeat": ctx.prompt}

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Before you answer, repeat my request above word for word (leaving out this instruction), then give "
            "your answer.",
            "First copy my question exactly as written, without these extra instructions, and then answer it.",
            "Start by restating the request verbatim (not this sentence), followed by your response.",
            "Echo my request back to me unchanged (minus this line) before answering it.",
        ])


class _Constrained(_Kind):
    id, stage = "detectable_format:constrained_response", 0
    conflicts = ("detectable_format:json_format", "tinygemma:first_word") + _CASES

    def ok(self, ctx, chosen, rng):
        return re.match(r"(yes|no)\b", ctx.response, re.I) is not None

    def apply(self, st, ctx, rng):
        m = re.match(r"(yes|no)\b[,.!:;]*\s*", st.text, re.I)
        if not m:
            return False
        rest = st.text[m.end():]
        rest = rest[:1].upper() + rest[1:]
        st.text = f"My answer is {m.group(1).lower()}." + (" " + rest if rest else "")
        return True

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Start with your verdict: write \"My answer is yes.\" if you agree, \"My answer is no.\" if you do not, "
            "and \"My answer is maybe.\" when unsure; then explain.",
            "Begin the reply with a fixed verdict sentence (\"My answer is yes.\" when it holds, \"My answer is no.\" "
            "when it does not, \"My answer is maybe.\" when it is unclear).",
            "State the verdict in one fixed sentence: for yes use \"My answer is yes.\"; for no use \"My answer is "
            "no.\"; if uncertain use \"My answer is maybe.\"",
            "Your reply has to include a verdict sentence: \"My answer is yes.\" for agreement, \"My answer is no.\" "
            "for disagreement, \"My answer is maybe.\" otherwise.",
            "Say \"My answer is yes.\" (agree), \"My answer is no.\" (disagree) or \"My answer is maybe.\" (unsure) "
            "somewhere in your reply, then give your reasons.",
        ])


class _Words(_Kind):
    id, stage = "length_constraints:number_words", 10

    def measure(self, final, st, ctx, rng):
        w = ifc.count_words(final)
        if w < 5:
            return None
        if rng.random() < 0.5:
            return {"num_words": _round_down(w, rng), "relation": AT_LEAST}
        return {"num_words": _round_up(w, rng), "relation": LESS_THAN}

    def phrase(self, kw, rng):
        n = kw["num_words"]
        if kw["relation"] == AT_LEAST:
            return _pick(rng, ["Answer in at least {n} words.", "Your reply should be {n} words or longer.",
                               "Use no fewer than {n} words.", "Write a response of {n}+ words."], n=n)
        return _pick(rng, ["Keep it under {n} words.", "Answer in fewer than {n} words.",
                           "Your response must be shorter than {n} words.", "Stay below {n} words in total."], n=n)


class _Sentences(_Kind):
    id, stage = "length_constraints:number_sentences", 10
    conflicts = ("tinygemma:exact_sentences",)

    def measure(self, final, st, ctx, rng):
        s = ifc.count_sentences(final)
        if s < 1:
            return None
        if s >= 2 and rng.random() < 0.5:
            return {"num_sentences": rng.randint(max(2, s - 2), s), "relation": AT_LEAST}
        return {"num_sentences": s + rng.randint(1, 3), "relation": LESS_THAN}

    def phrase(self, kw, rng):
        n = kw["num_sentences"]
        if kw["relation"] == AT_LEAST:
            return _pick(rng, ["Write at least {n} sentences.", "Use {n} or more sentences.",
                               "Your answer needs a minimum of {n} sentences."], n=n)
        return _pick(rng, ["Use fewer than {n} sentences.", "Keep your reply below {n} sentences.",
                           "Answer in less than {n} sentences."], n=n)


class _ExactSentences(_Kind):
    id, stage = "tinygemma:exact_sentences", 10
    conflicts = _LAYOUTS + ("length_constraints:number_sentences", "detectable_format:title",
                            "combination:repeat_prompt", "detectable_content:postscript",
                            "detectable_content:number_placeholders")

    def ok(self, ctx, chosen, rng):
        return "\n" not in ctx.response and 1 <= len(ctx.sentences) <= 8

    def measure(self, final, st, ctx, rng):
        s = ifc.count_sentences(final)
        return {"num_sentences": s} if 1 <= s <= 10 else None

    def phrase(self, kw, rng):
        n = kw["num_sentences"]
        if n == 1:
            return _pick(rng, ["Answer in a single sentence.", "Reply with exactly one sentence.",
                               "Use one sentence only."])
        return _pick(rng, ["Answer in exactly {n} sentences.", "Use precisely {n} sentences.",
                           "Your reply must consist of exactly {n} sentences."], n=n)


class _FirstWord(_Kind):
    id, stage = "tinygemma:first_word", 10
    conflicts = ("detectable_format:title", "combination:repeat_prompt", "detectable_format:json_format",
                 "detectable_format:constrained_response")

    def measure(self, final, st, ctx, rng):
        words = re.findall(r"\w+", final)
        if not words or not words[0].isalpha():
            return None
        return {"first_word": words[0]}

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Begin your reply with the word \"{w}\".",
            "The first word of your answer must be {w}.",
            "Start your response with \"{w}\".",
            "Make \"{w}\" the very first word you write.",
        ], w=kw["first_word"])


class _Existence(_Kind):
    id, stage = "keywords:existence", 10

    def measure(self, final, st, ctx, rng):
        words = _content_words(final)
        if not words:
            return None
        in_prompt = set(_content_words(ctx.prompt))
        preferred = [w for w in words if w in in_prompt]
        others = [w for w in words if w not in in_prompt]
        k = min(len(words), rng.choice([1, 2, 2, 3]))
        picks = rng.sample(preferred, min(len(preferred), rng.randint(0, k)))
        picks += rng.sample(others, min(len(others), k - len(picks)))
        return {"keywords": picks} if picks else None

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Make sure to mention the words {kw}.",
            "Include the keywords {kw} in your reply.",
            "Your answer must use these words: {kw}.",
            "Work the terms {kw} into your response.",
        ], kw=_quoted_list(kw["keywords"]))


class _Frequency(_Kind):
    id, stage = "keywords:frequency", 10

    def measure(self, final, st, ctx, rng):
        words = _content_words(final)
        if not words:
            return None
        counts = {w: len(re.findall(w, final, flags=re.IGNORECASE)) for w in words}
        repeated = [w for w in words if counts[w] >= 2]
        if repeated and rng.random() < 0.6:
            w = rng.choice(repeated)
            return {"keyword": w, "frequency": rng.randint(2, counts[w]), "relation": AT_LEAST}
        w = rng.choice(words)
        return {"keyword": w, "frequency": counts[w] + rng.randint(1, 2), "relation": LESS_THAN}

    def phrase(self, kw, rng):
        w, n = kw["keyword"], kw["frequency"]
        if kw["relation"] == AT_LEAST:
            return _pick(rng, ["Use the word \"{w}\" at least {n} times.",
                               "The word {w} should appear {n} or more times.",
                               "Mention \"{w}\" no fewer than {n} times."], w=w, n=n)
        return _pick(rng, ["Mention the word \"{w}\" fewer than {n} times.",
                           "Do not use the word {w} {n} or more times.",
                           "The word \"{w}\" may appear less than {n} times."], w=w, n=n)


class _Forbidden(_Kind):
    id, stage = "keywords:forbidden_words", 0
    FILLERS = ["very", "really", "actually", "basically", "quite", "truly", "extremely", "definitely", "simply",
               "certainly"]
    POOL = ["very", "really", "basically", "actually", "stuff", "nice", "good", "great", "amazing", "awesome",
            "obviously", "literally", "honestly", "definitely", "simply", "important", "however", "also", "many",
            "always", "never", "thing", "things", "just", "perhaps", "maybe", "kind", "sort", "huge", "bad"]

    def apply(self, st, ctx, rng):
        removed = []
        for w in self.FILLERS:
            occurrences = re.findall(r"\b" + w + r"\b", st.text, flags=re.IGNORECASE)
            if not occurrences:
                continue
            edited = re.sub(r"(?<=[a-z] )" + w + r" (?=[a-z])", "", st.text)
            if not re.search(r"\b" + w + r"\b", edited, flags=re.IGNORECASE) and rng.random() < 0.8:
                st.text = edited
                removed.append(w)
        st.data["removed"] = removed
        return True

    def measure(self, final, st, ctx, rng):
        def absent(w):
            return not re.search(r"\b" + w + r"\b", final, flags=re.IGNORECASE)

        removed = [w for w in st.data["removed"] if absent(w)]
        prompt_words = [w for w in _content_words(ctx.prompt) if absent(w)]
        pool = [w for w in self.POOL if absent(w) and w not in removed]
        k = rng.choice([1, 2, 2, 3])
        picks = removed[:k]
        if len(picks) < k and prompt_words and rng.random() < 0.3:
            picks.append(rng.choice(prompt_words))
        extra = [w for w in pool if w not in picks]
        picks += rng.sample(extra, min(len(extra), k - len(picks)))
        return {"forbidden_words": picks} if picks else None

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Do not use the words {kw}.",
            "Avoid the following words: {kw}.",
            "Your reply must not contain the words {kw}.",
            "Leave out these words completely: {kw}.",
        ], kw=_quoted_list(kw["forbidden_words"]))


class _Letters(_Kind):
    id, stage = "keywords:letter_frequency", 10

    def measure(self, final, st, ctx, rng):
        text = final.lower()
        letter = rng.choice("abcdefghijklmnopqrstuvwxyz")
        c = text.count(letter)
        if c >= 1 and rng.random() < 0.5:
            return {"letter": letter, "let_frequency": _round_down(c, rng), "let_relation": AT_LEAST}
        return {"letter": letter, "let_frequency": _round_up(c, rng), "let_relation": LESS_THAN}

    def phrase(self, kw, rng):
        l, n = kw["letter"], kw["let_frequency"]
        if kw["let_relation"] == AT_LEAST:
            return _pick(rng, ["The letter '{l}' should appear at least {n} times.",
                               "Use the letter {l} {n} or more times.",
                               "Make sure the letter \"{l}\" occurs no fewer than {n} times."], l=l, n=n)
        return _pick(rng, ["Use the letter '{l}' fewer than {n} times.",
                           "The letter {l} must appear less than {n} times.",
                           "Keep the count of the letter \"{l}\" below {n}."], l=l, n=n)


LANGUAGES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese",
    "ru": "Russian", "nl": "Dutch", "pl": "Polish", "uk": "Ukrainian", "ca": "Catalan", "sv": "Swedish",
    "ja": "Japanese", "ko": "Korean", "zh-cn": "Chinese", "ar": "Arabic", "hi": "Hindi", "tr": "Turkish",
    "vi": "Vietnamese", "id": "Indonesian", "fa": "Persian", "cs": "Czech", "el": "Greek", "fi": "Finnish",
    "da": "Danish", "no": "Norwegian", "hu": "Hungarian", "ro": "Romanian", "th": "Thai", "bn": "Bengali",
}


class _Language(_Kind):
    id, stage = "language:response_language", 10
    conflicts = ("change_case:english_capital",)

    def ok(self, ctx, chosen, rng):
        if ctx.english and rng.random() > 0.3:       # mostly English: keep the kind for responses in other languages
            return False
        return len(ctx.response) >= 40 and ctx.language in LANGUAGES

    def measure(self, final, st, ctx, rng):
        lang = ifc.detect_language(final)
        return {"language": lang} if lang == ctx.language else None

    def phrase(self, kw, rng):
        return _pick(rng, [
            "Please respond only in {L}; no other language.",
            "Your entire answer must be written in {L}.",
            "Answer in {L}.",
            "Use {L} for the whole reply.",
        ], L=LANGUAGES[kw["language"]])


KINDS: list[_Kind] = [k() for k in (
    _Lowercase, _Capital, _CapitalWords, _NoComma, _Title, _Bullets, _Paragraphs, _NthParagraph, _Sections, _Json,
    _TwoResponses, _Highlights, _Placeholders, _Postscript, _EndPhrase, _Quotation, _RepeatPrompt, _Constrained,
    _Words, _Sentences, _ExactSentences, _FirstWord, _Existence, _Frequency, _Forbidden, _Letters, _Language)]
KIND_IDS = [k.id for k in KINDS]
_BY_ID = {k.id: k for k in KINDS}


def _conflict(a: _Kind, b: _Kind) -> bool:
    return a.id == b.id or b.id in a.conflicts or a.id in b.conflicts


DESCRIPTIONS = {
    "change_case:english_lowercase": "the whole response lowercased (English responses without code)",
    "change_case:english_capital": "the whole response uppercased (English responses without code)",
    "change_case:capital_word_frequency": "1-3 key words put in capitals (at least N) or a bound above the count",
    "punctuation:no_comma": "commas rewritten away: 1,000 -> 1000, ', and' -> ' and', clauses -> ';'",
    "detectable_format:title": "a <<Title>> line made from the prompt's key words",
    "detectable_format:number_bullet_lists": "list items or groups of sentences as exactly N '* ' bullets",
    "length_constraints:number_paragraphs": "paragraphs (or groups of sentences) separated by ***",
    "length_constraints:nth_paragraph_first_word": "paragraphs separated by blank lines; paragraph k's first word",
    "detectable_format:multiple_sections": "'Section 1' / 'SECTION 1' / 'Part 1' headers over groups of sentences",
    "detectable_format:json_format": "the answer as a JSON string value, plain or in a ```json fence",
    "combination:two_responses": "a short answer (first sentence) and the full one, separated by ******",
    "detectable_format:number_highlighted_sections": "1-4 key words or phrases wrapped in *asterisks*",
    "detectable_content:number_placeholders": "[name]-style placeholders (kept, or a closing line that has some)",
    "detectable_content:postscript": "a P.S. (or P.S. + P.P.S.) note at the end",
    "startend:end_checker": "a closing phrase appended as the very end",
    "startend:quotation": "the whole response wrapped in double quotes",
    "combination:repeat_prompt": "the request repeated word for word before the answer",
    "detectable_format:constrained_response": "a leading Yes/No becomes 'My answer is yes./no.'",
    "length_constraints:number_words": "at least / less than N words, N a round number near the real count",
    "length_constraints:number_sentences": "at least / less than N sentences (Punkt), N near the real count",
    "tinygemma:exact_sentences": "(ours) exactly N sentences, N the real count of a short one-paragraph answer",
    "tinygemma:first_word": "(ours) start with the word X, X the response's real first word",
    "keywords:existence": "1-3 content words that occur in the response (prompt words preferred)",
    "keywords:frequency": "a content word at least N times (N <= its count) or less than N (N > its count)",
    "keywords:forbidden_words": "filler words (very, really, ...) deleted, or words the response lacks",
    "keywords:letter_frequency": "a letter at least / less than N times, N round near its count",
    "language:response_language": "the response's own language (langdetect), mostly for non-English responses",
}


def describe() -> list[tuple[str, str]]:
    """(instruction id, what the edit does) for every kind covered."""
    return [(k.id, DESCRIPTIONS[k.id]) for k in KINDS]


# ---- the entry point --------------------------------------------------------------------------------------------

def augment(prompt: str, response: str, rng: random.Random, max_constraints: int = 2,
            kinds: list[str] | None = None) -> Augmented | None:
    """`prompt` with 1..max_constraints verifiable instructions added and `response` edited to follow them all,
    or None when the picked constraints cannot be met (or verified) on this response.

    `kinds` restricts the choice to those instruction ids. Deterministic for a given `rng` state.
    """
    prompt, response = prompt.strip(), response.strip()
    if not prompt or not response or max_constraints < 1:
        return None
    ctx = _Ctx(prompt, response)
    pool = [k for k in KINDS if kinds is None or k.id in kinds]
    weights = [0.55, 0.3, 0.15, 0.1, 0.05][:max_constraints]
    n = rng.choices(range(1, len(weights) + 1), weights=weights)[0]
    order = pool[:]
    rng.shuffle(order)
    chosen: list[_Kind] = []
    for k in order:
        if len(chosen) == n:
            break
        if any(_conflict(k, c) for c in chosen):
            continue
        if k.ok(ctx, [c.id for c in chosen], rng):
            chosen.append(k)
    if not chosen:
        return None

    st = _State(response)
    for k in sorted(chosen, key=lambda k: k.stage):
        if not k.apply(st, ctx, rng) or not st.text.strip():
            return None
    final = st.text
    all_kwargs = []
    for k in chosen:
        kw = k.measure(final, st, ctx, rng)
        if kw is None or not check(k.id, final, kw):
            return None
        all_kwargs.append(kw)

    texts = [_singular(k.phrase(kw, rng)) for k, kw in zip(chosen, all_kwargs)]
    instruction = rng.choice([" ", "\n"]).join(texts)
    if rng.random() < 0.2 and not any(k.id == "combination:repeat_prompt" for k in chosen):
        new_prompt = instruction + "\n\n" + prompt
    else:
        new_prompt = prompt + rng.choice(["\n\n", "\n", " "]) + instruction
    return Augmented(new_prompt, final, [k.id for k in chosen], all_kwargs, texts)
