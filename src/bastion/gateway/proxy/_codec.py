"""The server side of the OpenAI Chat Completions wire format.

Untrusted JSON bodies are validated with pydantic here (the edge) and turned into core
`ModelRequest`s; core `ModelResponse`s and stream events are turned back into OpenAI JSON.
The client side of the same format (calling providers) lives with the wire formats; this
module only serves it.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bastion.types import (
    ImagePart,
    Message,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    OutputSchema,
    Part,
    RunContext,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolResult,
    ToolSpec,
    Usage,
)

# --- request bodies (pydantic at the edge) ---------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextContent(_Body):
    type: Literal["text"]
    text: str


class ImageURL(_Body):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageContent(_Body):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = TextContent | ImageContent


class FunctionCallBody(_Body):
    name: str
    arguments: str = "{}"


class ToolCallBody(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallBody


class ChatMessage(_Body):
    # Clients echo back assistant messages with fields we do not use (`refusal`, `audio`,
    # `annotations`); accepting them keeps multi-turn conversations working.
    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallBody] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Body):
    # Wider than OpenAI's ^[a-zA-Z0-9_-]{1,64}$ on purpose: MCP-style names such as
    # `files.read_file` are accepted and mapped to a provider-legal name on the way upstream
    # (bastion.gateway.ToolNames); the client gets its own names back.
    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.:/-]+$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolDef(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Body):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionBody(_Body):
    """`POST /v1/chat/completions`. Unknown fields are rejected (naming the field), as OpenAI does."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    user: str | None = None
    # Passed through to the upstream wire format untouched.
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    # Accepted and not forwarded: the gateway sets its own key per (tenant, agent, thread), so
    # one tenant's client cannot steer requests into another tenant's cache shard.
    prompt_cache_key: str | None = Field(default=None, max_length=1024)
    metadata: dict[str, str] | None = None
    store: bool | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return v


_PASSTHROUGH = (
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
    "reasoning_effort",
    "service_tier",
    "metadata",
    "store",
)


