"""Provider prompt caching: Anthropic breakpoints, OpenAI prompt_cache_key, Gemini cached
content, the fake server's cache usage and what cached tokens cost. Real HTTP against the fake."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bastion.gateway import Gateway
from bastion.gateway._http import aclose_http_sessions
from bastion.gateway._model import collect
from bastion.gateway._pricing import Pricing
from bastion.gateway._resolve import resolve_model
from bastion.gateway.formats._prompt_cache import anthropic_min_tokens, cache_key, gemini_min_tokens
from bastion.gateway.formats.anthropic import build_payload as anthropic_payload
from bastion.testing import FakeOpenAIServer
from bastion.types import (
    Message,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    ResponseDone,
    RunContext,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
)

# ~1,500 tokens at 4 characters a token: above Sonnet's 1,024 minimum, below Haiku 4.5's 4,096.
LONG_SYSTEM = "You are a careful assistant. Follow the house rules. " * 115
SEARCH = ToolSpec("search", "Search the docs.", {"type": "object", "properties": {"q": {"type": "string"}}})
LOOKUP = ToolSpec("lookup", "Look up a record.", {"type": "object", "properties": {"id": {"type": "string"}}})


@pytest.fixture
async def srv() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server
        await aclose_http_sessions()


def marks(payload: dict[str, Any]) -> list[str]:
    """Where the payload carries cache_control, as readable labels."""
    out: list[str] = []
    out += [f"tool:{t['name']}" for t in payload.get("tools", []) if "cache_control" in t]
    system = payload.get("system")
    if isinstance(system, list):
        out += ["system" for b in system if "cache_control" in b]
    for i, m in enumerate(payload["messages"]):
        content = m["content"]
        out += [f"message:{i}:{j}" for j, b in enumerate(content) if isinstance(b, dict) and "cache_control" in b]
    return out


def conversation(turns: int) -> list[Message]:
    """A system prompt, then `turns` rounds of user -> tool call -> tool result, then a user turn."""
    messages = [Message.system(LONG_SYSTEM)]
    for i in range(turns):
        call = ToolCall("search", {"q": f"question {i}"}, id=f"toolu_{i}")
        messages += [
            Message.user(f"question {i}"),
            Message.assistant("", [call]),
            Message.tool(ToolResult(call.id, "search", f"result {i} " * 40)),
            Message.assistant(f"answer {i}"),
        ]
    return [*messages, Message.user("the newest question")]


# --- Anthropic breakpoints -------------------------------------------------------------------


def test_short_prompts_get_no_breakpoints() -> None:
    payload = anthropic_payload(ModelRequest([Message.system("be brief"), Message.user("hi")], tools=[SEARCH]), "m")
    assert marks(payload) == []
    assert payload["system"] == "be brief"  # a plain string, as before caching existed


def test_breakpoints_on_tools_system_previous_turn_and_last_message() -> None:
    request = ModelRequest(conversation(2), tools=[SEARCH, LOOKUP])
    payload = anthropic_payload(request, "claude-sonnet-4-5")
    # merged turns: 0 user, 1 assistant(tool_use), 2 user(tool_result), 3 assistant, 4 user,
    # 5 assistant(tool_use), 6 user(tool_result), 7 assistant, 8 user (the newest question)
    # The tools alone are below the minimum; the system prompt is above it.
    assert marks(payload) == ["system", "message:6:0", "message:8:0"]
    assert payload["system"] == [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    assert len(marks(payload)) <= 4


def test_at_most_four_breakpoints_with_large_tools() -> None:
    big = ToolSpec("catalog", "Every product. " * 400, {"type": "object", "properties": {}})
    payload = anthropic_payload(ModelRequest(conversation(3), tools=[SEARCH, big]), "claude-sonnet-4-5")
    assert marks(payload) == ["tool:catalog", "system", "message:10:0", "message:12:0"]


def test_the_minimum_depends_on_the_model() -> None:
    assert anthropic_min_tokens("claude-sonnet-4-5") == 1024
    assert anthropic_min_tokens("claude-3-5-haiku-latest") == 2048
    assert anthropic_min_tokens("claude-haiku-4-5") == 4096
    assert anthropic_min_tokens("claude-opus-4-5-20251101") == 4096
    request = ModelRequest([Message.system(LONG_SYSTEM), Message.user("hi")])
    assert marks(anthropic_payload(request, "claude-sonnet-4-5")) == ["system", "message:0:0"]
    assert marks(anthropic_payload(request, "claude-haiku-4-5")) == []  # 1,500 tokens < 4,096


def test_prompt_cache_false_sends_no_breakpoints() -> None:
    request = ModelRequest(conversation(2), tools=[SEARCH], settings=ModelSettings(prompt_cache=False))
    payload = anthropic_payload(request, "claude-sonnet-4-5")
    assert marks(payload) == [] and payload["system"] == LONG_SYSTEM


async def test_anthropic_second_turn_reads_what_the_first_wrote(srv: FakeOpenAIServer) -> None:
    model = srv.anthropic_model("claude-sonnet-4-5")
    history = [Message.system(LONG_SYSTEM), Message.user("first question")]
    first = await model.request(ModelRequest(history))
    assert first.usage.cache_read_tokens == 0
    assert first.usage.cache_write_tokens > 1024  # the system prompt and the first turn
    history += [first.message, Message.user("second question")]
    second = await model.request(ModelRequest(history))
    assert second.usage.cache_read_tokens == first.usage.cache_write_tokens  # all of it, read back
    assert 0 < second.usage.cache_write_tokens < 100  # only the new turns
    # input_tokens is normalised to include cached input (Anthropic's excludes it)
    assert second.usage.input_tokens > second.usage.cache_read_tokens + second.usage.cache_write_tokens
    uncached = await model.request(ModelRequest(history, settings=ModelSettings(prompt_cache=False)))
    assert uncached.usage.cache_read_tokens == uncached.usage.cache_write_tokens == 0


async def test_anthropic_streamed_usage_carries_cache_counts(srv: FakeOpenAIServer) -> None:
    model = srv.anthropic_model("claude-sonnet-4-5")
    request = ModelRequest([Message.system(LONG_SYSTEM), Message.user("q")])
    await model.request(request)
    events = [e async for e in model.stream(request)]
    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert done.response.usage.cache_read_tokens > 1024 and done.response.usage.cache_write_tokens == 0


async def test_anthropic_cache_is_per_api_key(srv: FakeOpenAIServer) -> None:
    request = ModelRequest([Message.system(LONG_SYSTEM), Message.user("q")])
    await srv.anthropic_model("claude-sonnet-4-5", api_key="org-1").request(request)
    other = await srv.anthropic_model("claude-sonnet-4-5", api_key="org-2").request(request)
    assert other.usage.cache_read_tokens == 0 and other.usage.cache_write_tokens > 0


# --- OpenAI prompt_cache_key -----------------------------------------------------------------


def openai_model(srv: FakeOpenAIServer, name: str = "gpt-4o-mini") -> Any:
    return resolve_model(f"openai:{name}", base_url=srv.base_url, api_key="test-key")


async def test_openai_key_per_tenant_agent_and_thread(srv: FakeOpenAIServer) -> None:
    model = openai_model(srv)

    async def key(context: RunContext, **settings: Any) -> Any:
        await model.request(ModelRequest([Message.user("hi")], context=context, settings=ModelSettings(**settings)))
        return srv.requests[-1].body.get("prompt_cache_key")

    a1 = await key(RunContext(tenant="a", agent="helper", session="t1"))
    assert a1 == cache_key("a", "helper", "t1") and a1.startswith("bst-")
    assert "helper" not in a1 and "t1" not in a1  # hashed: the provider learns no names
    assert await key(RunContext(tenant="a", agent="helper", session="t1")) == a1
    assert await key(RunContext(tenant="b", agent="helper", session="t1")) != a1  # never across tenants
    assert await key(RunContext(tenant="a", agent="helper", session="t2")) != a1
    assert await key(RunContext(tenant="a", agent="other", session="t1")) != a1
    assert await key(RunContext(tenant="a", agent="helper", session="t1"), prompt_cache=False) is None
    assert await key(RunContext(tenant="a"), extra={"prompt_cache_key": "mine"}) == "mine"  # explicit wins


def test_cache_keys_do_not_collide_on_separators() -> None:
    assert cache_key("a", "b-c", None) != cache_key("a-b", "c", None)
    assert cache_key("a", "b", "c") != cache_key("a", "bc", None)


async def test_openai_compatible_servers_get_no_key(srv: FakeOpenAIServer) -> None:
    # vLLM, Groq and others may reject an unknown field: the key goes to OpenAI only.
    await srv.model().request(ModelRequest([Message.user("hi")], context=RunContext(tenant="a", session="t")))
    assert "prompt_cache_key" not in srv.requests[-1].body


async def test_openai_cached_tokens_within_one_conversation_only(srv: FakeOpenAIServer) -> None:
    model = openai_model(srv)
    thread = RunContext(tenant="a", agent="helper", session="t1")
    history = [Message.system(LONG_SYSTEM), Message.user("first")]
    first = await model.request(ModelRequest(history, context=thread))
    assert first.usage.cache_read_tokens == 0
    history += [first.message, Message.user("second")]
    second = await model.request(ModelRequest(history, context=thread))
    assert second.usage.cache_read_tokens >= 1024 and (second.usage.cache_read_tokens - 1024) % 128 == 0
    assert second.usage.cache_read_tokens <= second.usage.input_tokens
    # The same prompt from another tenant reads nothing: its key routes it elsewhere.
    other = await model.request(ModelRequest(history, context=RunContext(tenant="b", agent="helper", session="t1")))
    assert other.usage.cache_read_tokens == 0
    streamed = await collect(model.stream(ModelRequest(history, context=thread)))
    assert streamed.usage.cache_read_tokens >= second.usage.cache_read_tokens


async def test_openai_short_prompts_are_not_cached(srv: FakeOpenAIServer) -> None:
    model = openai_model(srv)
    thread = RunContext(tenant="a", session="t")
    await model.request(ModelRequest([Message.user("short")], context=thread))
    again = await model.request(ModelRequest([Message.user("short")], context=thread))
    assert again.usage.cache_read_tokens == 0  # below OpenAI's 1,024-token minimum


# --- cost accounting -------------------------------------------------------------------------


def test_cache_reads_and_writes_priced_at_their_rates() -> None:
    p = Pricing()
    # claude-sonnet-4-5: input $3, cache write $3.75, cache read $0.30, output $15 per Mtok
    usage = Usage(input_tokens=10_000, output_tokens=1_000, cache_read_tokens=6_000, cache_write_tokens=3_000)
    expected = (1_000 * 3 + 3_000 * 3.75 + 6_000 * 0.30 + 1_000 * 15) / 1e6
    assert p.cost("anthropic:claude-sonnet-4-5", usage) == pytest.approx(expected)
    # gpt-4o-mini: input $0.15, cached $0.075, output $0.60; OpenAI bills no cache writes
    usage = Usage(input_tokens=10_000, output_tokens=1_000, cache_read_tokens=8_192)
    expected = (1_808 * 0.15 + 8_192 * 0.075 + 1_000 * 0.60) / 1e6
    assert p.cost("openai:gpt-4o-mini", usage) == pytest.approx(expected)
    # gemini-2.5-flash: input $0.30, cached $0.03; creating cached content is billed as input
    usage = Usage(input_tokens=5_000, output_tokens=100, cache_read_tokens=4_000)
    expected = (1_000 * 0.30 + 4_000 * 0.03 + 100 * 2.50) / 1e6
    assert p.cost("gemini:gemini-2.5-flash", usage) == pytest.approx(expected)


def test_override_prices_cache_kinds() -> None:
    p = Pricing({"acme:m": {"input": 2.0, "output": 4.0, "cache_read": 0.5, "cache_write": 2.5}})
    usage = Usage(input_tokens=1_000_000, cache_read_tokens=500_000, cache_write_tokens=250_000)
    assert p.cost("acme:m", usage) == pytest.approx(0.25 * 2.0 + 0.5 * 0.5 + 0.25 * 2.5)


async def test_gateway_cost_of_a_cached_anthropic_turn(srv: FakeOpenAIServer) -> None:
    model = srv.anthropic_model("claude-sonnet-4-5")
    gw = Gateway(models=[model])
    history = [Message.system(LONG_SYSTEM), Message.user("first")]
    first = await gw.request(ModelRequest(history), model.name)
    history += [first.message, Message.user("second")]
    second = await gw.request(ModelRequest(history), model.name)

    def priced(r: ModelResponse) -> float:
        u = r.usage
        plain = u.input_tokens - u.cache_read_tokens - u.cache_write_tokens
        return (plain * 3 + u.cache_write_tokens * 3.75 + u.cache_read_tokens * 0.30 + u.output_tokens * 15) / 1e6

    assert first.cost_usd == pytest.approx(priced(first)) and second.cost_usd == pytest.approx(priced(second))
    assert second.usage.cache_read_tokens > 1024
    # what the second turn would have cost with nothing cached
    full = (second.usage.input_tokens * 3 + second.usage.output_tokens * 15) / 1e6
    assert second.cost_usd is not None and second.cost_usd < full * 0.3


def test_gemini_minimums() -> None:
    assert gemini_min_tokens("gemini-2.5-flash") == 1024 and gemini_min_tokens("gemini-2.5-pro") == 4096


def test_payload_is_json_serialisable_with_breakpoints() -> None:
    payload = anthropic_payload(ModelRequest(conversation(1), tools=[SEARCH]), "claude-sonnet-4-5")
    assert json.loads(json.dumps(payload)) == payload


# --- Gemini cached content -------------------------------------------------------------------


def gemini_request(tenant: str = "a", *, prompt_cache: bool = True, system: str = LONG_SYSTEM) -> ModelRequest:
    return ModelRequest(
        [Message.system(system), Message.user("q")],
        tools=[SEARCH],
        context=RunContext(tenant=tenant),
        settings=ModelSettings(prompt_cache=prompt_cache),
    )


def routes(srv: FakeOpenAIServer) -> list[str]:
    return [r.path.rsplit("/", 1)[-1].split(":")[-1] for r in srv.requests]


async def test_gemini_caches_a_repeated_prefix_from_its_second_use(srv: FakeOpenAIServer) -> None:
    model = srv.gemini_model("gemini-2.5-flash")
    first = await model.request(gemini_request())
    assert routes(srv) == ["generateContent"] and "cachedContent" not in srv.requests[-1].body
    assert first.usage.cache_read_tokens == first.usage.cache_write_tokens == 0  # used once: would not pay

    second = await model.request(gemini_request())
    assert routes(srv)[1:] == ["cachedContents", "generateContent"]
    created = srv.requests[1].body
    assert created["model"] == "models/gemini-2.5-flash" and created["ttl"] == "300s"
    assert created["systemInstruction"]["parts"][0]["text"] == LONG_SYSTEM and created["tools"]
    sent = srv.requests[2].body
    assert sent["cachedContent"].startswith("cachedContents/")
    assert not {"systemInstruction", "tools", "toolConfig"} & set(sent)  # Gemini refuses them next to a cache
    assert second.usage.cache_write_tokens > 1024  # the creation, billed once at the input price
    assert second.usage.cache_read_tokens == second.usage.cache_write_tokens

    third = await model.request(gemini_request())
    assert routes(srv)[3:] == ["generateContent"]
    assert third.usage.cache_read_tokens == second.usage.cache_read_tokens and third.usage.cache_write_tokens == 0
    assert third.usage.input_tokens > third.usage.cache_read_tokens  # promptTokenCount includes cached

    streamed = await collect(model.stream(gemini_request()))
    assert streamed.usage.cache_read_tokens == third.usage.cache_read_tokens
    assert srv.requests[-1].body["cachedContent"] == sent["cachedContent"]


async def test_gemini_caches_are_per_tenant(srv: FakeOpenAIServer) -> None:
    model = srv.gemini_model("gemini-2.5-flash")
    for _ in range(2):
        await model.request(gemini_request("a"))
    name_a = srv.requests[-1].body["cachedContent"]
    b_first = await model.request(gemini_request("b"))
    assert "cachedContent" not in srv.requests[-1].body and b_first.usage.cache_read_tokens == 0
    await model.request(gemini_request("b"))
    assert srv.requests[-1].body["cachedContent"] != name_a


async def test_gemini_no_cache_when_off_or_small(srv: FakeOpenAIServer) -> None:
    model = srv.gemini_model("gemini-2.5-flash")
    for _ in range(3):
        await model.request(gemini_request(prompt_cache=False))
        await model.request(gemini_request(system="be brief"))
    assert set(routes(srv)) == {"generateContent"}
    assert all("cachedContent" not in r.body for r in srv.requests)
    # Pro needs 4,096 tokens: the ~1,500-token prefix does not pay there.
    pro = srv.gemini_model("gemini-2.5-pro")
    for _ in range(3):
        await pro.request(gemini_request())
    assert "cachedContents" not in routes(srv)


async def test_gemini_cache_gone_is_forgotten_and_the_request_resent(srv: FakeOpenAIServer) -> None:
    model = srv.gemini_model("gemini-2.5-flash")
    for _ in range(2):
        await model.request(gemini_request())
    srv.prompt_caches.clear()  # expired or deleted on the provider's side
    before = len(srv.requests)
    response = await model.request(gemini_request())
    sent = [r.body for r in srv.requests[before:]]
    assert "cachedContent" in sent[0] and "cachedContent" not in sent[1]  # refused, then resent whole
    assert response.text and response.usage.cache_read_tokens == 0
    events = [e async for e in model.stream(gemini_request())]  # creates a new cache
    assert isinstance(events[-1], ResponseDone) and events[-1].response.usage.cache_write_tokens > 0
    srv.prompt_caches.clear()
    streamed = await collect(model.stream(gemini_request()))
    assert streamed.text and "cachedContent" not in srv.requests[-1].body


async def test_gemini_cost_bills_the_creation_as_input_and_reads_at_the_cached_rate(srv: FakeOpenAIServer) -> None:
    model = srv.gemini_model("gemini-2.5-flash")
    gw = Gateway(models=[model])
    for _ in range(2):
        response = await gw.request(gemini_request(), model.name)
    u = response.usage
    plain = u.input_tokens - u.cache_read_tokens - u.cache_write_tokens
    expected = (plain * 0.30 + u.cache_write_tokens * 0.30 + u.cache_read_tokens * 0.03 + u.output_tokens * 2.5) / 1e6
    assert u.cache_write_tokens > 0 and response.cost_usd == pytest.approx(expected)


# --- through an agent ------------------------------------------------------------------------


async def test_an_agent_conversation_reads_its_previous_turns(srv: FakeOpenAIServer) -> None:
    from bastion import Agent

    def search(q: str) -> str:
        """Search the docs."""
        return "a result " * 30

    agent = Agent(srv.anthropic_model("claude-sonnet-4-5"), instructions=LONG_SYSTEM, tools=[search])
    context = RunContext(tenant="a", session="thread-1")
    reads: list[int] = []
    for turn in range(3):
        srv.reply(ToolCall("search", {"q": f"q{turn}"}), f"answer {turn}")
        result = await agent.run(f"question {turn}", thread_id="thread-1", context=context)
        assert result.output == f"answer {turn}"
        reads.append(result.usage.cache_read_tokens)
    bodies = [r.body for r in srv.requests]
    assert all(marks(b)[:1] == ["system"] for b in bodies)  # every request marks the shared prefix
    assert all(len(marks(b)) <= 4 for b in bodies)
    assert reads[0] > 1024  # the tool-result request of turn one already reads its first request
    assert reads[0] < reads[1] < reads[2]  # each turn reads a longer cached history
