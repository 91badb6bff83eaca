"""tinygemma story: the story generator page. Starts `tinygemma serve` and prints the page's address once
the server answers (or opens it in a browser with --open)."""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.parse
import webbrowser

from . import serve

READY_TIMEOUT = 600.0        # seconds to wait for the server (the first run converts the model, ~15 s)
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def build_parser(p):
    serve.build_parser(p)
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    return p


def main(args) -> int:
    host = "127.0.0.1" if args.host in WILDCARD_HOSTS else args.host
    url = f"http://{f'[{host}]' if ':' in host else host}:{args.port}/"
    if args.api_key:            # the page reads it from the fragment, which browsers never send to the server
        url += f"#key={urllib.parse.quote(args.api_key, safe='')}"
    threading.Thread(target=announce, args=(host, args.port, url, args.open), daemon=True).start()
    return serve.main(args)


def announce(host: str, port: int, url: str, open_browser: bool) -> None:
    """Wait until the server accepts connections, then print the page's address (and open it)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        return
    print(f"tinygemma: the story page is ready: {url}", file=sys.stderr, flush=True)
    if open_browser and not webbrowser.open(url):
        print("tinygemma: no web browser found: open the address yourself", file=sys.stderr, flush=True)
