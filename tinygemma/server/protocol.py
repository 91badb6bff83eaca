"""OpenAI-compatible request models: every field validated (pydantic), limits as named constants.

Extensions to OpenAI's fields: `top_k`, `min_p`, `repetition_penalty`, and two constraints besides
`response_format`: `guided_choice` (the output is exactly one of these strings) and `guided_regex` (the
output matches this regex), named as vLLM names them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_MESSAGES = 1024
MAX_CHOICES = 1024
MAX_TOKENS_DEFAULT = 512          # when a request gives none (then clamped to what the context leaves)
MAX_SEED = 2**63 - 1

# Gemma's recommended sampling, the defaults of requests that do not say.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_K = 64
DEFAULT_TOP_P = 0.95

StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]


class _Model(BaseModel):
    # Unknown fields are ignored (clients send many); NaN and infinities are refused.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)


class JsonSchemaFormat(_Model):
    name: str | None = Field(None, max_length=256)
    description: str | None = None
    schema_: dict | bool = Field({"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Model):
    include_usage: bool = False


class SamplingFields(_Model):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = Field(None, max_length=256)
    max_tokens: int | None = Field(None, ge=1)            # clamped to what the context leaves
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    top_p: float = Field(DEFAULT_TOP_P, gt=0.0, le=1.0)
    top_k: int = Field(DEFAULT_TOP_K, ge=0)                # clamped to the vocabulary
    min_p: float = Field(0.0, ge=0.0, lt=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    seed: int | None = Field(None, ge=-MAX_SEED, le=MAX_SEED)
    stop: StopString | list[StopString] | None = Field(None, max_length=MAX_STOP_STRINGS)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    response_format: ResponseFormat | None = None
    guided_choice: list[Annotated[str, StringConstraints(min_length=1)]] | None = Field(
        None, min_length=1, max_length=MAX_CHOICES)
    guided_regex: str | None = Field(None, min_length=1)
    user: str | None = None
    # OpenAI fields this server does not implement: declared so that a request giving them is refused (400,
    # app.UNSUPPORTED_FIELDS) instead of having them silently ignored.
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    logit_bias: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None
    top_logprobs: Any = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)   # OpenAI's newer name for max_tokens


class CompletionRequest(SamplingFields):
    # One prompt: text or token ids (a list holding exactly one of either is accepted too).
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=1)


MAX_CHOICE_CHARS = 120            # one story choice (a character, a setting, a twist, a theme)
MAX_STORY_CHARS = 16_000          # the story so far, sent back by Continue
StoryChoice = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_CHOICE_CHARS)]


class StoryRequest(_Model):
    """POST /v1/story: the story page's five choices; `story` (the text so far) asks for more of it."""

    character: StoryChoice
    setting: StoryChoice
    twist: StoryChoice
    theme: StoryChoice
    length: Literal["short", "medium", "long"] = "short"
    story: str = Field("", max_length=MAX_STORY_CHARS)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
