"""OpenAI-compatible HTTP server over the continuous-batching engine (needs the fastapi and uvicorn packages)."""

from .app import create_app

__all__ = ["create_app"]
