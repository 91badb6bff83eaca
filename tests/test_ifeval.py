"""IFEval: each of the 25 checks on handmade responses (pass and fail), the loose variants, the metric arithmetic,
response matching, and the official GPT-4 responses scored against the published figures."""

import json
from pathlib import Path

import pytest

from tinygemma.eval import ifeval
from tinygemma.eval.ifeval_checks import CHECKS, check, count_sentences, count_words, word_tokens

IFEVAL_DATA = Path(__file__).parents[2] / "shared" / "data" / "ifeval"
GPT4_RESPONSES = IFEVAL_DATA / "input_response_data_gpt4_20231107_145030.jsonl"

# (instruction id, kwargs, a response that follows it, a response that does not)
CASES = [
    ("keywords:existence", {"keywords": ["tea", "Kyoto"]}, "Green TEA from kyoto.", "Green tea from Osaka."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "A cat and a Cat.", "A cat."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "A cat.", "cat cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["tea"]}, "Steam rises from the teapot.", "I like Tea."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"}, "Zzz.", "Zz."),
    ("keywords:letter_frequency", {"letter": "!", "let_frequency": 2, "let_relation": "less than"}, "Hi!", "Hi!!"),
    ("language:response_language", {"language": "de"},
     "Das ist ein kurzer Satz auf Deutsch, und er ist ganz einfach zu lesen.",
     "This is a short sentence in English, and it is very easy to read."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith went home. He slept.", "One. Two. Three."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"},
     "It rained. We stayed in.", "Mr. Brown met Mrs. Green at 5 p.m. on Main St. in the U.S. yesterday."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", "First.\n***\n***\nSecond."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four five",
     "one two-three four"),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "Hello there.", "a b c"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First we eat.\n\n\"Then, we sleep.\"", "First we eat.\n\nAfter that we sleep."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", "Dear [name]."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Bye.\nP.S. see you", "Bye. PS see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Bye.\np. p. s. more", "Bye.\nP.S. more"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "Intro\n* one\n- two", "* one\n* two\n* three"),
    ("detectable_format:constrained_response", {}, "Sure. My answer is no.", "My answer is nope."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nfoo\nSECTION 2\nbar", "SECTION 1\nfoo and bar"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    ("detectable_format:title", {}, "<<A Poem>>\nroses", "<< >>\nroses"),
    ("combination:two_responses", {}, "Yes.\n******\nNo.", "Yes.\n******\nYes."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "Hi! Say hi."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. Any other questions?"',
     "Any other questions? Done."),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"},
     "I DON'T know", "I do not KNOW"),
    ("change_case:english_capital", {}, "THIS IS A SHORT ANSWER WRITTEN IN ENGLISH FOR YOU.",
     "This is a short answer written in English for you."),
    ("change_case:english_lowercase", {}, "this is a short answer written in english for you.",
     "this is a short answer written in English for you."),
    ("punctuation:no_comma", {}, "No commas here.", "One, two."),
    ("startend:quotation", {}, ' "Quoted answer." ', '"Unbalanced.'),
]


def test_cases_cover_all_25_instructions():
    assert len(CHECKS) == 25
    assert {c[0] for c in CASES} == set(CHECKS)


@pytest.mark.parametrize("instruction_id,kwargs,good,bad", CASES, ids=[c[0] for c in CASES])
def test_check_pass_and_fail(instruction_id, kwargs, good, bad):
    assert check(instruction_id, good, kwargs) is True
    assert check(instruction_id, bad, kwargs) is False


def test_empty_response_follows_nothing():
    assert check("punctuation:no_comma", "  \n", {}) is False


def test_undecidable_language_counts_as_followed():
    assert check("language:response_language", "12345 !!!", {"language": "fr"}) is True


