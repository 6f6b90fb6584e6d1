"""Every `Agent` builds its requests through the `ContextAssembler` (issue 16): long threads stay
within the model's window, the summary is checkpointed with the thread, a fact given only in
an early tool result survives compaction, and summaries of untrusted output stay untrusted."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from bastion.checkpoint import SqliteCheckpointer
from bastion.graph.agent import Agent
from bastion.graph.agent._window import model_window
from bastion.memory import ContextPolicy, Summary
from bastion.memory._context import SUMMARY_KEY
from bastion.memory._tokens import CalibratedCounter, messages_tokens, tools_tokens
from bastion.testing import DirectToolExecutor, FunctionModel
from bastion.tools import Tool, ToolCallContext, tool
from bastion.types import Message, ModelRequest, ToolCall, ToolResult

NEEDLE = "VAULTCODE-7F3A91"
counter = CalibratedCounter()  # what the agent counts with for a test model


@tool(side_effect="read")
def lookup_vault(vault: int) -> dict[str, object]:
    """Look up a vault's access record."""
    return {"vault": vault, "code": NEEDLE, "floor": 3, "audit": [{"ts": 1700000000 + i} for i in range(5)]}


def extractive(marker: str) -> FunctionModel:
    """A summariser that keeps the previous summary and every transcript line naming `marker`."""

    def summarise(request: ModelRequest) -> str:
        prompt = request.messages[-1].text
        previous = prompt.split("Previous summary:\n", 1)[1].split("\n\nNew turns to fold in:\n", 1)[0]
        kept = [] if previous == "(none)" else previous.splitlines()
        new = prompt.split("New turns to fold in:\n", 1)[1]
        kept += [line for line in new.splitlines() if marker in line]
        return "\n".join(kept) or "small talk only"

    return FunctionModel(summarise, keep_requests=None)


def chatty(request: ModelRequest) -> str | ToolCall:
    """The agent's model: looks the vault up when asked, answers from what its request holds
    when asked for the code, and otherwise chats at length."""
    last = request.messages[-1]
    if last.role == "user" and "open vault" in last.text:
        return ToolCall("lookup_vault", {"vault": 7})
    if last.role == "user" and "what was the code" in last.text:
        seen = "\n".join(m.text for m in request.messages)
        return NEEDLE if NEEDLE in seen else "I do not know"
    return "Noted. " + "Here is a long and careful answer about the weather and the shipping. " * 6


def check_request(request: ModelRequest, budget: int) -> None:
    counted = messages_tokens(counter, request.messages) + tools_tokens(counter, request.tools)
    assert counted <= budget, counted
    assert request.messages[0].role == "system" and request.messages[0].text == "You keep vaults."
    called: set[str] = set()
    for m in request.messages:
        called |= {c.id for c in m.tool_calls}
        assert all(r.tool_call_id in called for r in m.tool_results), "a tool result without its call"


async def test_a_500_turn_thread_stays_within_budget_and_keeps_an_early_fact(tmp_path: Path) -> None:
    model = FunctionModel(chatty, keep_requests=None)
    summarizer = extractive("VAULTCODE")
    policy = ContextPolicy(window=3000, reserve_output=500, summarizer=summarizer, keep_recent=4)
    checkpointer = SqliteCheckpointer(tmp_path / "threads.db")
    agent = Agent(
        model,
        tools=[lookup_vault],
        instructions="You keep vaults.",
        tool_executor=DirectToolExecutor(),
        checkpointer=checkpointer,
        context=policy,
    )
    started = time.perf_counter()
    first = await agent.run("please open vault 7", thread_id="t")
    assert NEEDLE in first.messages[2].text  # the fact is in the tool result only
    for i in range(498):
        await agent.run(f"tell me about day {i}", thread_id="t")
    last = await agent.run("what was the code of vault 7?", thread_id="t")
    elapsed = time.perf_counter() - started
    assert last.output == NEEDLE
    assert len(last.messages) >= 1000
    budget = 3000 - 500
    for request in model.requests:
        check_request(request, budget)
    sizes = [len(r.messages) for r in model.requests]
    assert max(sizes) < 60  # without the assembler the last request would hold every message
    # The summary is kept with the thread: summarised in batches, not recomputed every turn.
    compactions = len(summarizer.requests)
    assert 3 <= compactions < 120
    snapshot = await agent._runner.app().aget_state("t")  # pyright: ignore[reportPrivateUsage]
    stored = Summary.from_dict(snapshot.values["summaries"][agent.name])
    assert NEEDLE in stored.text and stored.trust == "untrusted" and stored.count > 900
    summary_msg = next(m for m in model.requests[-1].messages if m.metadata.get(SUMMARY_KEY))
    assert summary_msg.role == "system" and summary_msg.metadata["trust"] == "untrusted"
    assert "untrusted tool output" in summary_msg.text
    assert elapsed < 10, elapsed


async def test_context_none_sends_the_whole_thread() -> None:
    model = FunctionModel(lambda r: "ok " * 50, keep_requests=None)
    agent = Agent(model, instructions="You keep vaults.", tool_executor=DirectToolExecutor(), context=None)
    for i in range(30):
        await agent.run(f"turn {i}", thread_id="t")
    assert len(model.requests[-1].messages) == 1 + 2 * 29 + 1


