"""The story page in a real browser: Debian's chromium driven by Playwright, against live servers on loopback
(a tiny random model for the page's behaviour, the embedded default model for one real story).

STORY_SCREENSHOT=docs/story.png saves the real story's page there (the README's picture).
"""

import os
import re
import shutil
import time
from urllib.parse import parse_qs, quote, urlparse

import httpx
import pytest

from tinygemma import fast
from tinygemma.engine import Engine, EngineConfig
from tinygemma.server import STATIC_DIR, create_app

from serving import serve
from tinymodels import random_tensors, tiny_config, tiny_tokenizer

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")]

WAIT_MS = 60_000
DONE = "#status:has-text('Done')"


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        # As root chromium needs --no-sandbox; Playwright's own browser download is not used.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def rambling_tiny_model():
    """A tiny random model that writes until its token budget: it never picks an end or newline token.

    Their output rows are zero and the others are scaled up, so their logits sit far below the top ones.
    """
    cfg = tiny_config(tie_word_embeddings=False, max_position_embeddings=1 << 14)
    tok = tiny_tokenizer()
    tensors = random_tensors(cfg, 0)
    head = tensors["lm_head.weight"] * 50
    never = [tok.eos_id, *(tok.piece_to_id(p) for p in ("<end_of_turn>", "\n", "\n\n", "<0x0A>"))]
    head[never] = 0
    tensors["lm_head.weight"] = head
    return fast.build_fast_model(cfg, tensors), tok


@pytest.fixture(scope="module")
def url():
    model, tok = rambling_tiny_model()
    app = create_app(Engine(model, tok, EngineConfig(context=8192)), "tiny", static_dir=STATIC_DIR)
    with serve(app) as base:
        yield base


@pytest.fixture
def page(browser, tmp_path):
    """A fresh page (own storage, downloads allowed) that fails the test on any console error."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == []


def query(page) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def story_text(page) -> str:
    return page.evaluate("document.getElementById('story').textContent")


def record_story_growth(page) -> None:
    """Keep the story's length at every change, in the page, for checking that text arrives in pieces."""
    page.evaluate("""() => {
        window.storyLengths = [];
        new MutationObserver(() => window.storyLengths.push(document.getElementById('story').textContent.length))
            .observe(document.getElementById('story'), {childList: true, subtree: true, characterData: true});
    }""")


def test_pick_generate_stream_download_continue(page, url, tmp_path):
    page.goto(url)
    page.get_by_text("Friendly robot").click()
    page.get_by_text("Under the sea").click()
    page.get_by_label("Your own twist").fill("learns to whistle")
    page.get_by_text("Funny", exact=True).click()
    page.get_by_text("Short · 100-200 words").click()
    assert query(page) == {"character": "a friendly robot", "setting": "under the sea", "twist": "learns to whistle",
                           "theme": "funny", "length": "short"}
    assert not page.locator("input[name=twist]:checked").count()      # typed text replaces the cards

    record_story_growth(page)
    page.get_by_role("button", name="Make my story").click()
    page.wait_for_selector(DONE, timeout=WAIT_MS)
    lengths = page.evaluate("window.storyLengths")
    assert len(set(lengths)) >= 5, lengths                             # streamed: many sizes on the way
    assert page.locator("#story-title").inner_text() == "The Friendly Robot under the Sea"
    story = story_text(page)
    assert story.startswith("Once upon a time,") and len(story) > 200
    assert float(page.locator("#status").get_attribute("data-tokens-per-second")) > 0

    with page.expect_download() as download:
        page.get_by_role("button", name="Download .txt").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "the-friendly-robot-under-the-sea.txt"
    title, body = saved.read_bytes().decode().split("\n\n", 1)
    assert title == "The Friendly Robot under the Sea"
    assert re.sub(r"\n{2,}", "", body.rstrip("\n")) == story      # the page shows paragraphs without the gaps
    with page.expect_download() as download:
        page.get_by_role("button", name="Download .md").click()
    download.value.save_as(tmp_path / "story.md")
    assert (tmp_path / "story.md").read_text().startswith("# The Friendly Robot under the Sea\n")

    page.get_by_role("button", name="Continue").click()
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=WAIT_MS)
    longer = story_text(page)
    assert longer.startswith(story) and "The next day," in longer

    page.locator("#history summary").click()
    assert page.locator("#history-list li").count() == 2                # the story and its continuation
    page.reload()
    assert page.locator("#history-list li").count() == 2                # kept in localStorage


