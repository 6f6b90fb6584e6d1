"""Prompt caching across tenants, on a real `bastion serve`: the OpenAI `prompt_cache_key` is
per (tenant, agent, thread), hashed, so tenant B naming tenant A's thread id (and sending the
very same prompt) shares neither A's key nor, on the fake that plays a busy OpenAI fleet, A's
cached prefix. The model API is a `FakeOpenAIServer` on its own event loop in this process."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.testing import FakeOpenAIServer

Served = Any  # conftest.Served
APP = f"{Path(__file__).with_name('prompt_cache_app.py')}:build"
A, B = "key-a-op", "key-b-op"


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    srv = FakeOpenAIServer()
    asyncio.run_coroutine_threadsafe(srv.start(), loop).result(timeout=10)
    yield srv
    asyncio.run_coroutine_threadsafe(srv.aclose(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def run(served: Served, key: str, text: str, thread: str) -> dict[str, Any]:
    body = json.dumps({"agent": "support", "input": text, "thread_id": thread, "wait": True, "timeout": 30})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    request = urllib.request.Request(served.url + "/v1/runs", data=body.encode(), method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        out = json.loads(response.read())
    assert out["status"] == "completed", out
    return out


def test_tenants_never_share_a_cache_key_or_a_cached_prefix(
    bastion_server: Callable[..., Served], fake: FakeOpenAIServer
) -> None:
    served = bastion_server(APP, env={"FAKE_OPENAI_URL": fake.base_url})
    run(served, A, "my account number is 1234", "t-1")
    run(served, A, "and my PIN?", "t-1")
    keys = [r.body.get("prompt_cache_key") for r in fake.requests]
    assert keys[0] and keys[0] == keys[1]  # one conversation, one key
    assert "t-1" not in keys[0] and "support" not in keys[0]  # hashed
    assert fake.requests[1].body["messages"][:2] == fake.requests[0].body["messages"][:2]
    a_usage = run(served, A, "thanks", "t-1")["usage"]
    assert a_usage["cache_read_tokens"] >= 1024  # A's own history is read back

    # B replays A's thread id and A's exact first prompt: same prefix, but not A's key, so
    # B's usage reveals nothing about what A sent.
    out = run(served, B, "my account number is 1234", "t-1")
    b_key = fake.requests[-1].body.get("prompt_cache_key")
    assert b_key and b_key != keys[0]
    assert fake.requests[-1].body["messages"] == fake.requests[0].body["messages"]
    assert out["usage"]["cache_read_tokens"] == 0
