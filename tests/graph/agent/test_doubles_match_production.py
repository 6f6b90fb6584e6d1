"""Issue 15.3: the test double (`DirectToolExecutor`) and the production gateway
(`ToolGateway`) speak one approval protocol and return one set of error kinds, so a test
written against either holds against the other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from bastion.graph.agent import Agent
from bastion.policy import Policy, StaticSecretProvider, ToolGateway
from bastion.testing import DirectToolExecutor, ScriptedModel
from bastion.tools import ToolContext, ToolExecutor, tool
from bastion.types import ToolCall

paid: list[float] = []


@tool(side_effect="irreversible", trust="trusted")
def pay(invoice: int, amount: float) -> str:
    """Pay an invoice."""
    paid.append(amount)
    return f"paid {amount}"


@tool(trust="trusted")
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(trust="trusted")
def explode() -> str:
    """Always fails."""
    raise RuntimeError("boom")


@tool(trust="trusted", timeout=0.05)
async def hang() -> str:
    """Never returns."""
    await asyncio.Event().wait()
    return "never"


TOOLS = {t.name: t for t in (pay, add, explode, hang)}


def direct() -> ToolExecutor:
    return DirectToolExecutor(approval={"pay"})


def gateway() -> ToolExecutor:
    # production: `pay` is irreversible and its amount is not in the user's words, so it needs approval
    return ToolGateway(Policy({"clerk": list(TOOLS)}), secrets=StaticSecretProvider({}), spotlight=False)


EXECUTORS = [pytest.param(direct, id="DirectToolExecutor"), pytest.param(gateway, id="ToolGateway")]


async def paused_run(make: Callable[[], ToolExecutor]) -> tuple[Agent[Any], ScriptedModel, dict[str, Any]]:
    paid.clear()
    model = ScriptedModel([ToolCall("pay", {"invoice": 7, "amount": 40.0}, id="p1"), "ok"])
    agent = Agent(model, tools=[pay], name="clerk", tool_executor=make())
    paused = await agent.run("Pay invoice 7", thread_id="t")
    (pending,) = paused.interrupts
    return agent, model, pending.value


@pytest.mark.parametrize("make", EXECUTORS)
async def test_the_approval_interrupt_has_the_production_payload(make: Callable[[], ToolExecutor]) -> None:
    _, _, payload = await paused_run(make)
    assert payload["type"] == "tool_approval"
    assert set(payload) == {"type", "tool", "tool_call_id", "arguments", "risk", "agent", "tenant", "run_id", "user"}
    assert (payload["tool"], payload["tool_call_id"], payload["arguments"], payload["agent"]) == (
        "pay",
        "p1",
        {"invoice": 7, "amount": 40.0},
        "clerk",
    )
    assert {"text", "level", "irreversible"} <= set(payload["risk"])


@pytest.mark.parametrize("make", EXECUTORS)
@pytest.mark.parametrize(
    ("answer", "expect_paid", "expect_type"),
    [
        ({"action": "approve"}, [40.0], None),
        (True, [40.0], None),
        ({"approved": True}, [40.0], None),
        ({"action": "edit", "arguments": {"invoice": 7, "amount": 4.0}}, [4.0], None),
        ({"action": "reject", "reason": "wrong payee"}, [], "approval_rejected"),
        ("reject", [], "approval_rejected"),
    ],
)
async def test_every_documented_answer_means_the_same_to_both(
    make: Callable[[], ToolExecutor], answer: Any, expect_paid: list[float], expect_type: str | None
) -> None:
    agent, model, _ = await paused_run(make)
    done = await agent.resume(answer, thread_id="t")
    assert done.output == "ok" and paid == expect_paid
    result = model.requests[1].messages[-1].tool_results[0]
    assert result.is_error == (expect_type is not None)
    if expect_type is not None:
        assert result.content["type"] == expect_type
        assert ("wrong payee" in result.content["error"]) == (answer != "reject")


@pytest.mark.parametrize(
    ("call", "kind"),
    [
        (ToolCall("nope", {}), "unknown_tool"),
        (ToolCall("add", {"a": "x"}), "invalid_arguments"),
        (ToolCall("explode", {}), "RuntimeError"),
        (ToolCall("hang", {}), "timeout"),
    ],
)
async def test_failures_have_the_same_shape_and_kind(call: ToolCall, kind: str) -> None:
    results = [
        await asyncio.wait_for(make().execute(call, TOOLS, ToolContext(agent="clerk")), 5) for make in (direct, gateway)
    ]
    for r in results:
        assert r.is_error and r.content["type"] == kind and isinstance(r.content["error"], str)
    assert results[0].content == results[1].content
