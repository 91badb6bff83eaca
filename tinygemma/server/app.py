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
from starlette.routing import Match, Mount

from ..engine import Engine, Event, GenerationRequest, QueueFullError, RequestHandle
from ..errors import ContextLengthError
from ..sampling import SamplingParams
from ..story import StoryChoices, StoryPrompt, finish_story, story_prompt
from ..structured import ConstraintError, grammar_for, lltokenizer
from ..tokenize_pool import TokenizerPool
from .metrics import render_metrics
from .protocol import MAX_TOKENS_DEFAULT, ChatCompletionRequest, CompletionRequest, SamplingFields, StoryRequest

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 << 20            # a larger request body is refused (413)
MAX_PROMPT_CHARS_PER_TOKEN = 32     # text beyond context * this cannot fit: refused before tokenizing
RETRY_AFTER = "1"                   # seconds, on 503
ENGINE_CHECK_SECONDS = 1.0          # a handler waiting for events checks this often that the engine still runs
API_PREFIXES = ("/v1/",)
API_PATHS = ("/v1", "/health", "/metrics")
# OpenAI request fields this server does not implement: refused with 400 when given (not silently ignored).
UNSUPPORTED_FIELDS = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "logit_bias",
                      "audio", "modalities", "prediction", "web_search_options", "top_logprobs")
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


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
BODY_METHODS = ("POST", "PUT", "PATCH")


def host_allowed(host_header: str, allowed: tuple[str, ...] | None) -> bool:
    """Whether a Host header ("name", "name:port", "[v6]:port") names one of `allowed` (None: any)."""
    if allowed is None:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    return any(host == a or a.startswith("*.") and host.endswith(a[1:]) for a in allowed)


def too_large() -> JSONResponse:
    """413, and the connection closed after it: the server does not read (and parse) the rest of the body."""
    return error_response(413, f"request body larger than {MAX_BODY_BYTES} bytes", headers={"Connection": "close"})


class Guard:
    """In front of every route: the Host allowlist (400), the API key on /v1 and /metrics (401), and the body
    size limit (413) however the body arrives (Content-Length or chunked: it is read here, at most
    MAX_BODY_BYTES of it, before the app sees it).

    Plain ASGI middleware: Starlette's BaseHTTPMiddleware would hide client disconnects from the routes.
    """

    def __init__(self, app, api_key: str | None, allowed_hosts: tuple[str, ...] | None):
        self.app, self.allowed_hosts = app, allowed_hosts
        self.api_key = api_key.encode("utf-8") if api_key is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            response = self.refusal(scope)
            if response is None and scope["method"] in BODY_METHODS:
                response, receive = await self.read_body(receive)
            if response is not None:
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, scope) -> JSONResponse | None:
        headers = dict(scope["headers"])       # raw bytes: a key is compared as UTF-8 bytes
        host = headers.get(b"host")
        if host is not None and not host_allowed(host.decode("latin-1"), self.allowed_hosts):
            return error_response(400, f"Host {host.decode('latin-1')!r} is not allowed by this server "
                                       "(serve --allowed-hosts)", param="Host")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return too_large()
        path = scope["path"]
        if self.api_key is not None and (path.startswith("/v1/") or path == "/metrics"):
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                return error_response(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                      "authentication_error", "invalid_api_key",
                                      headers={"WWW-Authenticate": "Bearer"})
        return None

    @staticmethod
    async def read_body(receive):
        """(413 response or None, a receive that replays the body read): the body is read here, whole, and
        refused as soon as it passes MAX_BODY_BYTES, whatever Content-Length said (or did not say)."""
        pieces, size, replay = [], 0, []
        while True:
            message = await receive()
            if message["type"] != "http.request":         # the client went away: let the app see it
                replay.append(message)
                break
            pieces.append(message.get("body", b""))
            size += len(pieces[-1])
            if size > MAX_BODY_BYTES:
                return too_large(), receive
            if not message.get("more_body", False):
                break
        if pieces:                                       # the body as one message, before any disconnect
            replay.insert(0, {"type": "http.request", "body": b"".join(pieces), "more_body": False})

        async def replayed():
            return replay.pop(0) if replay else await receive()

        return None, replayed


