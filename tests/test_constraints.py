"""Verifiable constraints for instruction data: every kept example passes the project's IFEval checkers, every kind
is produced, wordings vary, a seed gives the same example, impossible cases give None, and no instruction text
shares an 8-word sequence with an IFEval prompt."""

import collections
import json
import random
import re
from pathlib import Path

import pytest

pytest.importorskip("nltk")
pytest.importorskip("langdetect")

from tinygemma.eval import ifeval_checks  # noqa: E402
from tinygemma.train import constraints  # noqa: E402
from tinygemma.train.constraints import Augmented, augment  # noqa: E402

IFEVAL_PROMPTS = Path(__file__).parents[2] / "shared" / "data" / "ifeval" / "input_data.jsonl"

PAIRS = [
    ("Explain how photosynthesis works in plants.",
     "Photosynthesis is the process by which plants turn light into chemical energy. Inside the chloroplasts, "
     "chlorophyll absorbs sunlight, which powers the splitting of water molecules. The oxygen is released into the "
     "air, while the hydrogen is used to build sugars from carbon dioxide. These sugars, such as glucose, fuel the "
     "plant's growth. In short, plants use light, water, and carbon dioxide to make food and oxygen."),
    ("Is the Earth round?",
     "Yes, the Earth is round. More precisely, it is an oblate spheroid, slightly flattened at the poles. Satellite "
     "images, the curved shadow on the Moon during eclipses, and ship hulls vanishing over the horizon all "
     "confirm it."),
    ("List three fruits that are high in vitamin C.",
     "Here are three fruits rich in vitamin C:\n\n1. Oranges, the classic choice.\n2. Kiwis, which contain even more "
     "per gram.\n3. Strawberries, a sweet option.\n\nAll of them are easy to find in most supermarkets."),
    ("Write a short email to my landlord about a broken heater.",
     "Dear [Landlord's Name],\n\nI am writing to let you know that the heater in my apartment stopped working "
     "yesterday. The temperature inside has dropped considerably, and it is becoming uncomfortable.\n\nCould you "
     "please arrange for a repair as soon as possible? I am available most afternoons this week.\n\nThank you for "
     "your help.\n\nBest regards,\n[Your Name]"),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Give me tips for better sleep.",
     "- Keep a consistent schedule, even on weekends.\n- Avoid screens for an hour before bed.\n- Keep your bedroom "
     "cool, dark, and quiet.\n- Limit caffeine after lunch.\n- Get some sunlight early in the day."),
    ("¿Qué es la fotosíntesis?",
     "La fotosíntesis es el proceso mediante el cual las plantas convierten la luz solar en energía química. Las "
     "hojas absorben dióxido de carbono y agua, y producen glucosa y oxígeno para toda la planta."),
    ("Describe the water cycle.",
     "The water cycle describes how water moves around the planet. It begins with evaporation, when the sun heats "
     "oceans and lakes and water rises as vapor.\n\nThe vapor cools in the atmosphere and condenses into clouds. "
     "When the droplets grow heavy enough, they fall as precipitation, such as rain or snow.\n\nFinally, the water "
     "collects in rivers, lakes, and oceans, or soaks into the ground, and the cycle starts again. This continuous "
     "loop is essential for life on Earth."),
    ("Write a haiku about autumn.", "Crimson leaves drifting\nWhispers of the cooling wind\nThe year exhales slow"),
    ("How do I reverse a list in Python?",
     "You can reverse a list in place with `items.reverse()`, or get a reversed copy with slicing:\n\n```python\n"
     "reversed_items = items[::-1]\n```\n\nBoth approaches work for any list."),
    ("Can you suggest a name for a bakery?",
     "How about \"Rise & Shine Bakery\"? It is warm, memorable, and hints at fresh bread in the morning."),
    ("Should I learn Rust or Go first?",
     "No, there is no single right answer, but Go is usually quicker to pick up. Its syntax is small and its tooling "
     "is simple. Rust takes longer to learn, because the borrow checker asks you to think about ownership. If you "
     "want to ship web services soon, start with Go; if you care about systems programming, choose Rust."),
    ("Summarize the plot of Romeo and Juliet.",
     "Romeo and Juliet are two young lovers from feuding families in Verona. They marry in secret with the help of "
     "Friar Laurence. After Romeo kills Tybalt in a street fight, he is banished. Juliet fakes her death to escape an "
     "arranged marriage, but Romeo, not knowing the plan, takes poison at her tomb. Juliet wakes, finds him dead, and "
     "stabs herself. Their deaths finally reconcile the two families."),
    ("Tell me about the history of the bicycle.",
     "The bicycle has a surprisingly long history. In 1817, Karl Drais built the running machine, a two-wheeled "
     "frame pushed along with the feet. Pedals arrived in the 1860s, attached directly to the front wheel, which led "
     "to the high-wheeled penny-farthing.\n\nThe safety bicycle of the 1880s, with a chain drive and two wheels of "
     "equal size, made cycling practical for everyone. Pneumatic tires, invented by John Dunlop in 1888, made the "
     "ride far more comfortable.\n\nDuring the twentieth century, bicycles spread worldwide, and today over 1,000 "
     "million of them are in use. They remain one of the most efficient ways to travel."),
    ("Give three reasons to exercise.",
     "1. It strengthens your heart and lungs.\n2. It improves your mood and reduces stress.\n3. It helps you sleep "
     "better at night."),
    ("What does HTML stand for?", "HTML stands for HyperText Markup Language."),
    ("Write a motivational message for a friend starting a new job.",
     "Congratulations on the new job! You earned this through hard work, and your new team is lucky to have you. "
     "The first weeks may feel overwhelming, but remember that everyone starts somewhere. Ask questions, be "
     "yourself, and trust your skills. I am proud of you and cannot wait to hear how it goes."),
    ("Was die Hauptstadt von Deutschland?",
     "Die Hauptstadt von Deutschland ist Berlin. Die Stadt ist auch die größte Stadt des Landes und hat ungefähr "
     "3,7 Millionen Einwohner."),
]