def test_text_utilities():
    assert count_words("It's a well-known fact: 3.5 apples.") == 9          # \w+ tokens: It s a well known fact 3 5 apples
    assert count_words("It's a fact") == 4
    assert count_sentences("Mr. Smith arrived at 5 p.m. yesterday. He left.") == 2   # Punkt knows the abbreviations
    assert count_sentences("No final period") == 1
    assert word_tokens("I DON'T know.") == ["I", "DO", "N'T", "know", "."]


def test_bad_instruction_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown IFEval instruction"):
        check("keywords:nonsense", "text", {})
    with pytest.raises(ValueError, match="bad arguments for keywords:existence"):
        check("keywords:existence", "text", {"keyword": "x"})
    with pytest.raises(ValueError, match="relation must be"):
        check("length_constraints:number_words", "text", {"num_words": 3, "relation": "about"})


def test_loose_variants_order_and_content():
    assert ifeval.loose_variants("Sure!\n*Body* text\nBye") == [
        "Sure!\n*Body* text\nBye", "Sure!\nBody text\nBye",
        "*Body* text\nBye", "Sure!\n*Body* text", "*Body* text",
        "Body text\nBye", "Sure!\nBody text", "Body text"]


def test_loose_passes_where_strict_fails():
    prompt = ifeval.Prompt(1, "p", ["startend:quotation", "detectable_format:title", "punctuation:no_comma"],
                           [{}, {}, {}])
    # An intro line breaks the quotation (strict), not loose; the title is there; the comma fails both.
    result = ifeval.score_prompt(prompt, 'Here, you go:\n"<<T>> all, good"')
    assert result.strict == [False, True, False]
    assert result.loose == [True, True, False]
    # '*' stripping: "*" inside the response hides the end phrase from the strict check only.
    prompt = ifeval.Prompt(2, "p", ["startend:end_checker"], [{"end_phrase": "The end."}])
    assert ifeval.score_prompt(prompt, "Story. *The end.*").strict == [False]
    assert ifeval.score_prompt(prompt, "Story. *The end.*").loose == [True]


