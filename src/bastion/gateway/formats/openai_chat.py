"""OpenAI Chat Completions (`POST {base_url}/chat/completions`), also spoken by vLLM, the
llama.cpp server, Ollama and most gateways.

Structured output uses `response_format: json_schema`; streaming asks for
`stream_options.include_usage` so the last chunk carries token counts; streamed tool-call
fragments are assembled by their `index`. Invalid JSON in tool-call arguments is kept as
`{"_raw": "..."}` rather than raised. OpenAI caches prompt prefixes of 1024+ tokens on its own;
requests to OpenAI carry a `prompt_cache_key` per (tenant, agent, thread) so that one
conversation's requests reach the same cache.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, cast

from bastion.gateway._toolnames import ToolNames, request_tool_names
from bastion.gateway.formats._base import JSON, HTTPModel, parse_arguments
from bastion.gateway.formats._prompt_cache import context_cache_key
from bastion.types import (
    FinishReason,
    ImagePart,
    Message,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolResult,
    Usage,
)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def _message_to_openai(message: Message, out: list[JSON], names: ToolNames) -> None:
    role = message.role
    if role == "tool" or any(isinstance(p, ToolResult) for p in message.parts):
        for part in message.parts:
            if isinstance(part, ToolResult):
                out.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": part.content_text()})
        return
    if role == "assistant":
        text = "".join(p.text for p in message.parts if isinstance(p, TextPart))
        entry: JSON = {"role": "assistant", "content": text or None}
        calls = [p for p in message.parts if isinstance(p, ToolCall)]
        if calls:
            entry["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {
                        "name": names.provider(c.name),
                        "arguments": json.dumps(c.arguments, ensure_ascii=False),
                    },
                }
                for c in calls
            ]
        out.append(entry)
        return
    parts = message.parts
    content: str | list[JSON]
    if all(isinstance(p, TextPart) for p in parts):
        content = "".join(p.text for p in parts if isinstance(p, TextPart))
    else:
        content = []
        for p in parts:
            if isinstance(p, TextPart):
                content.append({"type": "text", "text": p.text})
            elif isinstance(p, ImagePart):
                content.append({"type": "image_url", "image_url": {"url": p.url}})
    entry = {"role": role, "content": content}
    if message.name:
        entry["name"] = message.name
    out.append(entry)


class _NotStrict(Exception):
    pass


def strict_schema(schema: JSON) -> JSON | None:
    """`schema` in the form OpenAI's strict mode accepts (every object closed with
    `additionalProperties: false`, which pydantic schemas leave out), or None when it cannot be
    strict: an object with optional properties (strict mode wants every property in `required`)
    or open to extra keys (a `dict[str, X]`). Such a schema is sent with `strict: false`, which
    OpenAI follows without the guarantee, instead of a 400 "Invalid schema"."""

    def visit(node: Any) -> Any:
        if isinstance(node, list):
            return [visit(item) for item in cast("list[Any]", node)]
        if not isinstance(node, dict):
            return node
        out: JSON = {}
        for key, value in cast("JSON", node).items():
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                out[key] = {name: visit(sub) for name, sub in cast("JSON", value).items()}
            else:
                out[key] = visit(value)
        if out.get("type") == "object":
            properties = cast("JSON", out.get("properties", {}))
            if out.get("additionalProperties", False) is not False or set(out.get("required", [])) != set(properties):
                raise _NotStrict
            out["additionalProperties"] = False
        return out

    try:
        return cast("JSON", visit(schema))
    except _NotStrict:
        return None


def build_payload(
    request: ModelRequest, model: str, *, max_tokens_key: str = "max_tokens", prompt_cache_key: bool = False
) -> JSON:
    """The Chat Completions body for `request` (without `stream`). `prompt_cache_key`: send
    OpenAI's cache routing key, derived from the tenant, agent and thread (only OpenAI's own
    API knows the field; some compatible servers reject unknown fields)."""
    names = request_tool_names(request)
    messages: list[JSON] = []
    for m in request.messages:
        _message_to_openai(m, messages, names)
    payload: JSON = {"model": model, "messages": messages}
    if request.tools:
        payload["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": names.provider(t.name),
                    "description": t.description,
                    "parameters": t.parameters,
                    **({"strict": True} if t.strict else {}),
                },
            }
            for t in request.tools
        ]
        choice = request.tool_choice
        payload["tool_choice"] = (
            choice
            if choice in ("auto", "required", "none")
            else {"type": "function", "function": {"name": names.provider(choice)}}
        )
    if request.output is not None:
        strict = strict_schema(request.output.schema) if request.output.strict else None
        payload["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": names.provider(request.output.name),
                "schema": request.output.schema if strict is None else strict,
                "strict": strict is not None,
            },
        }
    s = request.settings
    if s.temperature is not None:
        payload["temperature"] = s.temperature
    if s.max_tokens is not None:
        payload[max_tokens_key] = s.max_tokens
    if s.top_p is not None:
        payload["top_p"] = s.top_p
    if s.stop:
        payload["stop"] = s.stop
    if s.seed is not None:
        payload["seed"] = s.seed
    if prompt_cache_key and s.prompt_cache:
        payload["prompt_cache_key"] = context_cache_key(request.context)
    if s.extra:
        payload.update(s.extra)
    return payload


def parse_usage(data: JSON | None) -> Usage:
    if not data:
        return Usage(requests=1)
    prompt = data.get("prompt_tokens") or 0
    details = data.get("prompt_tokens_details") or {}
    out_details = data.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=prompt,
        output_tokens=data.get("completion_tokens") or 0,
        cache_read_tokens=details.get("cached_tokens") or 0,
        cache_write_tokens=details.get("cache_write_tokens") or 0,
        reasoning_tokens=out_details.get("reasoning_tokens") or 0,
        requests=1,
    )


class OpenAIChatModel(HTTPModel):
    """A model behind an OpenAI-compatible Chat Completions endpoint."""

    wire_format = "openai_chat"

    def payload(self, request: ModelRequest) -> JSON:
        """The Chat Completions body for `request` at this provider (also a batch line's body)."""
        # OpenAI's reasoning models reject `max_tokens`; compatible servers mostly only know it.
        official = self.provider.name == "openai"
        key = "max_completion_tokens" if official else "max_tokens"
        return build_payload(request, self.model_name, max_tokens_key=key, prompt_cache_key=official)

    @property
    def url(self) -> str:
        return self.provider.base_url + "/chat/completions"

    async def request(self, request: ModelRequest) -> ModelResponse:
        return self.parse_response(await self.post_json(self.url, self.payload(request), request), request)

    def parse_response(self, data: Any, request: ModelRequest) -> ModelResponse:
        """A Chat Completions body as a `ModelResponse` (also the body of a batch result line)."""
        names = request_tool_names(request)
        try:
            choice = data["choices"][0]
            msg = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise self.invalid("choices[0].message", data) from None
        parts: list[Any] = []
        text = msg.get("content") or msg.get("refusal")
        if text:
            parts.append(TextPart(text))
        for call in msg.get("tool_calls") or ():
            fn = call.get("function") or {}
            kwargs: JSON = {"id": call["id"]} if call.get("id") else {}
            name = names.canonical(fn.get("name", ""))
            parts.append(ToolCall(name, parse_arguments(fn.get("arguments") or ""), **kwargs))
        finish = _FINISH.get(choice.get("finish_reason") or "stop", "stop")
        if finish == "stop" and any(isinstance(p, ToolCall) for p in parts):
            finish = "tool_calls"
        return ModelResponse(
            message=Message("assistant", parts),
            usage=parse_usage(data.get("usage")),
            model=self._name,
            finish_reason=finish,
            response_id=data.get("id"),
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        payload = self.payload(request)
        names = request_tool_names(request)
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        text: list[str] = []
        calls: dict[int, list[Any]] = {}  # index -> [id, name, argument fragments]
        finish: str | None = None
        usage: JSON | None = None
        response_id: str | None = None
        done = False
        async with aclosing(self.post_sse(self.url, payload, request)) as events:
            async for _, chunk in events:
                if chunk is None:
                    done = True
                    break
                if not isinstance(chunk, dict):
                    raise self.invalid("a chunk object", chunk)
                if "error" in chunk:
                    raise self.stream_error(chunk)
                response_id = response_id or chunk.get("id")
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    piece = delta.get("content")
                    if piece:
                        text.append(piece)
                        yield TextDelta(piece)
                    for tc in delta.get("tool_calls") or ():
                        index = tc.get("index", 0)
                        fn = tc.get("function") or {}
                        slot = calls.get(index)
                        if slot is None:
                            slot = calls[index] = [None, None, []]
                        if tc.get("id"):
                            slot[0] = tc["id"]
                        if fn.get("name"):
                            slot[1] = (slot[1] or "") + fn["name"]
                        args = fn.get("arguments") or ""
                        slot[2].append(args)
                        yield ToolCallDelta(
                            index=index,
                            id=tc.get("id"),
                            name=names.canonical(fn["name"]) if fn.get("name") else None,
                            arguments_delta=args,
                        )
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        if not done and finish is None:
            raise self.stream_cut()
        parts: list[Any] = [TextPart("".join(text))] if text else []
        for index in sorted(calls):
            call_id, name, fragments = calls[index]
            kwargs = {"id": call_id} if call_id else {}
            parts.append(ToolCall(names.canonical(name or ""), parse_arguments("".join(fragments)), **kwargs))
        reason = _FINISH.get(finish or "stop", "stop")
        if reason == "stop" and calls:
            reason = "tool_calls"
        yield ResponseDone(
            ModelResponse(
                message=Message("assistant", parts),
                usage=parse_usage(usage),
                model=self._name,
                finish_reason=reason,
                response_id=response_id,
            )
        )


__all__ = ["OpenAIChatModel", "build_payload", "parse_usage"]