class BadRequest(Exception):
    """A request body the proxy refuses; `param` names the offending field (OpenAI's `param`)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        self.message = message
        self.param = param
        self.code = code
        super().__init__(message)


def parse_body(raw: bytes) -> ChatCompletionBody:
    """Validate a raw JSON body; raise `BadRequest` with a message naming the field."""
    if not raw.strip():
        raise BadRequest("request body is empty; send a JSON chat completion request", code="invalid_json")
    try:
        return ChatCompletionBody.model_validate_json(raw)
    except ValidationError as e:
        raise _bad_request_from(e) from None


def _bad_request_from(e: ValidationError) -> BadRequest:
    errors = e.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return BadRequest(f"request body is not valid JSON: {first['msg']}", code="invalid_json")
    parts: list[str] = []
    for err in errors[:3]:
        loc = _loc(err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unrecognized request argument {loc!r}")
        elif err["type"] == "missing":
            parts.append(f"{loc!r} is required")
        else:
            parts.append(f"{loc!r}: {err['msg']}")
    more = f" (and {len(errors) - 3} more errors)" if len(errors) > 3 else ""
    return BadRequest("invalid request body: " + "; ".join(parts) + more, param=_loc(first["loc"]))


def _loc(loc: tuple[int | str, ...]) -> str:
    # Union members show up in the location (`str`, `list[...]`, `function-after[...]`); drop them.
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif "[" in item or item in {"str", "int", "float", "bool", "none"}:
            continue
        else:
            out += f".{item}" if out else item
    return out


def to_model_request(body: ChatCompletionBody, context: RunContext) -> ModelRequest:
    """Map a validated body onto the core request (messages, tools, output schema, settings)."""
    settings = ModelSettings(
        temperature=body.temperature,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        top_p=body.top_p,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop,
        seed=body.seed,
    )
    for name in _PASSTHROUGH:
        value = getattr(body, name)
        if value is not None:
            settings.extra[name] = value
    output: OutputSchema | None = None
    fmt = body.response_format
    if fmt is not None:
        if fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise BadRequest(
                    "response_format of type 'json_schema' needs a 'json_schema' object with 'name' and 'schema'",
                    param="response_format.json_schema",
                )
            output = OutputSchema(fmt.json_schema.name, fmt.json_schema.schema_, strict=bool(fmt.json_schema.strict))
        elif fmt.type == "json_object":
            settings.extra["response_format"] = {"type": "json_object"}
    tools = [
        ToolSpec(t.function.name, t.function.description, t.function.parameters, bool(t.function.strict))
        for t in body.tools or ()
    ]
    choice = body.tool_choice
    named = None if choice is None or isinstance(choice, str) else choice.function.name
    tool_choice = choice if isinstance(choice, str) else named or "auto"
    if named is not None and named not in {t.name for t in tools}:
        raise BadRequest(
            f"tool_choice names the function {named!r}, which is not in 'tools'",
            param="tool_choice.function.name",
        )
    if body.user and context.user is None:
        context.user = body.user
    return ModelRequest(
        messages=[_message(m, i) for i, m in enumerate(body.messages)],
        tools=tools,
        tool_choice=tool_choice,
        output=output,
        settings=settings,
        context=context,
    )


def _message(m: ChatMessage, index: int) -> Message:
    role = "system" if m.role == "developer" else m.role
    if role == "tool":
        if not m.tool_call_id:
            raise BadRequest(
                f"messages[{index}] has role 'tool' but no 'tool_call_id'; set it to the id of the "
                "assistant tool call it answers",
                param=f"messages[{index}].tool_call_id",
            )
        text = _text_only(m, index)
        return Message("tool", [ToolResult(m.tool_call_id, m.name or "", text)])
    parts: list[Part] = []
    if isinstance(m.content, str):
        if m.content:
            parts.append(TextPart(m.content))
    elif m.content is not None:
        for c in m.content:
            if isinstance(c, TextContent):
                parts.append(TextPart(c.text))
            elif role == "user":
                parts.append(ImagePart(c.image_url.url))
            else:
                raise BadRequest(
                    f"messages[{index}]: image content is only allowed in user messages",
                    param=f"messages[{index}].content",
                )
    if m.tool_calls:
        if role != "assistant":
            raise BadRequest(
                f"messages[{index}]: only assistant messages may carry 'tool_calls'",
                param=f"messages[{index}].tool_calls",
            )
        for j, call in enumerate(m.tool_calls):
            parts.append(ToolCall(call.function.name, _arguments(call.function.arguments, index, j), call.id))
    return Message(role, parts, name=m.name)


def _text_only(m: ChatMessage, index: int) -> str:
    if m.content is None or isinstance(m.content, str):
        return m.content or ""
    texts: list[str] = []
    for c in m.content:
        if not isinstance(c, TextContent):
            raise BadRequest(f"messages[{index}]: tool messages may only hold text", param=f"messages[{index}].content")
        texts.append(c.text)
    return "".join(texts)


def _arguments(raw: str, index: int, call: int) -> dict[str, Any]:
    try:
        args = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as e:
        raise BadRequest(
            f"messages[{index}].tool_calls[{call}].function.arguments is not valid JSON: {e}",
            param=f"messages[{index}].tool_calls[{call}].function.arguments",
        ) from None
    if not isinstance(args, dict):
        raise BadRequest(
            f"messages[{index}].tool_calls[{call}].function.arguments must be a JSON object",
            param=f"messages[{index}].tool_calls[{call}].function.arguments",
        )
    return args


# --- responses ------------------------------------------------------------------------------

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}


def finish_reason(response: ModelResponse) -> str:
    return _FINISH.get(response.finish_reason, "stop")


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
    }


def completion_json(response: ModelResponse, *, completion_id: str, model: str) -> dict[str, Any]:
    """A whole `chat.completion` object. `model` is the name the client asked for (a tier or
    alias); the concrete upstream model may carry internal URLs and goes in a header instead."""
    text = response.message.text
    calls = response.message.tool_calls
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        message["tool_calls"] = [_tool_call_json(c) for c in calls]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(response), "logprobs": None}],
        "usage": usage_json(response.usage),
    }


class ChunkWriter:
    """Builds `chat.completion.chunk` objects for one stream: the same id, model and creation
    time on every chunk, the role on the first delta, `usage: null` on every chunk when the
    client asked for a final usage chunk (as OpenAI does)."""

    def __init__(self, *, completion_id: str, model: str, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self._started_calls: set[int] = set()

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        return chunk

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}])

    def role(self) -> dict[str, Any]:
        return self._delta({"role": "assistant", "content": "", "refusal": None})

    def text(self, text: str) -> dict[str, Any]:
        return self._delta({"content": text})

    def tool_call(self, delta: ToolCallDelta) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": delta.index}
        function: dict[str, Any] = {"arguments": delta.arguments_delta}
        if delta.index not in self._started_calls:
            # OpenAI sends id, type and name once, on a call's first fragment.
            self._started_calls.add(delta.index)
            entry["id"] = delta.id or f"call_{self.completion_id[-12:]}_{delta.index}"
            entry["type"] = "function"
            function["name"] = delta.name or ""
        entry["function"] = function
        return self._delta({"tool_calls": [entry]})

    def finish(self, response: ModelResponse) -> dict[str, Any]:
        return self._delta({}, finish_reason(response))

    def usage(self, usage: Usage) -> dict[str, Any]:
        return self._chunk([], usage_json(usage))


__all__ = [
    "BadRequest",
    "ChatCompletionBody",
    "ChunkWriter",
    "completion_json",
    "parse_body",
    "to_model_request",
    "usage_json",
]
