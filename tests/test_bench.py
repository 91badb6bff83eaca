"""The speed benchmark (tinygemma.bench) end to end on a tiny random GGUF, tinygemma engine only (no llama_cpp)."""

import json

from tinygemma.bench import speed
from tinygemma.export.gguf import save_gguf

from tinymodels import random_tensors, tiny_config, tiny_tokenizer


def test_speed_benchmark_tinygemma_only(tmp_path, capsys, monkeypatch):
    # Widths and vocabulary in multiples of 32 (int4 groups of the fast path; llama.cpp can load the file too).
    tok = tiny_tokenizer(min_size=384)
    cfg = tiny_config(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, head_dim=32,
                      query_pre_attn_scalar=32.0, tie_word_embeddings=False)
    model = tmp_path / "tiny.gguf"
    save_gguf(model, cfg, random_tensors(cfg, 0), tok)
    monkeypatch.setenv("TINYGEMMA_CACHE", str(tmp_path / "cache"))     # runner processes inherit it
    out = tmp_path / "results"

    result = speed.main(["--model", str(model), "--engines", "tinygemma", "--threads", "1", "--reps", "1",
                         "--prompt-lengths", "16,32", "--decode-tokens", "8", "--batch-sizes", "1,2",
                         "--batch-new-tokens", "4", "--out", str(out), "--no-chart"])
    printed = capsys.readouterr().out

    data = json.loads((out / "speed.json").read_text())
    assert data["table"] == result["table"]
    for field in ("machine", "model", "settings", "engines_run", "metrics", "medians", "ratios", "goals",
                  "runs", "errors", "notes", "table", "chart"):
        assert field in data, field
    for field in ("cpu_model", "cpu_features", "native_bf16", "kernel_path", "cores", "platform", "python", "torch",
                  "llama_cpp_python", "threads", "date"):
        assert field in data["machine"], field
    from tinygemma.kernels import describe
    assert data["machine"]["kernel_path"] == describe()["kernel_path"]
    assert data["model"]["path"] == str(model.resolve()) and len(data["model"]["sha256_prefix"]) == 16
    assert data["engines_run"] == ["tinygemma"]
    assert data["ratios"] == {} and data["chart"] is None

    keys = ["load_s", "single_stream_rss_mib", "peak_rss_mib", "prefill_16", "prefill_32", "decode", "batch_1", "batch_2"]
    assert [m["key"] for m in data["metrics"]] == keys
    assert all(data["medians"]["tinygemma"][k] > 0 for k in keys), data["medians"]

    [run] = data["runs"]["tinygemma"]
    assert run["engine"] == "tinygemma" and run["threads"] == 1 and run["torch_threads"] == 1
    for k in ("load_s", "import_s", "model_load_s", "peak_rss_mib", "rss_after_load_mib", "wall_s"):
        assert run[k] > 0, k
    assert run["load_s"] >= run["model_load_s"]
    assert run["rss_after_load_mib"] <= run["single_stream_rss_mib"] <= run["peak_rss_mib"]
    assert {n: p["tokens"] for n, p in run["prefill"].items()} == {"16": 16, "32": 32}
    assert all(p["seconds"] > 0 and p["tps"] > 0 for p in run["prefill"].values())
    assert run["decode"]["new_tokens"] == 8 and run["decode"]["tokens"] == 7 and run["decode"]["tps"] > 0
    assert {b: r["tokens"] for b, r in run["batch"].items()} == {"1": 4, "2": 8}
    assert all(r["seconds"] > 0 and r["tps"] > 0 for r in run["batch"].values())

    table = result["table"]
    for header in ("metric", "unit", "tinygemma", "llama.cpp", "tinygemma/llama.cpp", "goal"):
        assert header in table.splitlines()[3], header
    assert f"tinygemma kernel path: {data['machine']['kernel_path']}" in table.splitlines()[1]
    for label in ("load time", "peak RSS", "prefill, 16-token prompt", "decode, 1 stream", "aggregate decode, 2 sequences"):
        assert label in table, label
    assert table in printed
