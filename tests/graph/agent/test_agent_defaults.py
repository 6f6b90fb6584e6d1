"""Issue 15.1: `Agent(model, tools=[...])` without a `tool_executor` may use its own tools,
through the policy gateway: irreversible ones still pause for a human, anything else is denied."""

from __future__ import annotations

from bastion.graph.agent import Agent
from bastion.policy import ToolGateway
from bastion.testing import ScriptedModel
from bastion.tools import ToolContext, tool
from bastion.types import ToolCall

ran: list[str] = []


@tool(side_effect="read")
def get_order(order_id: int) -> dict[str, object]:
    """Look up an order."""
    ran.append(f"get_order {order_id}")
    return {"order_id": order_id, "status": "shipped"}


@tool(side_effect="irreversible")
def refund(order_id: int, amount: float) -> str:
    """Refund an order."""
    ran.append(f"refund {order_id} {amount}")
    return f"refunded {amount}"


@tool(side_effect="write")
def delete_account(user: str) -> str:
    """Not one of the agent's tools."""
    ran.append(f"delete {user}")
    return "deleted"


async def test_an_agent_may_call_its_own_tools_without_configuring_a_gateway() -> None:
    ran.clear()
    model = ScriptedModel([ToolCall("get_order", {"order_id": 7}, id="g1"), "Order 7 has shipped."])
    agent = Agent(model, tools=[get_order], name="support")
    result = await agent.run("Where is order 7?")
    assert isinstance(agent.executor(), ToolGateway)
    assert result.output == "Order 7 has shipped." and ran == ["get_order 7"]
    answer = model.requests[1].messages[-1].tool_results[0]
    assert not answer.is_error and "shipped" in answer.content_text()


async def test_an_irreversible_tool_still_pauses_for_a_human_and_runs_once_approved() -> None:
    ran.clear()
    # The amount is not in the user's words: ungrounded, so the default Cedar policy asks a human.
    model = ScriptedModel([ToolCall("refund", {"order_id": 1042, "amount": 99.5}, id="r1"), "Refunded."])
    agent = Agent(model, tools=[get_order, refund], name="support")
    paused = await agent.run("Please refund order 1042", thread_id="t-refund")
    assert paused.interrupted and ran == []
    (pending,) = paused.interrupts
    assert pending.value["type"] == "tool_approval" and pending.value["tool"] == "refund"
    done = await agent.resume({"action": "approve"}, thread_id="t-refund")
    assert done.output == "Refunded." and ran == ["refund 1042 99.5"]


async def test_a_tool_outside_the_agents_list_is_denied() -> None:
    ran.clear()
    model = ScriptedModel([ToolCall("delete_account", {"user": "bob"}, id="d1"), "I cannot do that."])
    agent = Agent(model, tools=[get_order], name="support")
    result = await agent.run("Delete bob's account")
    denied = model.requests[1].messages[-1].tool_results[0]
    assert result.output == "I cannot do that." and denied.is_error and ran == []
    # The grant is exactly the agent's list: the same gateway refuses a tool it was not given,
    # even when the tool is offered to it.
    gateway = agent.executor()
    assert isinstance(gateway, ToolGateway)
    decision = gateway.check(
        ToolCall("delete_account", {"user": "bob"}),
        ToolContext(agent="support"),
        {"get_order": get_order, "delete_account": delete_account},
    )
    assert decision.effect == "deny" and "not granted" in " ".join(decision.messages)
    allowed = gateway.check(
        ToolCall("get_order", {"order_id": 1}), ToolContext(agent="support"), {"get_order": get_order}
    )
    assert allowed.effect == "allow"