@pytest.fixture(scope="module")
def keyed_url():
    model, tok = rambling_tiny_model()
    app = create_app(Engine(model, tok, EngineConfig(context=8192)), "tiny", static_dir=STATIC_DIR, api_key=API_KEY)
    with serve(app) as base:
        yield base


API_KEY = "s3cret key/+="


def test_page_works_under_an_api_key(page, keyed_url):
    """serve --api-key: the page takes the key from its address's fragment (never sent as part of a URL),
    drops it from the address bar, and sends it with its requests."""
    page.goto(f"{keyed_url}/?length=short#key={quote(API_KEY, safe='')}")
    assert "key=" not in page.url
    page.get_by_role("button", name="Make my story").click()
    page.wait_for_selector(DONE, timeout=WAIT_MS)
    assert len(story_text(page)) > 100


def test_page_asks_for_the_key_when_the_server_wants_one(browser, keyed_url):
    context = browser.new_context()
    page = context.new_page()
    try:
        page.once("dialog", lambda dialog: dialog.accept(API_KEY))
        page.goto(f"{keyed_url}/?length=short")
        page.get_by_role("button", name="Make my story").click()
        page.wait_for_selector(DONE, timeout=WAIT_MS)
        page.reload()                                # the key stays for this tab
        page.get_by_role("button", name="Make my story").click()
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')",
                               timeout=WAIT_MS)
    finally:
        context.close()


def test_stop_ends_the_stream_and_frees_the_slot(page, url):
    page.goto(f"{url}/?length=long")
    page.get_by_role("button", name="Make my story").click()
    page.wait_for_function("document.getElementById('story').textContent.length > 40", timeout=WAIT_MS)
    page.get_by_role("button", name="Stop").click()
    page.wait_for_selector("#status:has-text('Stopped')", timeout=WAIT_MS)
    stopped = story_text(page)
    assert page.get_by_role("button", name="Make my story").is_enabled()
    assert page.get_by_role("button", name="Stop").is_disabled()
    deadline = time.time() + 10
    while httpx.get(f"{url}/health").json()["active_requests"] and time.time() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{url}/health").json()["active_requests"] == 0
    time.sleep(0.3)
    assert story_text(page) == stopped                                  # nothing arrives after Stop


def test_surprise_me_and_reset_change_the_choices(page, url):
    page.goto(url)
    before = query(page)
    page.get_by_role("button", name="Surprise me").click()
    after = query(page)
    assert set(after) == set(before) and all(after[k] != before[k] for k in before)
    for name, value in after.items():
        assert page.locator(f"input[name={name}]:checked").get_attribute("value") == value
    page.get_by_role("button", name="Reset").click()
    assert query(page) == before


def test_url_sets_up_the_choices(page, url):
    page.goto(f"{url}/?character=a%20shy%20penguin&setting=under%20the%20sea&theme=mystery&length=long")
    assert page.get_by_label("Your own character").input_value() == "a shy penguin"
    assert not page.locator("input[name=character]:checked").count()
    assert page.locator("input[name=setting]:checked").get_attribute("value") == "under the sea"
    assert page.locator("input[name=theme]:checked").get_attribute("value") == "mystery"
    assert page.locator("input[name=length]:checked").get_attribute("value") == "long"
    assert query(page)["twist"] == "finds a glowing key"                # the default fills what the URL left out


