"""The HTTP server through the official openai client and raw HTTP, against real uvicorn servers on loopback:
tiny random models for behaviour and limits, the embedded default model for batch-equals-single."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinygemma import fast
from tinygemma.engine import Engine, EngineConfig
from tinygemma.export.gguf import save_gguf
from tinygemma.server import create_app

from serving import serve, start_serve_process
from tinymodels import random_tensors, tiny_config, tiny_tokenizer

# A request that runs until cancelled: the regex allows no end before 8000 letters.
LONG = {"model": "tiny", "prompt": "once upon a time", "max_tokens": 8000, "guided_regex": "[a-z]{8000}"}
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there, the cat sat"}]


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config(tie_word_embeddings=False, max_position_embeddings=1 << 16)
    return fast.build_fast_model(cfg, random_tensors(cfg, 0)), tiny_tokenizer()


def tiny_server(tiny, **config):
    model, tok = tiny
    return serve(create_app(Engine(model, tok, EngineConfig(**config)), "tiny"))


@pytest.fixture(scope="module")
def url(tiny):
    with tiny_server(tiny, context=8192) as base:
        yield base


def client(base: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def stats(base: str) -> dict:
    return httpx.get(f"{base}/health").json()


def wait_idle(base: str, timeout: float = 5.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = stats(base)
        if s["active_requests"] == 0 and s["queue_depth"] == 0:
            return True
        time.sleep(0.02)
    return False


def test_models_health_and_metrics(url):
    assert [m.id for m in client(url).models.list().data] == ["tiny"]
    assert stats(url)["status"] == "ok"
    client(url).completions.create(model="tiny", prompt="once upon", max_tokens=3)
    text = httpx.get(f"{url}/metrics").text
    for name in ("queue_depth", "active_requests", "tokens_per_second", "time_to_first_token_seconds_bucket",
                 "cache_reuse_total", "generated_tokens_total"):
        assert f"tinygemma_{name}" in text
    assert 'tinygemma_time_to_first_token_seconds_bucket{le="+Inf"}' in text
    assert httpx.get(f"{url}/").status_code == 404          # "/" is left free for a web page


def test_chat_and_completion_with_usage(url):
    c = client(url)
    r = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    assert r.usage.prompt_tokens == len(tiny_tokenizer().encode_chat(CHAT))
    assert r.usage.total_tokens == r.usage.prompt_tokens + 6
    r = c.completions.create(model="tiny", prompt=[2, 60, 61, 62], max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 5


def test_streaming_equals_non_streaming(url):
    c = client(url)
    for kind in ("chat", "completion"):
        kwargs = dict(model="tiny", max_tokens=12, temperature=0.9, seed=7)
        if kind == "chat":
            whole = c.chat.completions.create(messages=CHAT, **kwargs)
            chunks = list(c.chat.completions.create(messages=CHAT, stream=True,
                                                    stream_options={"include_usage": True}, **kwargs))
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            assert text == whole.choices[0].message.content
            assert chunks[0].choices[0].delta.role == "assistant"
        else:
            whole = c.completions.create(prompt="the cat sat on", **kwargs)
            chunks = list(c.completions.create(prompt="the cat sat on", stream=True,
                                               stream_options={"include_usage": True}, **kwargs))
            text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
            assert text == whole.choices[0].text
        finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
        assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_batch_equals_single_over_http(tiny):
    """25 concurrent greedy requests answer exactly what each answers alone."""
    prompts = [f"the cat sat {'on ' * (i % 9)}{i}" for i in range(25)]
    with tiny_server(tiny, idle_cache_bytes=0, prefill_chunk=16) as base:
        c = client(base)

        def ask(p):
            return c.completions.create(model="tiny", prompt=p, max_tokens=10 + len(p) % 5, temperature=0).choices[0].text

        alone = [ask(p) for p in prompts]
        steps_before = int(_metric(base, "tinygemma_engine_steps_total"))
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(ask, prompts))
        steps = int(_metric(base, "tinygemma_engine_steps_total")) - steps_before
    assert together == alone
    assert steps < sum(10 + len(p) % 5 for p in prompts) / 3        # they really ran together


def _metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_disconnect_frees_the_slot_at_once(url):
    body = LONG
    with httpx.Client() as http:
        with http.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()            # kept: dropping the iterator would close the connection
            assert next(lines).startswith("data:")
            assert stats(url)["active_requests"] == 1
        # closing the response closes the connection
    assert wait_idle(url, 2.0)
    # A non-streaming request whose client gives up is cancelled too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(5.0, read=0.5))
    assert wait_idle(url, 2.0)
    assert 'finish_reason="cancelled"} 2' in httpx.get(f"{url}/metrics").text


def test_overload_answers_503_with_retry_after(tiny):
    body = {**LONG, "stream": True}
    with tiny_server(tiny, max_batch=1, max_queue=1, context=8192) as base, httpx.Client() as http:
        with http.stream("POST", f"{base}/v1/completions", json=body) as running:
            lines = running.iter_lines()        # kept: dropping the iterator would close the connection
            assert next(lines).startswith("data:")
            waiting = threading.Thread(target=lambda: http.post(f"{base}/v1/completions", timeout=30,
                                                                  json={"prompt": "x", "max_tokens": 3}))
            waiting.start()
            deadline = time.time() + 5
            while stats(base)["queue_depth"] < 1 and time.time() < deadline:
                time.sleep(0.01)
            r = httpx.post(f"{base}/v1/completions", json={**body, "stream": False})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "server_busy" and "retry later" in r.json()["error"]["message"]
            with pytest.raises(openai.APIStatusError) as e:
                client(base).completions.create(model="tiny", prompt="x", max_tokens=2)
            assert e.value.status_code == 503
        waiting.join(30)          # the waiting one ran once the slot was free
        assert _metric(base, "tinygemma_rejected_requests_total") == 2
        assert wait_idle(base)


def test_api_key(tiny):
    model, tok = tiny
    app = create_app(Engine(model, tok, EngineConfig(context=256)), "tiny", api_key="s3cret")
    with serve(app) as base:
        with pytest.raises(openai.AuthenticationError):
            client(base, api_key="wrong").models.list()
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert httpx.get(f"{base}/health").status_code == 200
        assert client(base, api_key="s3cret").completions.create(model="t", prompt="x", max_tokens=1).usage


def test_static_dir_is_served_at_root(tiny, tmp_path):
    (tmp_path / "index.html").write_text("<h1>hi</h1>")
    model, tok = tiny
    with serve(create_app(Engine(model, tok, EngineConfig(context=256)), "tiny", static_dir=tmp_path)) as base:
        assert httpx.get(f"{base}/").text == "<h1>hi</h1>"
        assert httpx.get(f"{base}/v1/models").json()["data"][0]["id"] == "tiny"


BAD_REQUESTS = [
    ("/v1/chat/completions", "{", 400),
    ("/v1/chat/completions", "[]", 400),
    ("/v1/chat/completions", "[" * 50_000, 400),
    ("/v1/chat/completions", '{"messages": []}', 400),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}', 400),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "n": 2}', 400),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "logprobs": true}', 400),
    ("/v1/chat/completions", '{"messages": [{"role": "tool", "content": "hi"}]}', 400),
    ("/v1/chat/completions", '{"messages": [{"role": "assistant", "content": "hi"}]}', 400),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', 400),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "seed": 1e30}', 400),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "stop": [""]}', 400),
    ("/v1/chat/completions", '{"messages": "hi"}', 400),
    ("/v1/completions", '{"prompt": [99999]}', 400),
    ("/v1/completions", '{"prompt": []}', 400),
    ("/v1/completions", '{"prompt": ["a", "b"]}', 400),
    ("/v1/completions", '{"prompt": "x", "echo": true}', 400),
    ("/v1/completions", '{"prompt": "' + "the cat " * 5000 + '"}', 400),
    ("/v1/completions", '{"prompt": "x", "guided_regex": "(("}', 400),
    ("/v1/completions", '{"prompt": "x", "guided_choice": []}', 400),
    ("/v1/completions", '{"prompt": "x", "guided_choice": ["a"], "guided_regex": "a"}', 400),
    ("/v1/completions", '{"prompt": "x", "response_format": {"type": "json_schema"}}', 400),
    ("/v1/completions", '{"prompt": "x", "response_format": {"type": "xml"}}', 400),
    ("/v1/completions", '{"prompt": "x", "response_format": {"type": "json_schema", '
                        '"json_schema": {"schema": {"type": "nope"}}}}', 400),
    ("/v1/nothing", "{}", 404),
]


@pytest.mark.parametrize("path, body, status", BAD_REQUESTS)
def test_malformed_requests_get_4xx_in_openai_shape(url, path, body, status):
    r = httpx.post(f"{url}{path}", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and "Traceback" not in error["message"] and "\n" not in error["message"]


def test_limits_are_clamped_or_refused(url):
    c = client(url)
    # max_tokens beyond the context is clamped, not refused; top_k beyond the vocabulary likewise.
    r = c.completions.create(model="tiny", prompt=[2] + [60] * 8185, max_tokens=10**9, temperature=0.5,
                             extra_body={"top_k": 10**9})
    assert r.usage.completion_tokens <= 6 and r.usage.prompt_tokens == 8186
    assert raw_status(url, b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1073741824\r\n\r\n") == 413
    assert httpx.get(f"{url}/v1/completions").status_code == 405
    with pytest.raises(openai.BadRequestError, match="context"):
        c.completions.create(model="tiny", prompt=[2] + [60] * 9000, max_tokens=1)


def raw_status(base: str, request: bytes) -> int:
    """Send raw bytes (for what HTTP clients refuse to send); returns the response's status code."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        return int(sock.recv(1024).split(b" ")[1])


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                           | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=3),
                           max_leaves=8)
