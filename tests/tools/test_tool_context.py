"""Issue 15.2: a tool reaches its run through a `ToolContext[Deps]` parameter, injected by the
runner and never shown to the model; `Agent(deps=)` / `run(deps=)` pass the application's deps."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import ToolArgumentsError, UserError
from bastion.graph.agent import Agent
from bastion.policy import Policy, StaticSecretProvider, ToolGateway
from bastion.testing import DirectToolExecutor, ScriptedModel
from bastion.tools import ToolContext, ToolRunner, tool
from bastion.types import RunContext, ToolCall


@dataclass
class Shop:
    name: str
    orders: dict[int, str]


@tool(side_effect="read")
async def order_status(ctx: ToolContext[Shop], order_id: int) -> dict[str, Any]:
    """Status of an order.

    Args:
        order_id: the order number.
    """
    return {
        "status": ctx.deps.orders[order_id],
        "shop": ctx.deps.name,
        "tenant": ctx.tenant,
        "user": ctx.user,
        "run_id": ctx.run_id,
        "thread": ctx.thread_id,
        "agent": ctx.agent,
        "call": ctx.tool_call_id,
        "history": len(ctx.messages),
    }


@tool
def whoami(context: ToolContext) -> str:  # a sync tool, bare annotation
    """Who the call is for."""
    return f"{context.tenant}/{context.user}"


def test_the_context_parameter_is_not_in_the_schema_the_model_sees() -> None:
    assert order_status.context_param == "ctx"
    assert set(order_status.parameters["properties"]) == {"order_id"}
    assert order_status.parameters["required"] == ["order_id"]
    assert whoami.parameters.get("properties", {}) == {}
    # and a model cannot smuggle one in: unknown arguments are refused
    with pytest.raises(ToolArgumentsError, match="ctx"):
        order_status.validate({"order_id": 1, "ctx": {"deps": "forged"}})


async def test_an_agent_run_injects_tenant_user_thread_run_id_and_deps() -> None:
    model = ScriptedModel([ToolCall("order_status", {"order_id": 7}, id="c7"), "done"])
    shop = Shop("north", {7: "shipped"})
    agent = Agent(model, tools=[order_status], name="clerk", tool_executor=DirectToolExecutor(), deps=shop)
    context = RunContext(tenant="acme", user="bob", run_id="run-1")
    await agent.run("Where is 7?", thread_id="th-1", context=context)
    seen = model.requests[1].messages[-1].tool_results[0].content
    assert seen == {
        "status": "shipped",
        "shop": "north",
        "tenant": "acme",
        "user": "bob",
        "run_id": "run-1",
        "thread": "th-1",
        "agent": "clerk",
        "call": "c7",
        "history": 2,
    }


async def test_run_deps_replace_the_agents_for_one_run_through_the_default_gateway() -> None:
    model = ScriptedModel([ToolCall("order_status", {"order_id": 7}), "done"] * 2)
    agent = Agent(model, tools=[order_status], name="clerk", deps=Shop("north", {7: "shipped"}))
    await agent.run("7?", deps=Shop("south", {7: "lost"}))
    first = model.requests[1].messages[-1].tool_results[0].content_text()
    await agent.run("7?")
    second = model.requests[3].messages[-1].tool_results[0].content_text()
    assert '"shop": "south"' in first and '"lost"' in first
    assert '"shop": "north"' in second and '"shipped"' in second


async def test_executors_called_directly_inject_the_context_they_are_given() -> None:
    context = ToolContext[Any](run=RunContext(tenant="t1", user="u1"), agent="a")
    direct = await DirectToolExecutor().execute(ToolCall("whoami", {}), {"whoami": whoami}, context)
    gateway = ToolGateway(Policy({"a": ["whoami"]}), secrets=StaticSecretProvider({}))
    gated = await gateway.execute(ToolCall("whoami", {}), {"whoami": whoami}, context)
    assert direct.content == "t1/u1" and not gated.is_error and "t1/u1" in gated.content_text()
    # the bare runner (no agent, no executor) still tells the tool who the call is for
    ran = await ToolRunner().run(whoami, ToolCall("whoami", {}), context=RunContext(tenant="t2", user="u2"))
    assert ran.content == "t2/u2"


async def test_invoking_a_context_tool_outside_any_run_says_how_to_fix_it() -> None:
    with pytest.raises(UserError, match="use_tool_context"):
        await whoami.invoke({})


def test_memory_finds_the_run_through_the_public_tool_context() -> None:
    source = Path(__file__).parents[2] / "src/bastion/memory/_tools.py"
    imports = [
        node.module or "" for node in ast.walk(ast.parse(source.read_text())) if isinstance(node, ast.ImportFrom)
    ]
    assert "bastion.graph.agent._runtime" not in imports
    assert "bastion.tools" in imports


def test_one_concept_one_name_across_layers() -> None:
    """Issue 15.6: the retry policy and the circuit breaker are the gateway's in every layer;
    the tools' idempotency record no longer shares a name with the checkpoint journal."""
    import bastion.checkpoint
    import bastion.checkpoint.format
    import bastion.gateway
    import bastion.graph
    import bastion.tools

    assert bastion.tools.RetryPolicy is bastion.graph.RetryPolicy is bastion.gateway.RetryPolicy
    assert bastion.tools.CircuitBreaker is bastion.gateway.CircuitBreaker
    assert "JournalEntry" not in bastion.tools.__all__ and "IdempotencyEntry" in bastion.tools.__all__
    assert bastion.tools.JournalEntry is bastion.tools.IdempotencyEntry  # the old import still works
    assert bastion.checkpoint.JournalEntry is not bastion.tools.IdempotencyEntry
    assert {"ToolContext", "current_tool_context", "use_tool_context", "to_plain", "OUTCOME_UNKNOWN"} <= set(
        bastion.tools.__all__
    )
    assert bastion.tools.ToolCallContext is bastion.tools.ToolContext
    assert bastion.tools.__all__ == sorted(bastion.tools.__all__, key=lambda n: (not n.isupper(), n))
    for module in (bastion.tools, bastion.checkpoint.format):
        for name in module.__all__:
            assert getattr(module, name) is not None, name
    import bastion.testing._tools as doubles

    assert doubles.error_result is bastion.tools.error_result  # the double has no error_result of its own
