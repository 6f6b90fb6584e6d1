"""Gemini API (`POST {base_url}/models/{model}:generateContent`, and
`:streamGenerateContent?alt=sse` for streams).

System messages become `systemInstruction`; tool calls and results are `functionCall` /
`functionResponse` parts (Gemini does not echo call ids, so ids are generated locally and
results are matched by name). Structured output uses `responseMimeType: application/json`
with `responseSchema`. `promptTokenCount` already includes `cachedContentTokenCount`;
`thoughtsTokenCount` is billed as output, so it is added to output and reported as reasoning.
A large system instruction + tools prefix that repeats is moved into a `cachedContents`
resource when it pays (see `_gemini_cache`); creating one is reported as cache-write tokens.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from bastion.errors import ModelHTTPError
from bastion.gateway._toolnames import request_tool_names
from bastion.gateway.formats._base import JSON, HTTPModel, merged_turns, split_data_uri
from bastion.gateway.formats._gemini_cache import CachedContents
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
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "MALFORMED_FUNCTION_CALL": "error",
}
# JSON-schema keywords the Gemini `Schema` object rejects.
_UNSUPPORTED = frozenset(
    {"$schema", "additionalProperties", "$defs", "definitions", "$ref", "title", "default", "x-bastion-grounded"}
)


def clean_schema(schema: Any) -> Any:
    """Drop JSON-schema keywords Gemini's OpenAPI-subset `Schema` does not accept."""
    if isinstance(schema, dict):
        out: JSON = {}
        for k, v in schema.items():
            if k == "properties" and isinstance(v, dict):
                # Property names are data, not keywords: a property may be called "title".
                out[k] = {name: clean_schema(sub) for name, sub in v.items()}
            elif k not in _UNSUPPORTED:
                out[k] = clean_schema(v)
        return out
    if isinstance(schema, list):
        return [clean_schema(v) for v in schema]
    return schema


def _part(part: Any) -> JSON | None:
    if isinstance(part, TextPart):
        return {"text": part.text} if part.text else None
    if isinstance(part, ImagePart):
        inline = split_data_uri(part.url)
        if inline is not None:
            return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
        return {"fileData": {"mimeType": part.media_type or "image/jpeg", "fileUri": part.url}}
    if isinstance(part, ToolCall):
        return {"functionCall": {"name": part.name, "args": part.arguments}}
    if isinstance(part, ToolResult):
        content = part.content if isinstance(part.content, dict) else {"result": part.content_text()}
        if part.is_error:
            content = {"error": part.content_text()}
        return {"functionResponse": {"name": part.name, "response": content}}
    return None