FIELDS = ["model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
          "frequency_penalty", "repetition_penalty", "seed", "stop", "n", "stream", "stream_options",
          "logprobs", "response_format", "guided_choice", "guided_regex", "prompt", "messages",
          "max_completion_tokens", "echo", "tools", "tool_choice", "functions", "logit_bias", "parallel_tool_calls"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
       body=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6),
       base=st.sampled_from([{"prompt": "the cat", "max_tokens": 2},
                             {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}]))
def test_random_requests_never_cause_a_server_error(url, path, body, base):
    # json.dumps writes infinities as Infinity, as a careless client would: the server must refuse them.
    r = httpx.post(f"{url}{path}", content=json.dumps({**base, **body}), timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.json()["error"]["message"] and "\n" not in r.json()["error"]["message"]
    elif "text/event-stream" not in r.headers["content-type"]:
        assert r.json()["usage"]["completion_tokens"] >= 0


def test_serve_command(tmp_path):
    """`tinygemma serve` as a real process: binds loopback, answers, stops on SIGINT."""
    cfg = tiny_config()
    save_gguf(tmp_path / "tiny.gguf", cfg, random_tensors(cfg, 0), tiny_tokenizer())
    proc, base = start_serve_process(str(tmp_path / "tiny.gguf"), "--dtype", "float32", "--max-batch", "4",
                                     "--ctx", "128")
    port = base.rsplit(":", 1)[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        r = client(base).completions.create(model="tiny", prompt="once", max_tokens=3)
        assert r.usage.completion_tokens <= 3 and client(base).models.list().data[0].id == "tiny"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err and f"127.0.0.1:{port}" in err
    bad = subprocess.run([sys.executable, "-m", "tinygemma", "serve", "--model", str(tmp_path / "tiny.gguf"),
                          "--max-batch", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "tinygemma: error: engine: max_batch must be >= 1, got 0"]


# ------------------------------------------------------------------------- the embedded default model


@pytest.mark.real
def test_real_model_batch_equals_single_and_reuse(default_lm):
    """The default fast model: 25 concurrent greedy chats give exactly what each gives alone; then a
    follow-up turn reuses its conversation's cache."""
    engine = Engine.from_lm(default_lm, EngineConfig(idle_cache_bytes=0))
    topics = ["the sea", "a red fox", "winter", "bread", "the moon", "trains", "music", "a garden", "rain",
              "mountains", "a lighthouse", "coffee", "a library", "bees", "the desert", "a violin", "snow",
              "a river", "the city at night", "an old clock", "a kite", "autumn leaves", "a bridge", "tea",
              "the stars"]
    messages = [[{"role": "user", "content": f"Write one sentence about {t}."}] for t in topics]
    with serve(create_app(engine, "gemma")) as base:
        c = client(base)

        def ask(m):
            r = c.chat.completions.create(model="gemma", messages=m, max_tokens=10, temperature=0)
            return r.choices[0].message.content

        alone = [ask(m) for m in messages[:8]]
        with ThreadPoolExecutor(len(messages)) as pool:
            together = list(pool.map(ask, messages))
    assert together[:8] == alone
    assert all(together)

    with serve(create_app(Engine.from_lm(default_lm), "gemma")) as base:
        c = client(base)
        history = [{"role": "user", "content": "Name a colour."}]
        first = c.chat.completions.create(model="gemma", messages=history, max_tokens=8, temperature=0)
        history += [{"role": "assistant", "content": first.choices[0].message.content},
                    {"role": "user", "content": "And another one?"}]
        second = c.chat.completions.create(model="gemma", messages=history, max_tokens=8, temperature=0)
        cached = second.usage.prompt_tokens_details.cached_tokens
        assert 0 < cached < second.usage.prompt_tokens
        hits = _metric(base, 'tinygemma_cache_reuse_total{result="hit"}') + \
            _metric(base, 'tinygemma_cache_reuse_total{result="partial"}')
        assert hits == 1
