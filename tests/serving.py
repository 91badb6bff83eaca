"""A real uvicorn server on a free loopback port, in a thread, for the server tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import uvicorn


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app):
    """Run `app` on 127.0.0.1:<free port>; yields the base URL ("http://127.0.0.1:PORT")."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def start_serve_process(model: str, *flags: str, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """`python -m tinygemma serve --model MODEL FLAGS` on a free loopback port, one OpenMP thread; returns the
    process (stderr piped, text) and its base URL once /health answers 200."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tinygemma", "serve", "--model", model, "--port", str(port),
                             *flags], env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return proc, base
        except httpx.ConnectError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError(f"tinygemma serve did not start: {proc.stderr.read()}")
            time.sleep(0.2)
