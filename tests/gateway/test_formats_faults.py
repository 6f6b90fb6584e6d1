"""Every fault the fake server can inject surfaces as the right exception, for each wire format,
streamed and not, with a message that says what happened."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from bastion.errors import (
    ContextWindowExceededError,
    InvalidResponseError,
    ModelHTTPError,
    ModelTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from bastion.gateway._http import aclose_http_sessions
from bastion.gateway._model import Model, collect
from bastion.gateway._resolve import resolve_model
from bastion.gateway.formats._base import parse_retry_after
from bastion.testing import FakeOpenAIServer, Fault
from bastion.types import Message, ModelRequest, ModelResponse, ModelSettings, TextDelta

FORMATS = ["openai", "anthropic", "gemini"]


@pytest.fixture
async def srv() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server
        await aclose_http_sessions()


def make(srv: FakeOpenAIServer, fmt: str) -> Model:
    return {"openai": srv.model, "anthropic": srv.anthropic_model, "gemini": srv.gemini_model}[fmt]()


async def call(model: Model, stream: bool, timeout: float | None = None) -> ModelResponse:
    request = ModelRequest([Message.user("hello there friend")], settings=ModelSettings(timeout=timeout))
    if stream:
        return await collect(model.stream(request))
    return await model.request(request)


Case = tuple[Fault, type[BaseException], str]
CASES: dict[str, Case] = {
    "503": (Fault.error(503), ProviderUnavailableError, "HTTP 503"),
    "500": (Fault.error(500), ProviderUnavailableError, "HTTP 500"),
    "429": (Fault.rate_limit(2.5), RateLimitError, "429"),
    "context": (Fault.context_length(), ContextWindowExceededError, "context window"),
    "401": (Fault.error(401, '{"error": {"message": "bad key"}}'), ModelHTTPError, "bad key"),
    "malformed": (Fault.malformed(), InvalidResponseError, "not JSON"),
    "disconnect": (Fault.disconnect(0), ProviderUnavailableError, "127.0.0.1"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["request", "stream"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(CASES))
async def test_fault_maps_to_exception(srv: FakeOpenAIServer, fmt: str, stream: bool, case: str) -> None:
    fault, exc_type, text = CASES[case]
    srv.fail(fault)
    model = make(srv, fmt)
    with pytest.raises(exc_type) as info:
        await call(model, stream)
    assert text in str(info.value)
    if exc_type is ModelHTTPError:
        assert type(info.value) is ModelHTTPError and info.value.status == 401
    if isinstance(info.value, RateLimitError):
        assert info.value.retry_after == 2.5
    # Nothing is lost: the next request goes through normally.
    response = await call(model, stream)
    assert response.text == "hello there friend"
    assert srv.count == 2


@pytest.mark.parametrize("fmt", FORMATS)
async def test_stream_cut_mid_way(srv: FakeOpenAIServer, fmt: str) -> None:
    srv.fail(Fault.disconnect(after_chunks=5))
    seen: list[str] = []
    with pytest.raises(ProviderUnavailableError, match="cut mid-way"):
        async for event in make(srv, fmt).stream(ModelRequest([Message.user("a b c d e f g h")])):
            if isinstance(event, TextDelta):
                seen.append(event.text)
    assert seen  # the partial answer was streamed before the cut


@pytest.mark.parametrize("fmt", FORMATS)
async def test_stream_ending_without_final_event(srv: FakeOpenAIServer, fmt: str) -> None:
    srv.fail(Fault.truncate(after_chunks=2))
    with pytest.raises(ProviderUnavailableError, match="ended before the final event"):
        await call(make(srv, fmt), stream=True)


@pytest.mark.parametrize("fmt", FORMATS)
async def test_garbage_sse(srv: FakeOpenAIServer, fmt: str) -> None:
    srv.fail(Fault.garbage_sse())
    with pytest.raises(InvalidResponseError, match="502 Bad Gateway"):
        await call(make(srv, fmt), stream=True)


@pytest.mark.parametrize("stream", [False, True], ids=["request", "stream"])
@pytest.mark.parametrize("fmt", FORMATS)
async def test_hang_times_out_and_server_sees_disconnect(srv: FakeOpenAIServer, fmt: str, stream: bool) -> None:
    srv.fail(Fault.hang(bound=30))
    with pytest.raises(ModelTimeoutError, match=r"0.2s \(ModelSettings.timeout\)"):
        await call(make(srv, fmt), stream, timeout=0.2)
    await srv.wait_for_disconnects(1, timeout=5)


async def test_stream_request_answered_with_json(srv: FakeOpenAIServer) -> None:
    srv.fail(Fault.raw({"id": "x", "choices": []}))
    with pytest.raises(InvalidResponseError, match="instead of an event stream"):
        await call(srv.model(), stream=True)


async def test_missing_fields_are_invalid_responses(srv: FakeOpenAIServer) -> None:
    srv.fail(Fault.raw({"id": "x", "choices": []}))
    with pytest.raises(InvalidResponseError, match=r"choices\[0\]"):
        await call(srv.model(), stream=False)
    srv.fail(Fault.raw({"usageMetadata": {}}))
    with pytest.raises(InvalidResponseError, match="candidates"):
        await call(srv.gemini_model(), stream=False)
    srv.fail(Fault.raw({"type": "message"}))
    with pytest.raises(InvalidResponseError, match="content"):
        await call(srv.anthropic_model(), stream=False)


async def test_fault_queue_then_recovery(srv: FakeOpenAIServer) -> None:
    srv.fail(Fault.error(503), times=2)
    model = srv.model()
    for _ in range(2):
        with pytest.raises(ProviderUnavailableError):
            await call(model, False)
    assert (await call(model, False)).text == "hello there friend"
    assert srv.count == 3


async def test_slow_fault_still_answers(srv: FakeOpenAIServer) -> None:
    srv.fail(Fault.slow(0.05, chunk_delay=0.01))
    assert (await call(srv.model(), stream=True)).text == "hello there friend"


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = resolve_model(f"openai-compat:http://127.0.0.1:{port}/v1#m")
    try:
        for stream in (False, True):
            with pytest.raises(ProviderUnavailableError, match="check the base URL"):
                await call(model, stream)
    finally:
        await aclose_http_sessions()


async def test_rate_limit_with_http_date(srv: FakeOpenAIServer) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    srv.fail(Fault.rate_limit(when))
    with pytest.raises(RateLimitError) as info:
        await call(srv.model(), False)
    assert info.value.retry_after is not None and 20 < info.value.retry_after <= 31


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"retry-after-ms": "1500"}, "", 1.5),
        ({"Retry-After": "3"}, "", 3.0),
        ({"Retry-After": "not a date"}, "", None),
        (
            {},
            '{"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}}',
            17.0,
        ),
        ({}, "Rate limit reached. Please try again in 450ms.", 0.45),
        ({}, "Please try again in 2.5s.", 2.5),
        ({}, "", None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], body: str, expected: float | None) -> None:
    assert parse_retry_after(headers, body) == expected


def test_fault_specs() -> None:
    assert Fault.parse("503") == Fault.error(503)
    assert Fault.parse("429:2") == Fault.rate_limit(2)
    assert Fault.parse("hang:5").bound == 5
    assert Fault.parse("disconnect:3").after_chunks == 3
    with pytest.raises(ValueError, match="unknown fault spec 'explode'"):
        Fault.parse("explode")


@pytest.mark.parametrize(
    "spec_and_exc",
    [("503", ProviderUnavailableError), ("429:4", RateLimitError), ("context_length", ContextWindowExceededError)],
)
async def test_per_request_fault_header(
    srv: FakeOpenAIServer, spec_and_exc: tuple[str, Callable[..., BaseException]]
) -> None:
    spec, exc = spec_and_exc
    model = srv.model(headers={"X-Fake-Fault": spec})
    with pytest.raises(exc):  # type: ignore[arg-type]
        await call(model, False)
    assert (await call(srv.model(), False)).text == "hello there friend"  # only that request failed
