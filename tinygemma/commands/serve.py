"""tinygemma serve: an OpenAI-compatible HTTP server with continuous batching and structured output."""

from __future__ import annotations

import sys

from .common import add_model_args, load_model

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_QUEUE = 64
DEFAULT_CTX = 8192
DEFAULT_CACHE_MB = 1024


def build_parser(p):
    add_model_args(p)
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="requests generating at once")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help="requests waiting for a slot; more get 503 with Retry-After")
    p.add_argument("--ctx", type=int, default=DEFAULT_CTX, help="tokens per request, prompt plus output")
    p.add_argument("--cache-mb", type=int, default=DEFAULT_CACHE_MB,
                   help="memory for caches kept for follow-up turns (0 = no reuse)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 and /metrics")
    p.add_argument("--model-name", help="model id shown by /v1/models (default: from the file name)")
    return p


def main(args) -> int:
    import uvicorn

    from ..engine import Engine, EngineConfig
    from ..server import STATIC_DIR, create_app

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    config = EngineConfig(max_batch=args.max_batch, max_queue=args.max_queue, context=args.ctx,
                          idle_cache_bytes=max(args.cache_mb, 0) << 20)     # checked before the slow load
    lm = load_model(args)
    engine = Engine.from_lm(lm, config)
    name = args.model_name or (lm.weights.source.stem if lm.weights is not None else "tinygemma")
    app = create_app(engine, name, api_key=args.api_key, static_dir=STATIC_DIR,
                     instruction_tuned=lm.is_instruction_tuned)
    print(f"tinygemma: serving {name} on http://{args.host}:{args.port}/v1 "
          f"(batch {config.max_batch}, queue {config.max_queue}, context {engine.context}); "
          f"story page at http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