async def test_the_default_agent_compacts_against_a_known_window() -> None:
    """No policy given: the assembler is on, with the window taken from the model (here its
    `context_window` attribute) and the agent's own model as the summariser."""

    class SmallModel(FunctionModel):
        context_window = 2048

    def reply(request: ModelRequest) -> str:
        if request.messages[0].text.startswith("You maintain the running summary"):
            return "summary of earlier turns"
        return "answer " * 120

    model = SmallModel(reply, keep_requests=None)
    agent = Agent(model, tool_executor=DirectToolExecutor())
    for i in range(40):
        await agent.run(f"question {i}", thread_id="t")
    asked = [r for r in model.requests if not r.messages[0].text.startswith("You maintain")]
    summaries = [r for r in model.requests if r.messages[0].text.startswith("You maintain")]
    assert summaries, "the default agent never compacted"
    reserve = min(1024, 2048 // 8)
    for request in asked:
        assert messages_tokens(counter, request.messages) <= 2048 - reserve
    assert asked[-1].messages[-1].text == "question 39"  # the latest user turn is always there


async def test_the_tool_gateway_still_sees_evicted_untrusted_results() -> None:
    """Compaction shapes what the model reads, not what policy checks: the tool gateway gets
    the thread's full history, so taint rules still see an evicted untrusted result."""
    seen: list[list[Message]] = []

    class Recording(DirectToolExecutor):
        async def execute(self, call: ToolCall, tools: Mapping[str, Tool], context: ToolCallContext) -> ToolResult:
            seen.append(list(context.messages))
            return await super().execute(call, tools, context)

    def reply(request: ModelRequest) -> str | ToolCall:
        last = request.messages[-1]
        if last.role == "user" and "vault" in last.text:
            return ToolCall("lookup_vault", {"vault": 7})
        return "fine " * 60

    model = FunctionModel(reply, keep_requests=None)
    agent = Agent(
        model,
        tools=[lookup_vault],
        instructions="You keep vaults.",
        tool_executor=Recording(),
        context=ContextPolicy(window=1500, reserve_output=300, summarizer=extractive("VAULTCODE"), keep_recent=2),
    )
    await agent.run("open vault 7", thread_id="t")
    for i in range(40):
        await agent.run(f"chat {i}", thread_id="t")
    await agent.run("open vault 7 again", thread_id="t")
    assert not any(NEEDLE in m.text for m in model.requests[-2].messages if m.role == "tool")  # evicted
    history = seen[-1]
    first = next(r for m in history for r in m.tool_results)
    assert NEEDLE in first.content_text() and first.trust == "untrusted"


def test_window_comes_from_the_gateway_metadata_or_the_local_model() -> None:
    from bastion.gateway import Gateway

    gateway = Gateway()
    assert model_window(gateway.model("openai:gpt-4o-mini")) == 128_000
    assert model_window(gateway.model("anthropic:claude-sonnet-4-5")) == 200_000
    assert model_window(FunctionModel(lambda r: "x")) is None  # unknown: DEFAULT_WINDOW applies


@pytest.mark.local_model
def test_the_local_model_string_gets_its_n_ctx_and_its_tokenizer() -> None:
    pytest.importorskip("llama_cpp")
    from bastion.gateway.formats.llamacpp import N_CTX
    from bastion.memory._tokens import LlamaCppCounter

    agent = Agent("local:gemma-3-270m", tool_executor=DirectToolExecutor())
    window = agent.context_builder
    assert window is not None
    assembler = window.assembler
    assert assembler.window == N_CTX and isinstance(assembler.counter, LlamaCppCounter)


async def test_a_resumed_turn_replays_its_summary_instead_of_paying_again(tmp_path: Path) -> None:
    fail = {"armed": False}

    def reply(request: ModelRequest) -> str:
        if fail["armed"]:
            fail["armed"] = False
            raise ConnectionError("provider went away")
        return "answer " * 80

    summarizer = FunctionModel(lambda r: "what happened so far", keep_requests=None)
    agent = Agent(
        FunctionModel(reply),
        tool_executor=DirectToolExecutor(),
        checkpointer=SqliteCheckpointer(tmp_path / "threads.db"),
        context=ContextPolicy(window=1200, reserve_output=200, summarizer=summarizer, keep_recent=2),
    )
    turn = 0
    while not summarizer.requests:  # run until the turn before the first compaction
        calls = len(summarizer.requests)
        fail["armed"] = True
        with pytest.raises(ConnectionError):
            await agent.run(f"question {turn}", thread_id="t")
        if len(summarizer.requests) > calls:
            break
        await agent.resume(thread_id="t")  # no compaction yet: just finish the turn
        turn += 1
    made = len(summarizer.requests)
    assert made >= 1
    result = await agent.resume(thread_id="t")
    assert result.output == "answer " * 80
    assert len(summarizer.requests) == made  # replayed from the journal, not summarised again
