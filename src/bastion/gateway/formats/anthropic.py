"""Anthropic Messages API (`POST {base_url}/messages`).

System messages are split out into `system`; tool calls and results are `tool_use` /
`tool_result` blocks (results travel in a user turn; consecutive same-role turns are merged
because the API requires alternation). Structured output is a forced tool named after the
`OutputSchema`: its input comes back as the response text (JSON), not as a tool call.
Usage is normalised: Anthropic's `input_tokens` excludes cached input, so cache reads and
writes are added back. Invalid JSON in streamed tool input is kept as `{"_raw": "..."}`.
Prompt caching: `cache_control` breakpoints are placed automatically (see `add_breakpoints`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from bastion.errors import ModelHTTPError, RateLimitError
from bastion.gateway._toolnames import request_tool_names
from bastion.gateway.formats._base import (
    JSON,
    HTTPModel,
    merged_turns,
    parse_arguments,
    split_data_uri,
    unavailable,
)
from bastion.gateway.formats._prompt_cache import CHARS_PER_TOKEN, IMAGE_TOKENS, anthropic_min_tokens
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

DEFAULT_MAX_TOKENS = 4096
_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _block(part: Any) -> JSON | None:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, ImagePart):
        inline = split_data_uri(part.url)
        if inline is not None:
            media_type, data = inline
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": part.arguments}
    if isinstance(part, ToolResult):
        block: JSON = {"type": "tool_result", "tool_use_id": part.tool_call_id, "content": part.content_text()}
        if part.is_error:
            block["is_error"] = True
        return block
    return None


def build_payload(request: ModelRequest, model: str) -> JSON:
    names = request_tool_names(request)

    def block(part: Any) -> JSON | None:
        converted = _block(part)
        if converted is not None and isinstance(part, ToolCall):
            converted["name"] = names.provider(part.name)
        return converted

    system, turns = merged_turns(request.messages, "assistant", block)
    messages: list[JSON] = [{"role": role, "content": blocks} for role, blocks in turns]
    s = request.settings
    payload: JSON = {"model": model, "messages": messages, "max_tokens": s.max_tokens or DEFAULT_MAX_TOKENS}
    if system:
        payload["system"] = "\n\n".join(system)
    tools: list[JSON] = [
        {"name": names.provider(t.name), "description": t.description, "input_schema": t.parameters}
        for t in request.tools
    ]
    choice = request.tool_choice
    if request.output is not None:
        output_name = names.provider(request.output.name)
        tools.append(
            {
                "name": output_name,
                "description": "Give your final answer by calling this tool with the answer as its input.",
                "input_schema": request.output.schema,
            }
        )
        # With other tools on offer the model may still call them; otherwise it must answer.
        payload["tool_choice"] = {"type": "any"} if request.tools else {"type": "tool", "name": output_name}
    elif request.tools:
        payload["tool_choice"] = (
            {"type": "auto"}
            if choice == "auto"
            else {"type": "any"}
            if choice == "required"
            else {"type": "none"}
            if choice == "none"
            else {"type": "tool", "name": names.provider(choice)}
        )
    if tools:
        payload["tools"] = tools
    if s.temperature is not None:
        payload["temperature"] = s.temperature
    if s.top_p is not None:
        payload["top_p"] = s.top_p
    if s.stop:
        payload["stop_sequences"] = s.stop
    if s.prompt_cache:
        add_breakpoints(payload, anthropic_min_tokens(model) * CHARS_PER_TOKEN)
    if s.extra:
        payload.update(s.extra)
    return payload


def _block_chars(block: JSON) -> int:
    kind = block.get("type")
    if kind == "text":
        return len(block["text"])
    if kind == "tool_use":
        return len(block["name"]) + len(json.dumps(block["input"]))
    if kind == "tool_result":
        return len(block["content"])
    return IMAGE_TOKENS * CHARS_PER_TOKEN


def _mark(block: JSON) -> None:
    block["cache_control"] = {"type": "ephemeral"}


def add_breakpoints(payload: JSON, minimum_chars: int) -> None:
    """Mark up to 4 cache breakpoints, each only where the prefix up to it (tools, system, then
    messages, the order Anthropic caches in) is long enough to be cached:

    - the last tool: the tools survive a change of the system prompt;
    - the system prompt: shared by every conversation of the agent;
    - the end of the previous request of this conversation (the user turn before the last
      assistant turn): what was written last time is read even when the new turns hold more
      than the ~20 blocks Anthropic looks back from a breakpoint;
    - the last message: written now, read by the next request, which extends it.
    """
    size = 0
    tools: list[JSON] | None = payload.get("tools")
    if tools:
        size += len(json.dumps(tools))
        if size >= minimum_chars:
            tools[-1] = {**tools[-1], "cache_control": {"type": "ephemeral"}}
    system: str | None = payload.get("system")
    if system:
        size += len(system)
        if size >= minimum_chars:
            payload["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    messages: list[JSON] = payload["messages"]
    if not messages:
        return
    last = len(messages) - 1
    previous = next((i - 1 for i in range(last - 1, 0, -1) if messages[i]["role"] == "assistant"), -1)
    for i, message in enumerate(messages):
        blocks: list[JSON] = message["content"]
        size += sum(_block_chars(b) for b in blocks)
        if (i == previous or i == last) and size >= minimum_chars:
            _mark(blocks[-1])


def parse_usage(data: JSON | None) -> Usage:
    if not data:
        return Usage(requests=1)
    read = data.get("cache_read_input_tokens") or 0
    write = data.get("cache_creation_input_tokens") or 0
    return Usage(
        input_tokens=(data.get("input_tokens") or 0) + read + write,
        output_tokens=data.get("output_tokens") or 0,
        cache_read_tokens=read,
        cache_write_tokens=write,
        requests=1,
    )


class AnthropicModel(HTTPModel):
    """A Claude model behind the Anthropic Messages API."""

    wire_format = "anthropic"

    @property
    def url(self) -> str:
        return self.provider.base_url + "/messages"

    def _finish(
        self, request: ModelRequest, parts: list[Any], stop_reason: str | None
    ) -> tuple[list[Any], FinishReason]:
        output = request.output
        if output is not None:
            # The forced output tool is the answer, not a call for the agent loop to run.
            answer = [p for p in parts if isinstance(p, ToolCall) and p.name == output.name]
            if answer:
                rest = [p for p in parts if not (isinstance(p, ToolCall) and p.name == output.name)]
                # Any preamble text is dropped: the response text must be the JSON answer.
                calls = [p for p in rest if isinstance(p, ToolCall)]
                parts = [TextPart(json.dumps(answer[0].arguments, ensure_ascii=False)), *calls]
                return parts, ("tool_calls" if calls else "stop")
        finish = _FINISH.get(stop_reason or "end_turn", "stop")
        return parts, finish

    async def request(self, request: ModelRequest) -> ModelResponse:
        return self.parse_response(
            await self.post_json(self.url, build_payload(request, self.model_name), request), request
        )

    def parse_response(self, data: Any, request: ModelRequest) -> ModelResponse:
        """A Messages API body as a `ModelResponse` (also the message of a batch result)."""
        names = request_tool_names(request)
        content = data.get("content") if isinstance(data, dict) else None
        if not isinstance(content, list):
            raise self.invalid("a content list", data)
        parts: list[Any] = []
        for block in content:
            kind = block.get("type")
            if kind == "text":
                parts.append(TextPart(block.get("text", "")))
            elif kind == "tool_use":
                arguments = block.get("input")
                parts.append(
                    ToolCall(
                        names.canonical(block.get("name", "")),
                        arguments if isinstance(arguments, dict) else {},
                        id=block["id"],
                    )
                )
        parts, finish = self._finish(request, parts, data.get("stop_reason"))
        return ModelResponse(
            message=Message("assistant", parts),
            usage=parse_usage(data.get("usage")),
            model=self._name,
            finish_reason=finish,
            response_id=data.get("id"),
        )

    def _stream_error(self, data: JSON) -> Exception:
        error = data.get("error") or {}
        kind = error.get("type", "")
        body = json.dumps(data)
        if kind == "overloaded_error" or kind == "api_error":
            return unavailable(
                f"{self._name}: the provider failed mid-stream ({kind}: {error.get('message', '')}); retry later",
                model=self._name,
                status=529 if kind == "overloaded_error" else 500,
                body=body,
            )
        if kind == "rate_limit_error":
            return RateLimitError(429, body, model=self._name)
        return ModelHTTPError(400, body, model=self._name)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        payload = build_payload(request, self.model_name)
        names = request_tool_names(request)
        payload["stream"] = True
        output_name = request.output.name if request.output is not None else None
        blocks: dict[int, list[Any]] = {}  # block index -> [kind, text|id, name, fragments, tool index]
        usage: JSON = {}
        stop_reason: str | None = None
        response_id: str | None = None
        finished = False
        tool_count = 0
        async with aclosing(self.post_sse(self.url, payload, request)) as events:
            async for event, data in events:
                if not isinstance(data, dict):
                    continue
                kind = data.get("type", event)
                if kind == "content_block_delta":
                    block = blocks.get(data.get("index", 0))
                    delta = data.get("delta") or {}
                    if block is None:
                        continue
                    if delta.get("type") == "text_delta":
                        piece = delta.get("text", "")
                        block[1].append(piece)
                        if piece:
                            yield TextDelta(piece)
                    elif delta.get("type") == "input_json_delta":
                        piece = delta.get("partial_json", "")
                        block[3].append(piece)
                        if block[4] is not None and piece:
                            yield ToolCallDelta(index=block[4], arguments_delta=piece)
                elif kind == "content_block_start":
                    cb = data.get("content_block") or {}
                    index = data.get("index", 0)
                    if cb.get("type") == "text":
                        blocks[index] = ["text", [cb.get("text", "")], None, [], None]
                    elif cb.get("type") == "tool_use":
                        name = names.canonical(cb.get("name", ""))
                        is_answer = name == output_name
                        tool_index = None if is_answer else tool_count
                        if not is_answer:
                            tool_count += 1
                        blocks[index] = ["tool", cb.get("id"), name, [], tool_index]
                        if tool_index is not None:
                            yield ToolCallDelta(index=tool_index, id=cb.get("id"), name=name)
                elif kind == "message_start":
                    message = data.get("message") or {}
                    response_id = message.get("id")
                    usage.update(message.get("usage") or {})
                elif kind == "message_delta":
                    stop_reason = (data.get("delta") or {}).get("stop_reason") or stop_reason
                    usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
                elif kind == "message_stop":
                    finished = True
                    break
                elif kind == "error":
                    raise self._stream_error(data)
        if not finished:
            raise self.stream_cut()
        parts: list[Any] = []
        for index in sorted(blocks):
            block = blocks[index]
            if block[0] == "text":
                text = "".join(block[1])
                if text:
                    parts.append(TextPart(text))
            else:
                kwargs = {"id": block[1]} if block[1] else {}
                parts.append(ToolCall(block[2], parse_arguments("".join(block[3])), **kwargs))
        parts, finish = self._finish(request, parts, stop_reason)
        if output_name is not None and any(b[0] == "tool" and b[4] is None for b in blocks.values()):
            # Streamed structured output arrives as tool input; surface it as text too.
            yield TextDelta(parts[0].text)
        yield ResponseDone(
            ModelResponse(
                message=Message("assistant", parts),
                usage=parse_usage(usage),
                model=self._name,
                finish_reason=finish,
                response_id=response_id,
            )
        )


__all__ = ["AnthropicModel", "add_breakpoints", "build_payload", "parse_usage"]
