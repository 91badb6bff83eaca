"""The OpenAI-compatible HTTP server: routes, SSE streaming, errors in OpenAI's JSON shape.

Handlers only validate, tokenize, submit to the Engine and read their own request's events; the engine's
thread owns the model. A client that disconnects cancels its request at once (its slot frees on the next
engine step). The route `/` is left free: `create_app(..., static_dir=...)` mounts a folder there (the story
page, which writes through `POST /v1/story`: tinygemma/story.py builds its prompt).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import Engine, Event, GenerationRequest, QueueFullError, RequestHandle
from ..errors import ContextLengthError
from ..sampling import SamplingParams
from ..story import StoryChoices, StoryPrompt, finish_story, story_prompt
from ..structured import ConstraintError, grammar_for
from .metrics import render_metrics
from .protocol import MAX_TOKENS_DEFAULT, ChatCompletionRequest, CompletionRequest, SamplingFields, StoryRequest

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 << 20            # a larger request body is refused (413)
MAX_PROMPT_CHARS_PER_TOKEN = 32     # text beyond context * this cannot fit: refused before tokenizing
RETRY_AFTER = "1"                   # seconds, on 503
# Story sampling: Gemma's top-k/top-p; a light repetition penalty keeps the small base model from looping.
STORY_TOP_K = 64
STORY_TOP_P = 0.95
STORY_REPETITION_PENALTY = 1.05


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers


def error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    """Refuses oversized bodies (413) and, with an API key, requests to /v1 and /metrics without it (401).

    Plain ASGI middleware: Starlette's BaseHTTPMiddleware would hide client disconnects from the routes.
    """

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            response = self.refusal(scope)
            if response is not None:
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, scope) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return error_response(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        path = scope["path"]
        if self.api_key and (path.startswith("/v1/") or path == "/metrics"):
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return error_response(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                      "authentication_error", "invalid_api_key",
                                      headers={"WWW-Authenticate": "Bearer"})
        return None


def create_app(engine: Engine, model_name: str, api_key: str | None = None,
               static_dir: str | Path | None = None, instruction_tuned: bool = False) -> FastAPI:
    """The ASGI app. It starts the engine on startup and closes it on shutdown.

    static_dir: a folder served at `/` (the story page). instruction_tuned: /v1/story prompts through the
    chat template rather than a story-book page to continue.
    """

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(engine.close)

    app = FastAPI(title="tinygemma", lifespan=lifespan, docs_url=None, redoc_url=None)
    tokenizer = engine.tokenizer
    vocab = engine.model.config.vocab_size

    app.add_middleware(Guard, api_key=api_key)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return error_response(e.status, e.message, e.type, e.code, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, e: RequestValidationError):
        errors = e.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return error_response(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return error_response(400, message, param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), "invalid_request_error" if e.status_code < 500
                              else "server_error", headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request, e: Exception):
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(e).__name__}", "server_error")

    @app.get("/health")
    async def health():
        return {"status": "ok", **engine.stats()}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(render_metrics(engine), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": model_name, "object": "model", "created": 0, "owned_by": "tinygemma"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        if body.echo or body.suffix:
            raise APIError(400, "echo and suffix are not supported", param="echo" if body.echo else "suffix")

        def encode():
            prompt = body.prompt
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
                if len(prompt) != 1:
                    raise APIError(400, "only one prompt per request is supported", param="prompt")
                prompt = prompt[0]
            if isinstance(prompt, str):
                check_prompt_chars(len(prompt))
                return tokenizer.encode(prompt, add_bos=True)
            if not prompt:
                raise APIError(400, "prompt is empty", param="prompt")
            return list(prompt)

        ids = await anyio.to_thread.run_sync(encode)
        return await respond(request, body, ids, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]

        def encode():
            check_prompt_chars(sum(len(m["content"]) for m in messages))
            try:
                return tokenizer.encode_chat(messages)
            except ValueError as e:
                raise APIError(400, str(e), param="messages") from None

        ids = await anyio.to_thread.run_sync(encode)
        if body.max_completion_tokens is not None:
            body.max_tokens = body.max_completion_tokens
        return await respond(request, body, ids, chat=True)

    def check_prompt_chars(n: int) -> None:
        if n > engine.context * MAX_PROMPT_CHARS_PER_TOKEN:
            raise APIError(400, f"prompt of {n} characters cannot fit the context of {engine.context} tokens",
                           code="context_length_exceeded", param="messages")

    def generation_request(body: SamplingFields, ids: list[int]) -> GenerationRequest:
        if body.logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs")
        params = SamplingParams(temperature=body.temperature, top_k=min(body.top_k, vocab), top_p=body.top_p,
                                min_p=body.min_p, repetition_penalty=body.repetition_penalty,
                                presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                                seed=body.seed)
        return GenerationRequest(ids, params, max_tokens=body.max_tokens or MAX_TOKENS_DEFAULT,
                                 stop=body.stop_strings(), grammar=grammar(body))

    def grammar(body: SamplingFields) -> str | None:
        fmt = body.response_format
        kinds = {}
        if fmt is not None and fmt.type == "json_object":
            kinds["json_object"] = True
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise APIError(400, "response_format json_schema needs a 'json_schema' object",
                               param="response_format")
            kinds["json_schema"] = fmt.json_schema.schema_
        if body.guided_choice is not None:
            kinds["choices"] = body.guided_choice
        if body.guided_regex is not None:
            kinds["regex"] = body.guided_regex
        if not kinds:
            return None
        if len(kinds) > 1:
            raise APIError(400, "give only one of response_format (json), guided_choice and guided_regex")
        try:
            return grammar_for(**kinds)
        except ConstraintError as e:
            raise APIError(400, str(e), param="response_format") from None

    async def respond(request: Request, body: SamplingFields, ids: list[int], chat: bool):
        handle, events = await submit(generation_request(body, ids), chat)
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": model_name}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(handle, events, meta, chat, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await collect(request, handle, events, meta, chat)

    async def submit(generation: GenerationRequest, chat: bool) -> tuple[RequestHandle, asyncio.Queue[Event]]:
        """Hand a request to the engine; its events arrive on the returned queue. Refusals become APIErrors."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def submit_now():
            return engine.submit(generation, on_event=lambda e: loop.call_soon_threadsafe(events.put_nowait, e))

        try:
            handle = await anyio.to_thread.run_sync(submit_now)
        except ContextLengthError as e:
            raise APIError(400, str(e), code="context_length_exceeded", param="messages" if chat else "prompt")
        except QueueFullError as e:
            raise APIError(503, str(e), "server_error", "server_busy", headers={"Retry-After": RETRY_AFTER})
        except ConstraintError as e:
            raise APIError(400, str(e), param="response_format")
        except RuntimeError as e:
            raise APIError(503, str(e), "server_error", headers={"Retry-After": RETRY_AFTER})
        except ValueError as e:
            raise APIError(400, str(e))
        return handle, events

    async def collect(request, handle, events, meta, chat) -> JSONResponse:
        parts = []
        finished = False
        watcher = asyncio.create_task(cancel_on_disconnect(request, handle))
        try:
            while True:
                event = await events.get()
                parts.append(event.text)
                if event.finish_reason is not None:
                    finished = True
                    break
        finally:
            watcher.cancel()
            if not finished:
                handle.cancel()
        check_failure(event)
        text = "".join(parts)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": event.finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": event.finish_reason, "logprobs": None}
        return JSONResponse({**meta, "object": "chat.completion" if chat else "text_completion",
                             "choices": [choice], "usage": usage(event)})

    async def stream(handle, events, meta, chat, include_usage):
        obj = "chat.completion.chunk" if chat else "text_completion"
        finished = False

        def chunk(text: str | None, finish_reason: str | None = None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else (
                    {"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
            return sse({**meta, "object": obj, "choices": [choice]})

        try:
            if chat:
                yield chunk(None, first=True)
            while True:
                event = await events.get()
                if event.finish_reason is not None:
                    finished = True
                    if event.finish_reason in ("error", "cancelled"):
                        yield sse({"error": failure_body(event)})
                        return
                    yield chunk(event.text, event.finish_reason)
                    break
                if event.text:
                    yield chunk(event.text)
            if include_usage:
                yield sse({**meta, "object": obj, "choices": [], "usage": usage(event)})
            yield "data: [DONE]\n\n"
        finally:
            if not finished:
                handle.cancel()

    @app.post("/v1/story")
    async def story(body: StoryRequest):
        choices = StoryChoices(body.character, body.setting, body.twist, body.theme, body.length)
        prompt = story_prompt(choices, instruction_tuned, body.story)

        def encode():
            if prompt.messages is not None:
                return tokenizer.encode_chat(prompt.messages)
            return tokenizer.encode(prompt.text, add_bos=True)

        ids = await anyio.to_thread.run_sync(encode)
        params = SamplingParams(temperature=body.temperature, top_k=STORY_TOP_K, top_p=STORY_TOP_P,
                                repetition_penalty=STORY_REPETITION_PENALTY, seed=body.seed)
        handle, events = await submit(GenerationRequest(ids, params, prompt.max_tokens, prompt.stop), chat=False)
        return StreamingResponse(story_stream(handle, events, prompt), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return _with_static(app, static_dir)


async def story_stream(handle: RequestHandle, events: asyncio.Queue[Event], prompt: StoryPrompt):
    """SSE for /v1/story: {"title", "text": opening}, {"text"} pieces, then {"finish_reason", "story", "usage"}.

    "story" is the whole text finished by story.finish_story (cut to its last full sentence): the page shows
    it in place of the pieces.
    """
    parts = [prompt.opening]
    finished = False
    try:
        yield sse({"title": prompt.title, "text": prompt.opening})
        while True:
            event = await events.get()
            if event.finish_reason is not None:
                finished = True
                break
            parts.append(event.text)
            yield sse({"text": event.text})
        if event.finish_reason in ("error", "cancelled"):
            yield sse({"error": failure_body(event)})
            return
        parts.append(event.text)
        yield sse({"text": event.text, "finish_reason": event.finish_reason,
                   "story": finish_story("".join(parts)), "usage": usage(event)})
        yield "data: [DONE]\n\n"
    finally:
        if not finished:
            handle.cancel()


def _with_static(app: FastAPI, static_dir: str | Path | None) -> FastAPI:
    if static_dir is not None:
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=str(static_dir), html=True), name="static")
    return app


async def cancel_on_disconnect(request: Request, handle) -> None:
    """Cancel the request when its client goes away (the body is read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    handle.cancel()


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def usage(event: Event) -> dict:
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": event.cached_tokens}}


def failure_body(event: Event) -> dict:
    if event.finish_reason == "cancelled":
        return {"message": "the server is shutting down", "type": "server_error", "param": None,
                "code": "cancelled"}
    return {"message": event.error or "generation failed", "type": "server_error", "param": None, "code": None}


def check_failure(event: Event) -> None:
    if event.finish_reason == "cancelled":
        raise APIError(503, "the server is shutting down", "server_error", headers={"Retry-After": RETRY_AFTER})
    if event.finish_reason == "error":
        raise APIError(500, event.error or "generation failed", "server_error")
