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
SHUTDOWN_GRACE = 5          # seconds uvicorn waits for connections after the engine has cancelled their requests


def build_parser(p):
    add_model_args(p, default="chat")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="requests generating at once")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help="requests waiting for a slot; more get 503 with Retry-After")
    p.add_argument("--ctx", type=int, default=DEFAULT_CTX, help="tokens per request, prompt plus output")
    p.add_argument("--cache-mb", type=int, default=DEFAULT_CACHE_MB,
                   help="memory for caches kept for follow-up turns (0 = no reuse)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 and /metrics "
                   "(the story page takes it from its address: http://HOST:PORT/#key=KEY)")
    p.add_argument("--allowed-hosts", metavar="NAMES",
                   help="comma-separated names the Host header may give, against DNS rebinding ('*' = any; "
                        "'*.example.com' for subdomains; default: localhost, 127.0.0.1 and ::1 when bound to "
                        "a loopback address, any otherwise)")
    p.add_argument("--model-name", help="model id shown by /v1/models (default: from the file name)")
    return p


def main(args) -> int:
    import uvicorn

    from ..engine import Engine, EngineConfig
    from ..models import model_id
    from ..server import STATIC_DIR, create_app

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key is empty: give a real key, or leave the flag out to serve without one")
    allowed_hosts = allowed_hosts_for(args.host, args.allowed_hosts)
    config = EngineConfig(max_batch=args.max_batch, max_queue=args.max_queue, context=args.ctx,
                          idle_cache_bytes=max(args.cache_mb, 0) << 20)     # checked before the slow load
    lm = load_model(args, default="chat")
    engine = Engine.from_lm(lm, config)
    name = args.model_name or model_id(lm.resolved)
    app = create_app(engine, name, api_key=args.api_key, static_dir=STATIC_DIR,
                     instruction_tuned=lm.is_instruction_tuned, allowed_hosts=allowed_hosts)
    print(f"tinygemma: serving {name} on http://{args.host}:{args.port}/v1 "
          f"(batch {config.max_batch}, queue {config.max_queue}, context {engine.context}); "
          f"story page at http://{args.host}:{args.port}/", file=sys.stderr)
    graceful_server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                   timeout_graceful_shutdown=SHUTDOWN_GRACE), engine).run()
    return 0


def graceful_server(config, engine):
    """uvicorn's Server, but SIGTERM / Ctrl-C first stops the engine: requests in flight end at once
    (a 503 or an SSE error "the server is shutting down") instead of keeping the server up until they
    finish or their clients give up. (uvicorn is imported here, not at the top: the CLI starts faster.)"""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            engine.stop()                      # non-blocking: the engine thread cancels everything
            super().handle_exit(sig, frame)

    return Server(config)


def allowed_hosts_for(host: str, flag: str | None) -> tuple[str, ...] | None:
    """The Host allowlist: --allowed-hosts if given, else the loopback names when bound to loopback."""
    from ..server.app import LOOPBACK_HOSTS

    if flag is not None:
        names = tuple(n.strip().lower() for n in flag.split(",") if n.strip())
        if not names:
            raise ValueError("--allowed-hosts is empty: give names, or '*' for any")
        return None if "*" in names else names
    loopback = host in LOOPBACK_HOSTS or host.startswith("127.")
    return (*LOOPBACK_HOSTS, host) if loopback else None
