"""OpenAI-compatible HTTP server over the continuous-batching engine (needs the fastapi and uvicorn packages)."""

from pathlib import Path

from .app import create_app

STATIC_DIR = Path(__file__).parent / "static"      # the story page, served at /

__all__ = ["create_app", "STATIC_DIR"]