def test_metric_arithmetic():
    results = [ifeval.PromptResult(1, "a", "", ["x", "y"], [True, False], [True, True]),
               ifeval.PromptResult(2, "b", "", ["x"], [True], [True]),
               ifeval.PromptResult(3, "c", "", ["x", "y", "z"], [False, False, True], [False, True, True])]
    metrics, per_instruction = ifeval.summarize(results)
    assert metrics == {"prompt_level_strict": 1 / 3, "instruction_level_strict": 3 / 6,
                       "prompt_level_loose": 2 / 3, "instruction_level_loose": 5 / 6}
    assert per_instruction["x"] == {"count": 3, "strict": 2 / 3, "loose": 2 / 3}
    assert per_instruction["y"] == {"count": 2, "strict": 0.0, "loose": 1.0}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_prompts_responses_and_reports_roundtrip(tmp_path):
    _write_jsonl(tmp_path / "input_data.jsonl", [
        {"key": 7, "prompt": "Say hi without commas.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"key": 9, "prompt": "Quote it.", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]}])
    prompts = ifeval.load_prompts(tmp_path)
    by_text = _write_jsonl(tmp_path / "r1.jsonl", [{"prompt": "Quote it.", "response": '"ok"'},
                                                   {"prompt": "Say hi without commas.", "response": "hi, you"}])
    assert ifeval.read_responses(by_text, prompts) == {7: "hi, you", 9: '"ok"'}
    # A prompt reworded since the responses were made is matched by its position (as in the GPT-4 file).
    by_position = _write_jsonl(tmp_path / "r2.jsonl", [{"prompt": "Say hi, without commas.", "response": "hi"},
                                                       {"prompt": "Quote it.", "response": "no"}])
    assert ifeval.read_responses(by_position, prompts) == {7: "hi", 9: "no"}
    missing = _write_jsonl(tmp_path / "r3.jsonl", [{"prompt": "Quote it.", "response": "no"}])
    with pytest.raises(ValueError, match="no response for prompt key 7"):
        ifeval.read_responses(missing, prompts)

    report = ifeval.score(prompts, {7: "hi you", 9: "no"}, {"note": "test"})
    paths = ifeval.write_reports(report, tmp_path / "out")
    doc = json.loads(paths["json"].read_text())
    assert doc["metrics"]["prompt_level_strict"] == 0.5
    assert [r["strict"] for r in doc["results"]] == [[True], [False]]
    assert "| prompt level strict | 50.00% |" in paths["markdown"].read_text()
    assert ifeval.read_responses(paths["responses"], prompts) == {7: "hi you", 9: "no"}     # re-scorable


def test_bad_prompt_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        ifeval.load_prompts(tmp_path)
    bad = _write_jsonl(tmp_path / "input_data.jsonl", [{"key": 1, "prompt": "p", "instruction_id_list": ["x:y"],
                                                        "kwargs": [{}]}])
    with pytest.raises(ValueError, match="unknown instruction id 'x:y'"):
        ifeval.load_prompts(bad)
    (tmp_path / "input_data.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=":1: not valid JSON"):
        ifeval.load_prompts(tmp_path)


def test_run_generates_greedily_and_scores(tmp_path):
    from tinygemma.lm import LM
    from tinymodels import random_tensors, tiny_config, tiny_tokenizer

    _write_jsonl(tmp_path / "input_data.jsonl", [
        {"key": 1, "prompt": "Say hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}])
    cfg = tiny_config()
    lm = LM.from_tensors(cfg, random_tensors(cfg, 0), tiny_tokenizer())
    report = ifeval.run(lm, ifeval.load_prompts(tmp_path), max_tokens=6)
    expected = lm.generate(lm.tokenizer.encode("Say hi.", add_bos=True), max_tokens=6, temperature=0.0)
    assert report.results[0].response == expected
    assert report.results[0].strict == [bool(expected.strip()) and "," not in expected]
    assert report.info["prompt_format"] == "completion" and report.info["decoding"] == "greedy"
    chat_ids = lm.tokenizer.encode_chat([{"role": "user", "content": "Hi"}])
    assert ifeval.build_prompt(lm, "Hi", mode="chat") == chat_ids


@pytest.mark.skipif(not GPT4_RESPONSES.is_file(), reason="shared/data/ifeval is not beside the project")
def test_official_gpt4_responses_match_published_scores():
    """Published (Zhou et al. 2023, Table 3): 76.89 / 83.57 / 79.30 / 85.37 = 416/541, 697/834, 429/541, 712/834.

    Ours differ by exactly two instructions, keys 1122 and 1129, whose letter is '#' and '!': the checker of that
    time replaced a letter outside a-z by a random one (later fixed upstream; we count the real character)."""
    prompts = ifeval.load_prompts(IFEVAL_DATA)
    report = ifeval.score(prompts, ifeval.read_responses(GPT4_RESPONSES, prompts))
    counts = lambda level: (sum(all(r[level]) for r in rows), sum(sum(r[level]) for r in rows))
    rows = [{"key": r.key, "strict": list(r.strict), "loose": list(r.loose)} for r in report.results]
    assert counts("strict") == (417, 698) and counts("loose") == (431, 714)
    # Our verdicts on the two letter checks ('#' in 1122, second instruction; '!' in 1129, first): followed.
    by_key = {r["key"]: r for r in rows}
    assert by_key[1122]["strict"][1] and by_key[1122]["loose"][1] and by_key[1129]["strict"][0]
    # The published run failed 1122's letter check (strict and loose) and 1129's (loose); with those verdicts
    # flipped, the counts are the published ones exactly.
    by_key[1122]["strict"][1] = by_key[1122]["loose"][1] = by_key[1129]["loose"][0] = False
    assert counts("strict") == (416, 697) and counts("loose") == (429, 712)
    assert [round(100 * a / b, 2) for a, b in [(416, 541), (697, 834), (429, 541), (712, 834)]] == \
        [76.89, 83.57, 79.30, 85.37]
