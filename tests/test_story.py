"""Story prompts and POST /v1/story: the prompt frames, the finishing rule, and the endpoint on a live server
with a tiny random model (SSE shape, validation, Continue reusing the earlier story's cache)."""

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from tinygemma import fast
from tinygemma.engine import Engine, EngineConfig
from tinygemma.export.gguf import save_gguf
from tinygemma.server import STATIC_DIR, create_app
from tinygemma.story import (BASE_STOPS, CONTINUE_OPENING, LENGTHS, OPENING, StoryChoices, finish_story,
                             story_prompt, title)

from serving import free_port, serve
from tinymodels import random_tensors, tiny_config, tiny_tokenizer

CAT = StoryChoices("a curious cat", "in a magical forest", "finds a glowing key", "friendship", "short")
CHOICES = {"character": "a curious cat", "setting": "in a magical forest", "twist": "finds a glowing key",
           "theme": "friendship", "length": "short"}


def test_title_from_character_and_setting():
    assert title(CAT) == "The Curious Cat in a Magical Forest"
    assert title(StoryChoices("an owl", "under the sea", "sings", "funny", "long")) == "The Owl under the Sea"


def test_base_prompt_is_a_story_book_page_with_the_choices_woven_in():
    prompt = story_prompt(CAT, instruction_tuned=False)
    assert prompt.messages is None and prompt.opening == OPENING
    assert prompt.text.endswith(f"Title: {title(CAT)}\nSummary: A friendship story about a curious cat in a "
                                f"magical forest who finds a glowing key. About 150 words.\nStory: {OPENING}")
    assert ".\nThe End.\n\nTitle: " in prompt.text                 # the example story shows how a story ends
    assert prompt.stop == BASE_STOPS and "The End" in prompt.stop
    assert prompt.max_tokens >= LENGTHS["short"][1]             # room for the upper bound of the words


def test_longer_choices_get_more_tokens():
    budgets = [story_prompt(StoryChoices("a", "b", "c", "d", length), False).max_tokens for length in LENGTHS]
    assert budgets == sorted(budgets) and len(set(budgets)) == 3


def test_continue_prompt_extends_the_story_so_far():
    so_far = "Once upon a time, a cat lived in a forest. It was happy."
    prompt = story_prompt(CAT, False, story_so_far=so_far + "\n")
    assert prompt.text.endswith(f"About 150 words.\nStory: {so_far}\n\n{CONTINUE_OPENING}")
    assert prompt.opening == CONTINUE_OPENING
    assert prompt.text.startswith(story_prompt(CAT, False).text.removesuffix(OPENING))


def test_instruction_tuned_prompt_is_the_anchor_sentence_in_a_chat():
    prompt = story_prompt(CAT, instruction_tuned=True)
    sentence = "Write a short friendship story about a curious cat in a magical forest that finds a glowing key."
    assert prompt.text is None and prompt.messages == [{"role": "user", "content": sentence}]
    assert prompt.opening == "" and prompt.stop == ()
    more = story_prompt(CAT, True, story_so_far="A story.")
    assert [m["role"] for m in more.messages] == ["user", "assistant", "user"]
    assert more.messages[1]["content"] == "A story."


def test_bad_length_is_refused():
    with pytest.raises(ValueError, match="length must be one of short, medium, long"):
        StoryChoices("a", "b", "c", "d", "epic")


@pytest.mark.parametrize("raw, finished", [
    ("Once upon a time, a cat slept. Then it woke and", "Once upon a time, a cat slept."),
    ('She said, "Good night!" And the', 'She said, "Good night!"'),
    ("It ended well.\n\nThe End", "It ended well."),
    ("One.\n\n\n\nTwo?", "One.\n\nTwo?"),
    ("no sentence end at all", "no sentence end at all"),
])
def test_finish_story_cuts_to_the_last_full_sentence(raw, finished):
    assert finish_story(raw) == finished


@pytest.fixture(scope="module")
def story_url():
    # A window wider than the prompts (as the real model's 512 tokens is for short stories): a cache can then be
    # cut back to the story so far when Continue drops the end marker.
    cfg = tiny_config(tie_word_embeddings=False, max_position_embeddings=1 << 14, sliding_window=8192)
    model, tok = fast.build_fast_model(cfg, random_tensors(cfg, 0)), tiny_tokenizer()
    app = create_app(Engine(model, tok, EngineConfig(context=8192)), "tiny", static_dir=STATIC_DIR)
    with serve(app) as base:
        yield base


def story_events(base: str, **body) -> list[dict]:
    events = []
    with httpx.stream("POST", f"{base}/v1/story", json={**CHOICES, **body}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def test_story_endpoint_streams_title_pieces_and_the_finished_story(story_url):
    events = story_events(story_url, seed=3, length="short")
    assert events[0] == {"title": "The Curious Cat in a Magical Forest", "text": OPENING}
    last = events[-1]
    assert last["finish_reason"] in ("stop", "length")
    assert len(events) > 10                                    # token by token, not all at once
    raw = "".join(e["text"] for e in events)
    assert last["story"] == finish_story(raw)
    assert 0 < last["usage"]["completion_tokens"] <= story_prompt(CAT, False).max_tokens
    # The same setup again starts from the first one's cache. (Its sampled text may differ: the reused cache
    # was computed in other chunks, with other float rounding, and this random model's choices are near-ties.)
    again = story_events(story_url, seed=3, length="short")
    assert again[0] == events[0] and again[-1]["story"] == finish_story("".join(e["text"] for e in again))
    assert again[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_continue_reuses_the_cache_of_the_story_so_far(story_url):
    first = story_events(story_url, seed=5)[-1]
    more = story_events(story_url, seed=6, story=first["story"])
    assert more[0]["text"] == CONTINUE_OPENING
    assert more[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


@pytest.mark.parametrize("body, message", [
    ({"length": "epic"}, "length"),
    ({"character": ""}, "character"),
    ({"twist": "x" * 121}, "twist"),
    ({"temperature": 3}, "temperature"),
])
def test_story_endpoint_validates_its_fields(story_url, body, message):
    r = httpx.post(f"{story_url}/v1/story", json={**CHOICES, **body})
    assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_page_and_its_files_are_served_at_the_root(story_url):
    page = httpx.get(f"{story_url}/")
    assert page.status_code == 200 and "Story generator" in page.text
    for name, kind in (("story.js", "javascript"), ("story.css", "text/css")):
        r = httpx.get(f"{story_url}/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert httpx.get(f"{story_url}/v1/models").json()["data"][0]["id"] == "tiny"     # the API is not shadowed


def test_story_command_prints_the_page_address_once_it_answers(tmp_path):
    cfg = tiny_config()
    save_gguf(tmp_path / "tiny.gguf", cfg, random_tensors(cfg, 0), tiny_tokenizer())
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tinygemma", "story", "--model", str(tmp_path / "tiny.gguf"),
                             "--dtype", "float32", "--port", str(port), "--ctx", "2048"],
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:                      # ends with the process, so a failed start cannot hang
            lines.append(line)
            if "story page is ready" in line:
                break
        assert lines[-1].strip() == f"tinygemma: the story page is ready: http://127.0.0.1:{port}/", lines
        assert "Story generator" in httpx.get(f"http://127.0.0.1:{port}/").text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