def build_payload(request: ModelRequest) -> JSON:
    names = request_tool_names(request)

    def part(p: Any) -> JSON | None:
        converted = _part(p)
        if converted is not None and isinstance(p, ToolCall | ToolResult):
            inner = converted["functionCall" if isinstance(p, ToolCall) else "functionResponse"]
            inner["name"] = names.provider(p.name)
        return converted

    system, turns = merged_turns(request.messages, "model", part)
    contents: list[JSON] = [{"role": role, "parts": parts} for role, parts in turns]
    payload: JSON = {"contents": contents}
    if system:
        payload["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    if request.tools:
        payload["tools"] = [
            {
                "functionDeclarations": [
                    {
                        "name": names.provider(t.name),
                        "description": t.description,
                        "parameters": clean_schema(t.parameters),
                    }
                    for t in request.tools
                ]
            }
        ]
        choice = request.tool_choice
        mode = {"auto": "AUTO", "required": "ANY", "none": "NONE"}.get(choice)
        config: JSON = {"mode": mode or "ANY"}
        if mode is None:
            config["allowedFunctionNames"] = [names.provider(choice)]
        payload["toolConfig"] = {"functionCallingConfig": config}
    generation: JSON = {}
    s = request.settings
    if s.temperature is not None:
        generation["temperature"] = s.temperature
    if s.max_tokens is not None:
        generation["maxOutputTokens"] = s.max_tokens
    if s.top_p is not None:
        generation["topP"] = s.top_p
    if s.stop:
        generation["stopSequences"] = s.stop
    if s.seed is not None:
        generation["seed"] = s.seed
    if request.output is not None:
        generation["responseMimeType"] = "application/json"
        generation["responseSchema"] = clean_schema(request.output.schema)
    if generation:
        payload["generationConfig"] = generation
    if s.extra:
        payload.update(s.extra)
    return payload


def parse_usage(data: JSON | None) -> Usage:
    if not data:
        return Usage(requests=1)
    thoughts = data.get("thoughtsTokenCount") or 0
    return Usage(
        input_tokens=(data.get("promptTokenCount") or 0) + (data.get("toolUsePromptTokenCount") or 0),
        output_tokens=(data.get("candidatesTokenCount") or 0) + thoughts,
        cache_read_tokens=data.get("cachedContentTokenCount") or 0,
        reasoning_tokens=thoughts,
        requests=1,
    )


def _with_written(usage: Usage, written: int) -> Usage:
    """Add the tokens of a cachedContents creation: billed once, at the input price."""
    if written:
        usage.input_tokens += written
        usage.cache_write_tokens += written
    return usage


def _finish(reason: str | None, has_calls: bool, blocked: bool) -> FinishReason:
    if blocked:
        return "content_filter"
    finish = _FINISH.get(reason or "STOP", "stop")
    return "tool_calls" if has_calls and finish == "stop" else finish


class GeminiModel(HTTPModel):
    """A Gemini model behind the Google Generative Language API."""

    wire_format = "gemini"

    _contents: CachedContents | None = None

    def _url(self, stream: bool) -> str:
        base = f"{self.provider.base_url}/models/{self.model_name}"
        return base + (":streamGenerateContent?alt=sse" if stream else ":generateContent")

    @property
    def cached_contents(self) -> CachedContents:
        if self._contents is None:
            self._contents = CachedContents(self.model_name)
        return self._contents

    async def _payload(self, request: ModelRequest, *, cache: bool = True) -> tuple[JSON, str | None, int]:
        """The body, the digest of the cached prefix it references (or None) and the tokens
        written by creating that cache now."""
        payload = build_payload(request)
        if not (cache and request.settings.prompt_cache) or "cachedContent" in payload:
            return payload, None, 0

        async def create(body: JSON) -> tuple[str, int]:
            data = await self.post_json(f"{self.provider.base_url}/cachedContents", body, request)
            name = data.get("name") if isinstance(data, dict) else None
            if not isinstance(name, str):
                raise self.invalid("a cachedContents name", data)
            return name, int((data.get("usageMetadata") or {}).get("totalTokenCount") or 0)

        digest, written = await self.cached_contents.apply(payload, request.context.tenant, create)
        return payload, digest, written

    def _stale(self, error: ModelHTTPError, request: ModelRequest, digest: str | None) -> bool:
        """Whether `error` says the referenced cache is gone (expired early, deleted): then it
        is forgotten and the request is sent again without it."""
        if digest is None or error.status not in (400, 403, 404) or "cachedcontent" not in error.body.lower():
            return False
        self.cached_contents.forget(request.context.tenant, digest)
        return True

    async def request(self, request: ModelRequest) -> ModelResponse:
        payload, digest, written = await self._payload(request)
        try:
            data = await self.post_json(self._url(False), payload, request)
        except ModelHTTPError as e:
            if not self._stale(e, request, digest):
                raise
            payload, _, written = await self._payload(request, cache=False)
            data = await self.post_json(self._url(False), payload, request)
        names = request_tool_names(request)
        if not isinstance(data, dict):
            raise self.invalid("a response object", data)
        candidates = data.get("candidates") or []
        blocked = not candidates and bool((data.get("promptFeedback") or {}).get("blockReason"))
        if not candidates and not blocked:
            raise self.invalid("candidates", data)
        parts: list[Any] = []
        reason = None
        if candidates:
            reason = candidates[0].get("finishReason")
            for p in (candidates[0].get("content") or {}).get("parts") or ():
                if "text" in p and not p.get("thought"):
                    parts.append(TextPart(p["text"]))
                elif "functionCall" in p:
                    fc = p["functionCall"]
                    kwargs = {"id": fc["id"]} if fc.get("id") else {}
                    parts.append(ToolCall(names.canonical(fc.get("name", "")), fc.get("args") or {}, **kwargs))
        has_calls = any(isinstance(p, ToolCall) for p in parts)
        return ModelResponse(
            message=Message("assistant", parts),
            usage=_with_written(parse_usage(data.get("usageMetadata")), written),
            model=self._name,
            finish_reason=_finish(reason, has_calls, blocked),
            response_id=data.get("responseId"),
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        payload, digest, written = await self._payload(request)
        sent = False
        try:
            async with aclosing(self._stream(request, payload, written)) as events:
                async for event in events:
                    sent = True
                    yield event
        except ModelHTTPError as e:
            # The HTTP status comes before any event, so nothing was shown yet on a stale cache.
            if sent or not self._stale(e, request, digest):
                raise
            payload, _, written = await self._payload(request, cache=False)
            async with aclosing(self._stream(request, payload, written)) as events:
                async for event in events:
                    yield event

    async def _stream(self, request: ModelRequest, payload: JSON, written: int) -> AsyncGenerator[StreamEvent, None]:
        text: list[str] = []
        calls: list[ToolCall] = []
        usage: JSON | None = None
        reason: str | None = None
        blocked = False
        response_id: str | None = None
        names = request_tool_names(request)
        async with aclosing(self.post_sse(self._url(True), payload, request)) as events:
            async for _, chunk in events:
                if not isinstance(chunk, dict):
                    raise self.invalid("a response chunk", chunk)
                if "error" in chunk:
                    raise self.stream_error(chunk)
                response_id = response_id or chunk.get("responseId")
                if chunk.get("usageMetadata"):
                    usage = chunk["usageMetadata"]
                if (chunk.get("promptFeedback") or {}).get("blockReason"):
                    blocked = True
                for candidate in chunk.get("candidates") or ():
                    for p in (candidate.get("content") or {}).get("parts") or ():
                        if "text" in p and not p.get("thought"):
                            text.append(p["text"])
                            if p["text"]:
                                yield TextDelta(p["text"])
                        elif "functionCall" in p:
                            fc = p["functionCall"]
                            kwargs = {"id": fc["id"]} if fc.get("id") else {}
                            call = ToolCall(names.canonical(fc.get("name", "")), fc.get("args") or {}, **kwargs)
                            yield ToolCallDelta(
                                index=len(calls), id=call.id, name=call.name, arguments_delta=json.dumps(call.arguments)
                            )
                            calls.append(call)
                    if candidate.get("finishReason"):
                        reason = candidate["finishReason"]
        # Gemini has no end-of-stream sentinel: the last chunk carries the finish reason.
        if reason is None and not blocked:
            raise self.stream_cut()
        parts: list[Any] = [TextPart("".join(text))] if text else []
        parts.extend(calls)
        yield ResponseDone(
            ModelResponse(
                message=Message("assistant", parts),
                usage=_with_written(parse_usage(usage), written),
                model=self._name,
                finish_reason=_finish(reason, bool(calls), blocked),
                response_id=response_id,
            )
        )


__all__ = ["GeminiModel", "build_payload", "clean_schema", "parse_usage"]