def create_app(engine: Engine, model_name: str, api_key: str | None = None,
               static_dir: str | Path | None = None, instruction_tuned: bool = False,
               allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS) -> FastAPI:
    """The ASGI app. It starts the engine on startup and closes it on shutdown.

    api_key: required as 'Authorization: Bearer KEY' on /v1 and /metrics (None: no key; "" is refused).
    static_dir: a folder served at `/` (the story page). instruction_tuned: /v1/story prompts through the
    chat template rather than a story-book page to continue. allowed_hosts: the names the Host header may
    give (port aside; "*.example.com" for subdomains; None: any) against DNS rebinding.
    """
    if api_key is not None and not api_key.strip():
        raise ValueError("the API key is empty: give a real key, or none to serve without one")
    tokenizing = TokenizerPool(engine.tokenizer)

    @asynccontextmanager
    async def lifespan(app):
        # Built before serving, not by the first request that needs them: building llguidance's view of a
        # 262,144-token vocabulary is ~1 s of Python holding the GIL, which would stall every stream.
        await anyio.to_thread.run_sync(lltokenizer, engine.tokenizer)
        await anyio.to_thread.run_sync(tokenizing.start)
        engine.start()
        try:
            yield
        finally:
            tokenizing.close()
            await anyio.to_thread.run_sync(engine.close)

    app = FastAPI(title="tinygemma", lifespan=lifespan, docs_url=None, redoc_url=None)
    vocab = engine.model.config.vocab_size

    app.add_middleware(Guard, api_key=api_key, allowed_hosts=allowed_hosts)

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

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        if not engine.alive:
            return JSONResponse({"status": "error", "error": engine.failure or "the engine is not running",
                                 **engine.stats()}, status_code=503)
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
        refuse_unsupported(body)
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
                return tokenizing.encode(prompt, add_bos=True)
            if not prompt:
                raise APIError(400, "prompt is empty", param="prompt")
            return list(prompt)

        ids = await tokenize(encode)
        return await respond(request, body, ids, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        refuse_unsupported(body)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]

        def encode():
            check_prompt_chars(sum(len(m["content"]) for m in messages))
            try:
                return tokenizing.encode_chat(messages)
            except ValueError as e:
                raise APIError(400, str(e), param="messages") from None

        ids = await tokenize(encode)
        if body.max_completion_tokens is not None:
            body.max_tokens = body.max_completion_tokens
        return await respond(request, body, ids, chat=True)

    async def tokenize(encode):
        try:
            return await anyio.to_thread.run_sync(encode)
        except RuntimeError as e:       # the tokenizer worker died (e.g. out of memory): this request alone
            raise APIError(500, str(e), "server_error") from None

    def refuse_unsupported(body) -> None:
        """OpenAI fields this server cannot honour are refused (400), never silently ignored."""
        for name in UNSUPPORTED_FIELDS:
            value = getattr(body, name)
            if value not in (None, False, "none") and value != [] and value != {}:   # "none": no tools
                raise APIError(400, f"'{name}' is not supported by this server", param=name,
                               code="unsupported_parameter")

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
                event = await next_event(events)
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
                event = await next_event(events)
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
                return tokenizing.encode_chat(prompt.messages)
            return tokenizing.encode(prompt.text, add_bos=True, parse_special=False)   # choices are text

        ids = await tokenize(encode)
        params = SamplingParams(temperature=body.temperature, top_k=STORY_TOP_K, top_p=STORY_TOP_P,
                                repetition_penalty=STORY_REPETITION_PENALTY, seed=body.seed)
        handle, events = await submit(GenerationRequest(ids, params, prompt.max_tokens, prompt.stop), chat=False)
        return StreamingResponse(story_stream(handle, events, prompt, next_event), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def next_event(events: asyncio.Queue[Event]) -> Event:
        """The next event of a request; an error event if the engine thread died meanwhile (never hangs)."""
        while True:
            try:
                return await asyncio.wait_for(events.get(), ENGINE_CHECK_SECONDS)
            except asyncio.TimeoutError:
                if not engine.alive:
                    return Event("", "error", error=engine.failure or "the engine stopped")

    return _with_static(app, static_dir)


async def story_stream(handle: RequestHandle, events: asyncio.Queue[Event], prompt: StoryPrompt, next_event):
    """SSE for /v1/story: {"title", "text": opening}, {"text"} pieces, then {"finish_reason", "story", "usage"}.

    "story" is the whole text finished by story.finish_story (cut to its last full sentence): the page shows
    it in place of the pieces.
    """
    parts = [prompt.opening]
    finished = False
    try:
        yield sse({"title": prompt.title, "text": prompt.opening})
        while True:
            event = await next_event(events)
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


class StaticMount(Mount):
    """The page's files at `/`, but not the API's paths: an unknown /v1 path is a JSON 404, a known one with
    the wrong method a 405 (the router's answers), instead of the static folder's 404."""

    def matches(self, scope):
        path = scope.get("path", "")
        if path.startswith(API_PREFIXES) or path in API_PATHS:
            return Match.NONE, {}
        return super().matches(scope)


def _with_static(app: FastAPI, static_dir: str | Path | None) -> FastAPI:
    if static_dir is not None:
        from fastapi.staticfiles import StaticFiles

        app.router.routes.append(StaticMount("/", StaticFiles(directory=str(static_dir), html=True), name="static"))
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
    if event.error_type == "invalid_request":
        return {"message": event.error, "type": "invalid_request_error", "param": None, "code": None}
    return {"message": event.error or "generation failed", "type": "server_error", "param": None, "code": None}


def check_failure(event: Event) -> None:
    if event.finish_reason == "cancelled":
        raise APIError(503, "the server is shutting down", "server_error", headers={"Retry-After": RETRY_AFTER})
    if event.finish_reason == "error" and event.error_type == "invalid_request":
        raise APIError(400, event.error or "invalid request")
    if event.finish_reason == "error":
        raise APIError(500, event.error or "generation failed", "server_error")
