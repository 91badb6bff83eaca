"""The load benchmark's client and report (bench/load.py) against a real tiny-model server: 2 users x 2 turns."""

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from tinygemma import fast
from tinygemma.engine import Engine, EngineConfig
from tinygemma.server import create_app

from serving import serve
from tinymodels import random_tensors, tiny_config, tiny_tokenizer


def _load_module():
    path = Path(__file__).resolve().parents[1] / "bench" / "load.py"
    spec = importlib.util.spec_from_file_location("bench_load", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module         # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


load = _load_module()


@pytest.fixture(scope="module")
def url():
    # A window wider than the conversations: a follow-up whose re-encoded reply differs from the generated
    # tokens (likely with random weights) still reuses the shared prefix (a copy cut back to it).
    cfg = tiny_config(tie_word_embeddings=False, max_position_embeddings=1 << 16, sliding_window=512)
    engine = Engine(fast.build_fast_model(cfg, random_tensors(cfg, 0)), tiny_tokenizer(), EngineConfig(context=1024))
    with serve(create_app(engine, "tiny")) as base:
        yield base


def test_conversations_are_distinct_and_shaped():
    convs = load.conversations(25, 4)
    assert len(convs) == 25 and all(len(c["messages"]) == 4 for c in convs)
    assert len({c["messages"][0] for c in convs}) == 25          # every user has their own first request
    assert len({c["system"] for c in convs}) == 25               # no prefix shared across users or runs
    assert load.conversations(2, 2, run=1)[0]["system"] != convs[0]["system"]


def test_percentile():
    assert load.percentile([], 50) is None
    assert load.percentile([3.0], 95) == 3.0
    assert load.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert load.percentile(list(map(float, range(101))), 95) == pytest.approx(95.0)


def test_load_benchmark_against_tiny_server(url, tmp_path):
    args = load.add_arguments(argparse.ArgumentParser()).parse_args(
        ["--users", "2", "--turns", "2", "--max-tokens", "8", "--runs", "2", "--threads", "1"])
    # The server runs in this process (a thread): its CPU time and RSS are read from our own pid.
    measured = load.measure(url, os.getpid(), "tinygemma", "tiny", args)
    measured["peak_rss_mib"] = load.memory_mib(os.getpid())["peak_rss_mib"]

    assert len(measured["runs"]) == 2 and len(measured["rss_after_each_run_mib"]) == 2
    for run in measured["runs"]:
        assert run["errors"] == [] and run["failed_requests"] == 0 and run["not_sent"] == 0
        assert run["requests"] == 4 and len(run["turns"]) == 4
        assert 0 < run["completion_tokens"] <= 4 * 8 and run["completion_tps"] > 0
        assert 0 < run["ttft_p50_s"] <= run["ttft_p95_s"]
        assert 0 < run["itl_p50_s"] <= run["itl_p95_s"]
        assert run["server_cpu_s"] > 0 and run["server_rss_mib"] > 0
        assert run["energy_per_conversation_j"] == pytest.approx(run["server_cpu_s"] * args.watts_per_core / 2)
        for turn in run["turns"]:
            assert turn["ok"] and turn["finish_reason"] in ("stop", "length") and turn["prompt_tokens"] > 0
            assert turn["prefill_tokens"] == turn["prompt_tokens"] - turn["cached_tokens"]
        # Follow-ups reuse their first turn's cache: at least the first turn's prompt.
        first = {t["user"]: t for t in run["turns"] if t["turn"] == 0}
        for t in (t for t in run["turns"] if t["turn"] == 1):
            assert t["cached_tokens"] >= first[t["user"]]["prompt_tokens"], t
        assert 0 < run["followup_prefill_tokens"] < run["followup_prompt_tokens"]
        # The server's own counters agree with what the responses said.
        assert run["server_metrics_delta"]["prefill"] == sum(t["prefill_tokens"] for t in run["turns"])
        assert run["server_metrics_delta"]["generated"] == run["completion_tokens"]

    result = load.build_result({"tinygemma": measured}, "tiny.gguf", args, ["a note"], load.machine_info())
    json.dumps(result)                                            # load.json is plain JSON
    head = result["headline"]["tinygemma"]
    assert head["failed_requests"] == 0 and head["completion_tps"] > 0 and head["itl_p95_ms"] > 0
    table = result["table"]
    for label in ("aggregate completion throughput", "time to first token p95", "inter-token latency p50",
                  "prefill tokens, follow-up turns", "server peak RSS", "energy per conversation",
                  "RSS after each run", "note: a note"):
        assert label in table, label
    assert "tinygemma" in table.splitlines()[1] and "llama-server" in table.splitlines()[1]


def test_missing_llama_server_is_explained(tmp_path):
    why, version = load.llama_server_flags(str(tmp_path / "llama-server"))
    assert "not an executable file" in why and version == ""