SEEDS = range(600)


def _examples(max_constraints=3):
    out = []
    for seed in SEEDS:
        prompt, response = PAIRS[seed % len(PAIRS)]
        out.append((seed, prompt, response, augment(prompt, response, random.Random(seed), max_constraints)))
    return out


@pytest.fixture(scope="module")
def examples():
    return _examples()


def _recheck(instruction_id, response, kwargs):
    if instruction_id in ifeval_checks.CHECKS:
        return ifeval_checks.check(instruction_id, response, kwargs)
    return constraints.EXTRA_CHECKS[instruction_id](response, **kwargs)


def test_every_kept_example_passes_all_its_checks(examples):
    kept = [a for *_, a in examples if a is not None]
    assert len(kept) >= 0.8 * len(examples)
    for a in kept:
        assert isinstance(a, Augmented)
        assert len(a.instruction_ids) == len(a.kwargs) == len(a.instructions) >= 1
        assert len(set(a.instruction_ids)) == len(a.instruction_ids)
        for iid, kw in zip(a.instruction_ids, a.kwargs):
            assert _recheck(iid, a.response, kw), (iid, kw, a.response)
        for text in a.instructions:
            assert text in a.prompt


def test_the_prompt_keeps_the_request_and_repeat_prompt_names_it(examples):
    for _, prompt, _, a in examples:
        if a is None:
            continue
        assert prompt in a.prompt
        for iid, kw in zip(a.instruction_ids, a.kwargs):
            if iid == "combination:repeat_prompt":
                assert kw["prompt_to_repeat"] == prompt
                assert a.prompt.startswith(prompt)


def test_every_kind_is_produced_and_single_and_multiple_are_mixed(examples):
    seen = collections.Counter(i for *_, a in examples if a for i in a.instruction_ids)
    missing = [k for k in constraints.KIND_IDS if seen[k] == 0]
    assert not missing, missing
    sizes = collections.Counter(len(a.instruction_ids) for *_, a in examples if a)
    assert sizes[1] and sizes[2] and sizes[3]
    # the IFEval kinds covered include the ones the checker registry lists, less none
    ifeval_kinds = {k for k in constraints.KIND_IDS if not k.startswith("tinygemma:")}
    assert ifeval_kinds == set(ifeval_checks.CHECKS)


