"""Property: whatever body a client sends, the proxy answers a JSON status it means (200 or a
4xx with an OpenAI error body), never a 500, and the model only sees validated requests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.gateway.proxy import InMemoryKeyStore, VirtualKey, create_proxy_app, hash_key
from bastion.testing import FunctionModel
from bastion.types import ModelRequest

KEY = "bst-fuzz"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "model",
    "messages",
    "tools",
    "tool_choice",
    "response_format",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "n",
    "user",
    "logit_bias",
    "bogus",
]
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id"]
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot"])
messages = st.lists(
    st.dictionaries(st.sampled_from(MESSAGE_FIELDS), json_values | roles, max_size=5)
    | st.fixed_dictionaries({"role": roles, "content": st.text(max_size=30) | json_values}),
    max_size=4,
)
bodies = st.one_of(
    st.binary(max_size=200),  # not JSON at all
    json_values.map(lambda v: json.dumps(v).encode()),  # JSON, wrong shape
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)  # right keys, random values
    .flatmap(lambda d: messages.map(lambda m: {**d, "model": "m", "messages": m}))
    .map(lambda d: json.dumps(d).encode()),
    # A valid request with one or two fields set to random values: reaches the model more often.
    st.dictionaries(st.sampled_from(FIELDS[2:]), json_values | st.booleans() | st.integers(0, 3), max_size=2)
    .map(lambda d: {"model": "m", "messages": [{"role": "user", "content": "hi"}], **d})
    .map(lambda d: json.dumps(d).encode()),
)


def _seen(request: ModelRequest) -> str:
    assert request.messages, "the model got a request without messages"
    return "ok"


async def _call(app: Any, body: bytes) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return status, b"".join(chunks)


def test_no_body_makes_the_proxy_fail_with_500() -> None:
    app = create_proxy_app(_Gateway(FunctionModel(_seen)), keys=InMemoryKeyStore([VirtualKey("k", hash_key(KEY), "t")]))
    loop = asyncio.new_event_loop()
    try:

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(bodies)
        def check(body: bytes) -> None:
            status, raw = loop.run_until_complete(_call(app, body))
            assert status in {200, 400, 404}, (status, raw[:300])
            if status != 200:
                error = json.loads(raw)["error"]
                assert error["message"] and error["type"] == "invalid_request_error"
            elif not raw.startswith(b"data: "):
                assert json.loads(raw)["choices"][0]["message"]["content"] == "ok"

        check()
    finally:
        loop.close()


class _Gateway:
    def __init__(self, model: FunctionModel) -> None:
        self.model = model

    async def request(self, request: ModelRequest, *, model: str | None = None) -> Any:
        return await self.model.request(request)

    def stream(self, request: ModelRequest, *, model: str | None = None) -> Any:
        return self.model.stream(request)
