"""The server side of the OpenAI Responses API (`POST /v1/responses`), mapped onto the gateway.

A Responses body becomes the same core `ModelRequest` a chat completion does (input items ->
messages, function tools, `text.format` json_schema -> structured output), so the gateway's
routing, budgets, retries and cost apply unchanged; the answer goes back as a `response`
object or as the Responses event stream. What it is not: hosted tools (web search, file
search, computer use ...), `conversation` objects, stored prompts or background mode; those
are refused with a 400 that says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion.gateway.proxy._codec import BadRequest
from bastion.types import (
    ImagePart,
    Message,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    OutputSchema,
    Part,
    Role,
    RunContext,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolResult,
    ToolSpec,
    Usage,
    new_id,
)

JSON = dict[str, Any]


class ResponsesBody(BaseModel):
    """`POST /v1/responses`. Unknown fields are rejected (naming the field), as OpenAI does;
    accepted-but-unused fields are the ones clients send routinely (`include`, `truncation` ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    input: str | list[JSON]
    instructions: str | None = None
    tools: list[JSON] | None = None
    tool_choice: Literal["auto", "none", "required"] | JSON | None = None
    text: JSON | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    reasoning: JSON | None = None
    service_tier: str | None = None
    # Accepted and not acted on: they change nothing a gateway-routed model can honour.
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    stream_options: JSON | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    # Refused with a message when set (see `_refuse_unsupported`).
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None


def parse_responses_body(raw: bytes) -> ResponsesBody:
    """Validate a raw JSON body; raise `BadRequest` naming the field."""
    from bastion.gateway.proxy._codec import _bad_request_from  # pyright: ignore[reportPrivateUsage]

    if not raw.strip():
        raise BadRequest("request body is empty; send a JSON Responses request", code="invalid_json")
    try:
        body = ResponsesBody.model_validate_json(raw)
    except ValidationError as e:
        raise _bad_request_from(e) from None
    _refuse_unsupported(body)
    return body


def _refuse_unsupported(body: ResponsesBody) -> None:
    if body.background:
        raise BadRequest(
            "background mode is not supported by Bastion's proxy; send the request without 'background' "
            "(use 'stream': true for long answers)",
            param="background",
            code="unsupported_parameter",
        )
    if body.conversation is not None:
        raise BadRequest(
            "'conversation' objects are not supported by Bastion's proxy; chain turns with "
            "'previous_response_id' instead",
            param="conversation",
            code="unsupported_parameter",
        )
    if body.prompt is not None:
        raise BadRequest(
            "stored prompts ('prompt') are not supported by Bastion's proxy; send 'instructions' and 'input'",
            param="prompt",
            code="unsupported_parameter",
        )


# --- request mapping -------------------------------------------------------------------------


def _tools(body: ResponsesBody) -> list[ToolSpec]:
    specs: list[ToolSpec] = []
    for i, tool in enumerate(body.tools or ()):
        kind = tool.get("type")
        if kind != "function":
            raise BadRequest(
                f"tools[{i}] has type {kind!r}: Bastion's proxy supports only 'function' tools, not hosted tools "
                "(web search, file search, code interpreter, computer use, MCP ...); declare the tool as a "
                "function, run it yourself and send its result back as a 'function_call_output' item",
                param=f"tools[{i}].type",
                code="unsupported_tool",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools[{i}] needs a 'name'", param=f"tools[{i}].name")
        params = tool.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise BadRequest(f"tools[{i}].parameters must be a JSON schema object", param=f"tools[{i}].parameters")
        description = tool.get("description") or ""
        specs.append(ToolSpec(name, str(description), cast("JSON", params), bool(tool.get("strict"))))
    return specs


def _tool_choice(body: ResponsesBody, tools: Sequence[ToolSpec]) -> str:
    choice = body.tool_choice
    if choice is None or isinstance(choice, str):
        return choice or "auto"
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise BadRequest(
            "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}; "
            f"{choice.get('type')!r} choices are not supported by Bastion's proxy",
            param="tool_choice",
            code="unsupported_value",
        )
    name = str(choice["name"])
    if name not in {t.name for t in tools}:
        raise BadRequest(f"tool_choice names the function {name!r}, which is not in 'tools'", param="tool_choice.name")
    return name


def _output_schema(body: ResponsesBody, settings: ModelSettings) -> OutputSchema | None:
    fmt = (body.text or {}).get("format")
    verbosity = (body.text or {}).get("verbosity")
    if verbosity is not None:
        settings.extra["verbosity"] = verbosity
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise BadRequest("text.format must be an object with a 'type'", param="text.format")
    fmt = cast("JSON", fmt)
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        settings.extra["response_format"] = {"type": "json_object"}
        return None
    if kind == "json_schema":
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not name or not isinstance(schema, dict):
            raise BadRequest(
                "text.format of type 'json_schema' needs a 'name' and a 'schema' object", param="text.format"
            )
        return OutputSchema(name, cast("JSON", schema), strict=bool(fmt.get("strict")))
    raise BadRequest(
        f"text.format.type must be 'text', 'json_object' or 'json_schema', not {kind!r}", param="text.format.type"
    )


def _content_parts(content: Any, where: str, role: str) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of content parts", param=f"{where}.content")
    parts: list[Part] = []
    for j, raw in enumerate(cast("list[Any]", content)):
        item: JSON = cast("JSON", raw) if isinstance(raw, dict) else {}
        kind = item.get("type")
        if kind in ("input_text", "output_text", "text") and isinstance(item.get("text"), str):
            if item["text"]:
                parts.append(TextPart(item["text"]))
        elif kind == "refusal" and isinstance(item.get("refusal"), str):
            parts.append(TextPart(item["refusal"]))
        elif kind == "input_image" and role == "user" and isinstance(item.get("image_url"), str):
            parts.append(ImagePart(item["image_url"]))
        else:
            raise BadRequest(
                f"{where}.content[{j}] of type {kind!r} is not supported by Bastion's proxy; send 'input_text' "
                "parts (and 'input_image' parts with an 'image_url' in user messages)",
                param=f"{where}.content[{j}]",
                code="unsupported_value",
            )
    return parts


def _output_text(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    parts = _content_parts(output, where, "tool")
    return "".join(p.text for p in parts if isinstance(p, TextPart))


def input_messages(body: ResponsesBody, history: Sequence[Message]) -> list[Message]:
    """The conversation after this request's input: `history` (from `previous_response_id`)
    then the input items. Function calls that follow an assistant message join it, as the
    chat format wants one assistant message carrying its tool calls."""
    messages = list(history)
    if isinstance(body.input, str):
        messages.append(Message.user(body.input))
        return messages
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    open_assistant: Message | None = None
    for i, item in enumerate(body.input):
        where = f"input[{i}]"
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise BadRequest(
                    f"{where}.role must be 'user', 'system', 'developer' or 'assistant'", param=f"{where}.role"
                )
            core_role = cast("Role", "system" if role == "developer" else role)
            message = Message(core_role, _content_parts(item.get("content"), where, core_role))
            messages.append(message)
            open_assistant = message if core_role == "assistant" else None
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise BadRequest(f"{where}: a function_call item needs 'call_id' and 'name'", param=where)
            call = ToolCall(name, _arguments(item.get("arguments"), where), id=call_id)
            names[call_id] = name
            if open_assistant is None:
                open_assistant = Message("assistant", [])
                messages.append(open_assistant)
            open_assistant.parts.append(call)
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise BadRequest(f"{where}: a function_call_output item needs 'call_id'", param=f"{where}.call_id")
            text = _output_text(item.get("output", ""), where)
            messages.append(Message("tool", [ToolResult(call_id, names.get(call_id, ""), text)]))
            open_assistant = None
        elif kind == "reasoning":
            continue  # we never emit reasoning items; a client echoing one back loses nothing
        else:
            raise BadRequest(
                f"{where} has type {kind!r}: Bastion's proxy accepts 'message', 'function_call' and "
                "'function_call_output' input items",
                param=f"{where}.type",
                code="unsupported_value",
            )
    return messages


def _arguments(raw: Any, where: str) -> JSON:
    if isinstance(raw, dict):
        return cast("JSON", raw)
    try:
        args = json.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    except json.JSONDecodeError as e:
        raise BadRequest(f"{where}.arguments is not valid JSON: {e}", param=f"{where}.arguments") from None
    if not isinstance(args, dict):
        raise BadRequest(f"{where}.arguments must be a JSON object", param=f"{where}.arguments")
    return cast("JSON", args)


_PASSTHROUGH = ("parallel_tool_calls", "service_tier", "metadata")


def to_model_request(body: ResponsesBody, context: RunContext, conversation: list[Message]) -> ModelRequest:
    """The core request for `body`; `conversation` is `input_messages(...)` (instructions are
    prepended here and not stored: they do not carry over to a follow-up response)."""
    settings = ModelSettings(temperature=body.temperature, max_tokens=body.max_output_tokens, top_p=body.top_p)
    for name in _PASSTHROUGH:
        value = getattr(body, name)
        if value is not None:
            settings.extra[name] = value
    effort = (body.reasoning or {}).get("effort")
    if effort is not None:
        settings.extra["reasoning_effort"] = effort
    output = _output_schema(body, settings)
    tools = _tools(body)
    tool_choice = _tool_choice(body, tools)
    if body.user and context.user is None:
        context.user = body.user
    messages = ([Message.system(body.instructions)] if body.instructions else []) + conversation
    if not messages:
        raise BadRequest("'input' is empty; send at least one input item", param="input")
    return ModelRequest(
        messages=messages, tools=tools, tool_choice=tool_choice, output=output, settings=settings, context=context
    )


# --- response objects ------------------------------------------------------------------------


def usage_json(usage: Usage) -> JSON:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> JSON:
    content: list[JSON] = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def _call_item(item_id: str, call: ToolCall, arguments: str | None = None, status: str = "completed") -> JSON:
    args = arguments if arguments is not None else json.dumps(call.arguments, ensure_ascii=False)
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": args,
        "status": status,
    }


def _status(response: ModelResponse) -> tuple[str, JSON | None]:
    if response.finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if response.finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


@dataclass(slots=True)
class ResponseShell:
    """The parts of a `response` object fixed by the request: the same on every stream event."""

    response_id: str
    body: ResponsesBody
    created_at: int = field(default_factory=lambda: int(time.time()))

    def json(
        self, *, status: str, output: list[JSON], usage: Usage | None = None, incomplete: JSON | None = None
    ) -> JSON:
        body = self.body
        tools = [{**t, "strict": bool(t.get("strict"))} for t in body.tools or ()]
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": body.model,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
            "previous_response_id": body.previous_response_id,
            "reasoning": body.reasoning,
            "store": body.store is not False,
            "temperature": body.temperature,
            "text": body.text if body.text is not None else {"format": {"type": "text"}},
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "tools": tools,
            "top_p": body.top_p,
            "truncation": body.truncation or "disabled",
            "usage": usage_json(usage) if usage is not None else None,
            "user": body.user,
            "metadata": body.metadata or {},
        }

    def final(self, response: ModelResponse, ids: OutputIds | None = None) -> JSON:
        ids = ids or OutputIds()
        output: list[JSON] = []
        text = response.message.text
        if text:
            output.append(_message_item(ids.message(), text))
        for i, call in enumerate(response.message.tool_calls):
            output.append(_call_item(ids.call(i), call, ids.arguments.get(i)))
        status, incomplete = _status(response)
        return self.json(status=status, output=output, usage=response.usage, incomplete=incomplete)


@dataclass(slots=True)
class OutputIds:
    """Item ids, shared by a stream's events and its final `response` object."""

    _message: str | None = None
    calls: dict[int, str] = field(default_factory=dict)
    arguments: dict[int, str] = field(default_factory=dict)

    def message(self) -> str:
        if self._message is None:
            self._message = new_id("msg_")
        return self._message

    def call(self, index: int) -> str:
        if index not in self.calls:
            self.calls[index] = new_id("fc_")
        return self.calls[index]


class EventWriter:
    """Turns gateway stream events into the Responses event sequence: `response.created`,
    `response.in_progress`, per item `output_item.added` -> deltas -> `.done` ->
    `output_item.done`, then `response.completed` (or `.incomplete`) with usage."""

    def __init__(self, shell: ResponseShell) -> None:
        self.shell = shell
        self.ids = OutputIds()
        self._seq = 0
        self._output_index = 0
        self._text: list[str] | None = None  # the open message item's text
        self._had_text = False
        self._text_index = 0
        self._calls: dict[int, tuple[int, str, list[str]]] = {}  # delta index -> (output index, name, args)
        self._closed_calls: set[int] = set()

    def _event(self, kind: str, **fields: Any) -> JSON:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def start(self) -> list[JSON]:
        shell = self.shell.json(status="in_progress", output=[])
        return [self._event("response.created", response=shell), self._event("response.in_progress", response=shell)]

    def text(self, delta: str) -> list[JSON]:
        events: list[JSON] = []
        item_id = self.ids.message()
        if self._text is None:
            self._text, self._text_index, self._had_text = [], self._output_index, True
            self._output_index += 1
            events.append(
                self._event(
                    "response.output_item.added",
                    output_index=self._text_index,
                    item=_message_item(item_id, "", "in_progress") | {"content": []},
                )
            )
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item_id,
                    output_index=self._text_index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            )
        self._text.append(delta)
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=self._text_index,
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        )
        return events

    def _close_text(self) -> list[JSON]:
        if self._text is None:
            return []
        text, item_id, index = "".join(self._text), self.ids.message(), self._text_index
        self._text = None
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return [
            self._event(
                "response.output_text.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self._event("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part),
            self._event("response.output_item.done", output_index=index, item=_message_item(item_id, text)),
        ]

    def tool_call(self, delta: ToolCallDelta) -> list[JSON]:
        # A message's text comes before its tool calls: the first call closes the text item.
        events = self._close_text()
        item_id = self.ids.call(delta.index)
        if delta.index not in self._calls:
            call_id = delta.id or new_id("call_")
            self._calls[delta.index] = (self._output_index, delta.name or "", [])
            item = _call_item(item_id, ToolCall(delta.name or "", {}, id=call_id), "", "in_progress")
            events.append(self._event("response.output_item.added", output_index=self._output_index, item=item))
            self._output_index += 1
        index, _, args = self._calls[delta.index]
        if delta.arguments_delta:
            args.append(delta.arguments_delta)
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item_id,
                    output_index=index,
                    delta=delta.arguments_delta,
                )
            )
        return events

    def finish(self, response: ModelResponse) -> list[JSON]:
        """Close every open item from the final response (authoritative for names, ids and
        arguments; parts the stream never showed are emitted whole), then complete."""
        events = self._close_text()
        text = response.message.text
        if text and not self._had_text:
            events += self.text(text) + self._close_text()
        for i, call in enumerate(response.message.tool_calls):
            if i not in self._calls:
                events += self.tool_call(ToolCallDelta(i, call.id, call.name, ""))
            index, _, parts = self._calls[i]
            streamed = "".join(parts)
            arguments = streamed if _same_arguments(streamed, call.arguments) else json.dumps(call.arguments)
            self.ids.arguments[i] = arguments
            item_id = self.ids.call(i)
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item_id,
                    output_index=index,
                    name=call.name,
                    arguments=arguments,
                )
            )
            events.append(
                self._event("response.output_item.done", output_index=index, item=_call_item(item_id, call, arguments))
            )
        final = self.shell.final(response, self.ids)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        events.append(self._event(kind, response=final))
        return events

    def error(self, error: JSON) -> JSON:
        """The in-band failure after headers are sent: an `error` event (OpenAI's shape)."""
        return self._event("error", code=error.get("code"), message=error.get("message", ""), param=error.get("param"))


def _same_arguments(streamed: str, parsed: JSON) -> bool:
    try:
        return bool(streamed) and json.loads(streamed) == parsed
    except ValueError:
        return False


def sse(event: JSON) -> bytes:
    """One Responses SSE frame: `event:` names the type, as OpenAI sends it."""
    from pydantic_core import to_json

    return b"event: " + str(event["type"]).encode() + b"\ndata: " + to_json(event) + b"\n\n"


__all__ = [
    "EventWriter",
    "OutputIds",
    "ResponseShell",
    "ResponsesBody",
    "input_messages",
    "parse_responses_body",
    "sse",
    "to_model_request",
    "usage_json",
]