def test_wordings_vary(examples):
    by_kind = collections.defaultdict(set)
    for *_, a in examples:
        if a:
            for iid, text in zip(a.instruction_ids, a.instructions):
                by_kind[iid].add(re.sub(r"\d+|\"[^\"]*\"", "#", text))
    few = {k: len(v) for k, v in by_kind.items() if len(v) < 3}
    assert not few, few


def test_same_seed_same_example_and_seeds_differ():
    prompt, response = PAIRS[7]
    a = augment(prompt, response, random.Random(123), 3)
    b = augment(prompt, response, random.Random(123), 3)
    assert a == b
    outs = {repr(augment(prompt, response, random.Random(s), 3)) for s in range(20)}
    assert len(outs) > 10


def test_impossible_cases_give_none():
    rng = random.Random(0)
    assert augment("Hi", "", rng) is None
    assert augment("", "Hello there.", rng) is None
    one = ("Say a word.", "Hello.")
    for kind in ("detectable_format:number_bullet_lists", "length_constraints:number_paragraphs",
                 "detectable_format:multiple_sections", "combination:two_responses",
                 "detectable_format:constrained_response"):
        for seed in range(20):
            assert augment(*one, random.Random(seed), kinds=[kind]) is None, kind
    # a Spanish response never gets an English-case constraint, nor a language other than its own
    for seed in range(40):
        a = augment(PAIRS[6][0], PAIRS[6][1], random.Random(seed), 3)
        if a:
            assert "change_case:english_lowercase" not in a.instruction_ids
            for iid, kw in zip(a.instruction_ids, a.kwargs):
                if iid == "language:response_language":
                    assert kw["language"] == "es"


def test_each_kind_alone_on_a_long_answer():
    prompt, response = PAIRS[13]
    for kind in constraints.KIND_IDS:
        if kind in ("detectable_format:constrained_response", "tinygemma:exact_sentences",
                    "language:response_language"):
            continue
        got = [augment(prompt, response, random.Random(s), kinds=[kind]) for s in range(6)]
        kept = [a for a in got if a]
        assert kept, kind
        assert all(a.instruction_ids == [kind] for a in kept)


def test_edits_read_naturally():
    from tinygemma.train.constraints import make_title, remove_commas
    assert remove_commas("We sold 12,500 units, and it was a record.") == "We sold 12500 units and it was a record."
    assert remove_commas("Keep it cool, dark, and quiet.") == "Keep it cool and dark and quiet."
    assert remove_commas("These sugars, such as glucose, fuel growth.") == "These sugars (such as glucose) fuel growth."
    assert remove_commas("In 2020, the firm grew.") == "In 2020 the firm grew."
    assert make_title("Explain how tides work.", "") == "How Tides Work"
    assert make_title("What are the benefits of exercise?", "") == "Benefits of Exercise"
    assert make_title("Write a poem about the sea", "") == "Poem About the Sea"
    a = augment(*PAIRS[0], random.Random(0), kinds=["detectable_format:json_format"])
    body = a.response.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
    assert list(json.loads(body).values()) == [PAIRS[0][1]]


def test_describe_lists_every_kind():
    assert [k for k, _ in constraints.describe()] == constraints.KIND_IDS
    assert all(text for _, text in constraints.describe())


def _ngrams(text, n=8):
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@pytest.mark.skipif(not IFEVAL_PROMPTS.exists(), reason="../shared/data/ifeval is not beside the project")
def test_no_instruction_text_shares_8_words_with_an_ifeval_prompt(examples):
    ifeval = set()
    with IFEVAL_PROMPTS.open(encoding="utf-8") as f:
        for line in f:
            ifeval |= _ngrams(json.loads(line)["prompt"])
    texts = {t for *_, a in examples if a for t in a.instructions}
    # every wording, with every number and keyword, over many more seeds than the fixture
    for seed in range(3000):
        a = augment(*PAIRS[seed % len(PAIRS)], random.Random(seed), 3)
        if a:
            texts.update(a.instructions)
    overlaps = {t: sorted(_ngrams(t) & ifeval)[:1] for t in texts if _ngrams(t) & ifeval}
    assert not overlaps, overlaps
