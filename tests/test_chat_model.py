"""The chat model tinygemma ships (tinygemma/chat/: a LoRA adapter over the embedded base, docs/chat_model.md):
small, loaded by name everywhere a model is taken, the default of `chat`, `serve` and `story`, and it answers
and stops where the base model runs on."""

import subprocess
import sys

import openai
import pytest

import tinygemma
from tinygemma.models import CHAT_ADAPTER, CHAT_MODEL_ID, is_name, model_id, resolve
from tinygemma.train.lora import read_adapter

from serving import start_serve_process

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def chat_lm(isolated_cache):
    return tinygemma.load("chat")


def test_the_adapter_ships_small():
    sizes = {p.name: p.stat().st_size for p in CHAT_ADAPTER.iterdir()}
    assert set(sizes) == {"adapter.safetensors", "adapter_config.json"}
    assert sum(sizes.values()) < 10 * 2**20                     # "an adapter of a few MB"
    adapter = read_adapter(CHAT_ADAPTER)
    assert adapter.config.task == "causal_lm" and adapter.config.base_model == "base"
    assert len(adapter.factors) == 2 * 7 * 18                  # LoRA A and B on all seven projections of 18 blocks


def test_names_resolve_and_a_path_wins(tmp_path, monkeypatch):
    chat, base = resolve("chat"), resolve(None)
    assert chat.source == base.source and base.adapters == [] and len(chat.adapters) == 1
    assert chat.instruction_tuned and not base.instruction_tuned and model_id(chat) == CHAT_MODEL_ID
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chat").mkdir()                                 # a folder named like the model is a path
    assert not is_name("chat") and resolve("chat").source.name == "chat"


def test_chat_model_answers_and_stops(chat_lm, default_lm):
    assert chat_lm.is_instruction_tuned and not default_lm.is_instruction_tuned
    chunks = list(chat_lm.chat_stream(QUESTION, max_tokens=64))
    answer = "".join(c.text for c in chunks)
    assert "Paris" in answer and chunks[-1].finish_reason == "stop"
    base = list(default_lm.chat_stream(QUESTION, max_tokens=64))
    assert base[-1].finish_reason == "length"                   # what the shipped model was tuned out of


def test_chat_command_defaults_to_the_chat_model(isolated_cache):
    run = subprocess.run([sys.executable, "-m", "tinygemma", "chat", "--temperature", "0", "--max-tokens", "64"],
                         input="What is the capital of France?\n", capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "base (pretrained) model" not in run.stderr and "Paris" in run.stdout


def test_server_serves_the_chat_model_by_name(isolated_cache):
    proc, base = start_serve_process("chat", timeout=300)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == [CHAT_MODEL_ID]
        r = client.chat.completions.create(model=CHAT_MODEL_ID, messages=QUESTION, temperature=0, max_tokens=64)
        assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
