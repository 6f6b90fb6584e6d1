"""What every HTTP wire format shares: posting JSON through the provider's pooled session,
reading SSE, and turning HTTP failures into Bastion's model errors.

Hot path on purpose: payloads are plain dicts, bodies are parsed with `json.loads`, and no
pydantic model is built per call (the gateway's overhead budget is 0.5 ms p50).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from bastion.errors import (
    ContextWindowExceededError,
    InvalidResponseError,
    ModelError,
    ModelHTTPError,
    ModelTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from bastion.gateway._http import get_session
from bastion.gateway.formats._sse import iter_sse

if TYPE_CHECKING:
    import aiohttp

    from bastion.gateway._providers import Provider
    from bastion.types import Message, ModelRequest, Part

JSON = dict[str, Any]

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "exceeds the maximum number of tokens",
    "input token count",
    "reduce the length",
)
_HINT_DELAY = re.compile(r"(?:try again in|retry in|retry after)\s*([\d.]+)\s*(ms|s|sec|seconds)?", re.I)
_GOOGLE_DELAY = re.compile(r'"retryDelay"\s*:\s*"([\d.]+)s"')


def parse_retry_after(headers: Mapping[str, str], body: str = "") -> float | None:
    """Seconds to wait from `retry-after-ms`, `Retry-After` (seconds or an HTTP date), or the
    provider's hint in the body (Gemini `RetryInfo.retryDelay`, OpenAI "try again in 1.5s")."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError, IndexError, OverflowError):
                pass
    if body:
        m = _GOOGLE_DELAY.search(body)
        if m:
            return float(m.group(1))
        m = _HINT_DELAY.search(body)
        if m:
            seconds = float(m.group(1))
            return seconds / 1000 if m.group(2) == "ms" else seconds
    return None


def unavailable(message: str, *, model: str, status: int = 0, body: str = "") -> ProviderUnavailableError:
    """A `ProviderUnavailableError` whose message reads well when there was no HTTP status."""
    err = ProviderUnavailableError(status, body or message, model=model)
    err.args = (message,)
    return err


