"""The engine's counters and gauges in Prometheus' text format (no client library needed)."""

from __future__ import annotations

from ..engine import Engine

PREFIX = "tinygemma"


def render_metrics(engine: Engine) -> str:
    stats = engine.stats()
    m = engine.metrics
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]):
        lines.append(f"# HELP {PREFIX}_{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}_{name} {kind}")
        for suffix_labels, value in samples:
            lines.append(f"{PREFIX}_{name}{suffix_labels} {value:g}")

    metric("queue_depth", "gauge", "Requests waiting for a slot.", [("", stats["queue_depth"])])
    metric("active_requests", "gauge", "Requests prefilling or generating.", [("", stats["active_requests"])])
    metric("tokens_per_second", "gauge", "Generated tokens per second over the last 10 s.",
           [("", stats["tokens_per_second"])])
    metric("requests_total", "counter", "Finished requests by finish reason.",
           [(f'{{finish_reason="{reason}"}}', n) for reason, n in sorted(m.finished.items())] or [("", 0)])
    metric("rejected_requests_total", "counter", "Requests refused because the queue was full.",
           [("", m.rejected)])
    metric("prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", [("", m.prompt_tokens)])
    metric("prefill_tokens_total", "counter", "Prompt tokens actually computed.", [("", m.prefill_tokens)])
    metric("generated_tokens_total", "counter", "Generated tokens.", [("", m.generated_tokens)])
    metric("cache_reused_tokens_total", "counter", "Prompt tokens served from an earlier request's cache.",
           [("", m.reused_tokens)])
    metric("cache_reuse_total", "counter",
           "Prompt cache lookups: hit (continues a request), partial (copy of a shared prefix), "
           "fallback (shared prefix no longer in the sliding window: recomputed), miss.",
           [('{result="hit"}', m.reuse_hits), ('{result="partial"}', m.reuse_partial),
            ('{result="fallback"}', m.reuse_fallbacks), ('{result="miss"}', m.reuse_misses)])
    metric("idle_caches", "gauge", "Caches of finished requests kept for follow-ups.", [("", stats["idle_caches"])])
    metric("idle_cache_bytes", "gauge", "Memory of those caches.", [("", stats["idle_cache_bytes"])])
    metric("idle_cache_evictions_total", "counter", "Idle caches dropped to stay within memory.",
           [("", stats["idle_cache_evictions"])])
    metric("engine_steps_total", "counter", "Engine steps (one batched decode plus prompt chunks).",
           [("", m.steps)])
    hist = m.ttft
    cumulative, samples = 0, []
    for bound, count in zip([*map(str, hist.buckets), "+Inf"], hist.counts):
        cumulative += count
        samples.append((f'_bucket{{le="{bound}"}}', cumulative))
    samples += [("_sum", hist.total), ("_count", hist.count)]
    metric("time_to_first_token_seconds", "histogram", "Time from submission to the first token.", samples)
    return "\n".join(lines) + "\n"