def test_keyboard_alone_picks_and_generates(page, url):
    page.goto(f"{url}/?seed=5")                                          # a shared link may carry the seed
    page.keyboard.press("Tab")                                           # into the character cards
    assert page.evaluate("document.activeElement.name") == "character"
    page.keyboard.press("ArrowRight")
    assert query(page)["character"] == "a friendly robot"
    for _ in range(30):                                                 # on to the Make my story button
        if page.evaluate("document.activeElement.id") == "make":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "make"
    page.keyboard.press("Enter")
    page.wait_for_selector(DONE, timeout=WAIT_MS)
    assert story_text(page).startswith("Once upon a time,")
    assert page.locator("#status").inner_text().endswith("seed 5") and "seed" not in query(page)


def test_read_aloud_highlights_the_sentence_being_spoken(browser, url):
    context = browser.new_context()
    # A stand-in speech engine (headless chromium has no voices): it "speaks" each sentence for 50 ms.
    context.add_init_script("""
        window.spokenSentences = [];
        const queue = [];
        let busy = false;
        const next = () => {
            const u = queue.shift();
            if (!u) { busy = false; return; }
            busy = true;
            window.spokenSentences.push(u.text);
            u.onstart && u.onstart();
            setTimeout(() => { u.onend && u.onend(); next(); }, 50);
        };
        Object.defineProperty(window, "speechSynthesis", {configurable: true, value: {
            speak(u) { queue.push(u); if (!busy) next(); },
            cancel() { queue.length = 0; },
        }});
        Object.defineProperty(window, "SpeechSynthesisUtterance", {configurable: true,
                                                                  value: function (text) { this.text = text; }});
    """)
    page = context.new_page()
    page.goto(f"{url}/?length=short")
    page.get_by_role("button", name="Make my story").click()
    page.wait_for_selector(DONE, timeout=WAIT_MS)
    page.get_by_role("button", name="Read aloud").click()
    assert page.get_by_role("button", name="Read aloud").get_attribute("aria-pressed") == "true"
    page.wait_for_selector("#story .sentence.speaking", state="attached")
    highlighted = page.evaluate("document.querySelector('#story .sentence.speaking')?.textContent")
    assert highlighted is None or highlighted in page.evaluate("window.spokenSentences")
    page.wait_for_function("window.spokenSentences.length === document.querySelectorAll('#story .sentence').length")
    page.wait_for_selector("#story .sentence.speaking", state="detached")    # the end: no highlight left
    context.close()

    bare = browser.new_context()
    bare.add_init_script("Object.defineProperty(window, 'speechSynthesis', {value: undefined});")
    page = bare.new_page()
    page.goto(url)
    assert page.get_by_role("button", name="Read aloud").is_disabled()   # guarded, not an error
    bare.close()


def test_phone_sized_screen_has_no_sideways_scrolling(browser, url):
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(url)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.get_by_role("button", name="Make my story").is_visible()
    context.close()


@pytest.mark.real
def test_real_model_story_in_the_browser(browser, default_lm, tmp_path):
    app = create_app(Engine.from_lm(default_lm), "gemma-3-270m", static_dir=STATIC_DIR)
    with serve(app) as base:
        context = browser.new_context(viewport={"width": 1000, "height": 900})
        page = context.new_page()
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{base}/?character=a%20curious%20cat&setting=in%20a%20magical%20forest"
                  "&twist=finds%20a%20glowing%20key&theme=friendship&length=short")
        record_story_growth(page)
        page.get_by_role("button", name="Make my story").click()
        page.wait_for_selector(DONE, timeout=240_000)
        status = page.locator("#status")
        ttft, rate = float(status.get_attribute("data-ttft")), float(status.get_attribute("data-tokens-per-second"))
        print(f"\nreal model in the browser: first token after {ttft:.2f} s, {rate:.1f} tokens/s")
        story = story_text(page)
        assert len(set(page.evaluate("window.storyLengths"))) >= 10
        assert len(story.split()) >= 40 and story.rstrip()[-1] in ".!?\"'”’)"      # ends on a full sentence
        shot = os.environ.get("STORY_SCREENSHOT") or str(tmp_path / "story.png")
        page.screenshot(path=shot, full_page=True)
        context.close()
        assert errors == []