def http_error(status: int, body: bytes | str, headers: Mapping[str, str], model: str) -> ModelError:
    """Map a non-2xx answer to the matching exception (see the errors module's tree)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if status == 429:
        return RateLimitError(status, text, retry_after=parse_retry_after(headers, text), model=model)
    if status >= 500:
        return unavailable(
            f"{model}: provider unavailable (HTTP {status}): {text[:300]}; retry later or fall back to another model",
            model=model,
            status=status,
            body=text,
        )
    if status in (400, 413, 422):
        lowered = text.lower()
        if any(marker in lowered for marker in _CONTEXT_MARKERS):
            return ContextWindowExceededError(
                f"{model}: the request does not fit the model's context window (HTTP {status}): "
                f"{text[:300]}; trim the history or use a model with a larger window",
                model=model,
            )
    return ModelHTTPError(status, text, model=model)


def parse_arguments(raw: str) -> dict[str, Any]:
    """Tool-call arguments as a dict. Invalid JSON is kept, not raised: `{"_raw": raw}`, so the
    agent loop can show the model its own mistake (tool validation then rejects it)."""
    if not raw or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_raw": raw}


def merged_turns(
    messages: Sequence[Message], assistant_role: str, convert: Callable[[Part], JSON | None]
) -> tuple[list[str], list[tuple[str, list[JSON]]]]:
    """The system messages' texts, and the rest as (role, converted parts) turns: tool results
    count as user turns, and consecutive turns of one role are merged, as Anthropic and Gemini
    require alternating roles. Parts `convert` maps to None are left out, and so are messages
    left empty."""
    system: list[str] = []
    turns: list[tuple[str, list[JSON]]] = []
    for m in messages:
        if m.role == "system":
            system.append(m.text)
            continue
        role = assistant_role if m.role == "assistant" else "user"
        parts = [p for p in (convert(x) for x in m.parts) if p is not None]
        if not parts:
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(parts)
        else:
            turns.append((role, parts))
    return system, turns


def split_data_uri(url: str) -> tuple[str, str] | None:
    """`data:image/png;base64,AAAA` -> ("image/png", "AAAA"); None for ordinary URLs."""
    if not url.startswith("data:"):
        return None
    header, _, data = url[5:].partition(",")
    media_type = header.split(";")[0] or "application/octet-stream"
    return media_type, data


class HTTPModel:
    """Base of the HTTP wire formats: one model at one provider."""

    def __init__(self, model_name: str, provider: Provider, *, address: str | None = None) -> None:
        self.model_name = model_name
        self.provider = provider
        self._name = address or f"{provider.name}:{model_name}"
        self._headers: dict[str, str] | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r})"

    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = self.provider.request_headers()
        return self._headers

    def _timeout(self, request: ModelRequest, *, stream: bool) -> tuple[float, aiohttp.ClientTimeout]:
        seconds = request.settings.timeout or self.provider.default_timeout
        key = -seconds if stream else seconds
        timeout = self._timeouts.get(key)
        if timeout is None:
            import aiohttp

            # A stream may legitimately run longer than `seconds` in total, so there the
            # deadline bounds connecting and every gap between chunks instead.
            timeout = (
                aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
                if stream
                else aiohttp.ClientTimeout(total=seconds)
            )
            self._timeouts[key] = timeout
        return seconds, timeout

    def _timed_out(self, seconds: float, *, stream: bool = False) -> ModelTimeoutError:
        what = "sent nothing for" if stream else "did not answer within"
        return ModelTimeoutError(
            f"{self._name} {what} {seconds:g}s (ModelSettings.timeout); raise the timeout or retry",
            model=self._name,
        )

    async def post_json(self, url: str, payload: JSON, request: ModelRequest) -> Any:
        import aiohttp

        seconds, timeout = self._timeout(request, stream=False)
        body = json.dumps(payload, ensure_ascii=False).encode()
        try:
            async with get_session(self.provider).post(url, data=body, headers=self.headers(), timeout=timeout) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    raise http_error(resp.status, raw, resp.headers, self._name)
        except TimeoutError:
            raise self._timed_out(seconds) from None
        except aiohttp.ClientError as e:
            raise unavailable(
                f"{self._name}: connection to {url} failed: {type(e).__name__}: {e}; check the base URL "
                "and that the server is running",
                model=self._name,
            ) from e
        try:
            return json.loads(raw)
        except ValueError:
            raise InvalidResponseError(
                f"{self._name} answered with a body that is not JSON: {raw[:200]!r}", model=self._name
            ) from None

    async def post_sse(self, url: str, payload: JSON, request: ModelRequest) -> AsyncGenerator[tuple[str, Any], None]:
        """Yield `(event, parsed data)`; data that is not JSON raises `InvalidResponseError`.
        The `[DONE]` sentinel is yielded as `("done", None)`."""
        import aiohttp

        seconds, timeout = self._timeout(request, stream=True)
        body = json.dumps(payload, ensure_ascii=False).encode()
        started = False
        try:
            async with get_session(self.provider).post(url, data=body, headers=self.headers(), timeout=timeout) as resp:
                if resp.status >= 300:
                    raise http_error(resp.status, await resp.read(), resp.headers, self._name)
                if "json" in resp.headers.get("Content-Type", ""):
                    raw = await resp.read()
                    raise InvalidResponseError(
                        f"{self._name} answered a streaming request with JSON instead of an event "
                        f"stream: {raw[:200]!r}",
                        model=self._name,
                    )
                started = True
                async for event, data in iter_sse(resp.content):
                    if data == "[DONE]":
                        yield "done", None
                        continue
                    try:
                        parsed = json.loads(data)
                    except ValueError:
                        raise InvalidResponseError(
                            f"{self._name} sent a stream event that is not JSON: {data[:200]!r}",
                            model=self._name,
                        ) from None
                    yield event, parsed
        except TimeoutError:
            raise self._timed_out(seconds, stream=True) from None
        except aiohttp.ClientError as e:
            if started:
                raise unavailable(
                    f"{self._name}: the stream was cut mid-way ({type(e).__name__}: {e}); "
                    "the partial answer was discarded, retry the request",
                    model=self._name,
                ) from e
            raise unavailable(
                f"{self._name}: connection to {url} failed: {type(e).__name__}: {e}; check the base URL "
                "and that the server is running",
                model=self._name,
            ) from e

    def stream_cut(self) -> ProviderUnavailableError:
        return unavailable(
            f"{self._name}: the stream ended before the final event; the partial answer was "
            "discarded, retry the request",
            model=self._name,
        )

    def stream_error(self, chunk: Any) -> ProviderUnavailableError:
        """An error object sent in place of a chunk: the provider failed after the 200."""
        return unavailable(
            f"{self._name}: the provider reported an error mid-stream: {json.dumps(chunk)[:300]}; retry the request",
            model=self._name,
            body=json.dumps(chunk),
        )

    def invalid(self, what: str, data: Any) -> InvalidResponseError:
        return InvalidResponseError(f"{self._name} answered without {what}: {json.dumps(data)[:300]}", model=self._name)


__all__ = [
    "HTTPModel",
    "http_error",
    "parse_arguments",
    "parse_retry_after",
    "split_data_uri",
    "unavailable",
]
