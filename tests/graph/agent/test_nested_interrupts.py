"""An approval inside a sub-agent (agent as tool, supervisor member) pauses the outer run;
resuming the outer run resumes the sub-agent, and nothing completed is repeated."""

from __future__ import annotations

from typing import Any

from bastion.graph.agent import Agent, Supervisor
from bastion.testing import DirectToolExecutor, ScriptedModel
from bastion.tools import Tool, tool
from bastion.types import ToolCall


def pay_tool(paid: list[int]) -> Tool:
    @tool(side_effect="irreversible")
    def pay(amount: int) -> str:
        """Pay an amount."""
        paid.append(amount)
        return f"paid {amount}"

    return pay


async def test_approval_inside_an_agent_tool_pauses_and_resumes_the_caller() -> None:
    paid: list[int] = []
    sub_model = ScriptedModel([ToolCall("pay", {"amount": 40}), "payment done"], name="test:payments")
    payments = Agent(
        sub_model, name="payments", tools=[pay_tool(paid)], tool_executor=DirectToolExecutor(approval={"pay"})
    )
    lead_model = ScriptedModel([ToolCall("payments", {"task": "pay 40"}, id="d1"), "All paid."], name="test:lead")
    lead = Agent(lead_model, name="lead", tools=[payments.as_tool()], tool_executor=DirectToolExecutor())

    paused = await lead.run("pay my bill", thread_id="outer")
    assert paused.interrupted and paid == []
    (pending,) = paused.interrupts
    assert pending.value["type"] == "agent_interrupt" and pending.value["agent"] == "payments"
    (inner,) = pending.value["interrupts"]
    assert inner["value"]["tool"] == "pay" and inner["value"]["arguments"] == {"amount": 40}

    done = await lead.resume(True, thread_id="outer")
    assert done.output == "All paid." and paid == [40]
    assert (len(lead_model.requests), len(sub_model.requests)) == (2, 2)
    assert lead_model.requests[1].messages[-1].tool_results[0].content == "payment done"
    assert done.usage.requests == 4


async def test_two_successive_approvals_inside_a_member_are_answered_in_turn() -> None:
    paid: list[int] = []
    member_model = ScriptedModel(
        [ToolCall("pay", {"amount": 1}), ToolCall("pay", {"amount": 2}), "paid twice"], name="test:member"
    )
    member = Agent(
        member_model, name="cashier", tools=[pay_tool(paid)], tool_executor=DirectToolExecutor(approval={"pay"})
    )
    sup = Supervisor([member], router=lambda m: None if m[-1].role == "assistant" else "cashier")

    first = await sup.run("pay 1 then 2", thread_id="sup")
    assert first.interrupted and first.interrupts[0].value["interrupts"][0]["value"]["arguments"] == {"amount": 1}
    second = await sup.resume(True, thread_id="sup")
    assert second.interrupted and paid == [1]
    assert second.interrupts[0].value["interrupts"][0]["value"]["arguments"] == {"amount": 2}
    done = await sup.resume("reject", thread_id="sup")
    assert done.output == "paid twice" and paid == [1]  # the second payment was rejected
    assert len(member_model.requests) == 3
    rejected = member_model.requests[2].messages[-1].tool_results[0]
    assert rejected.is_error and rejected.content["type"] == "approval_rejected"


async def test_member_sub_threads_are_deleted_once_answered() -> None:
    member = Agent(ScriptedModel(["ok"]), name="m", tool_executor=DirectToolExecutor())
    sup = Supervisor([member], router=lambda m: None if m[-1].role == "assistant" else "m")
    assert (await sup.run("hi", thread_id="keep")).output == "ok"
    saver: Any = member._runner._checkpointer  # pyright: ignore[reportPrivateUsage]
    assert [t for t in saver_threads(saver) if t.startswith("keep/")] == []


def saver_threads(saver: Any) -> list[str]:
    for name in ("_threads", "threads", "_checkpoints", "_data"):
        store = getattr(saver, name, None)
        if isinstance(store, dict):
            return [k if isinstance(k, str) else k[0] for k in store]
    raise AssertionError(f"cannot list threads of {saver!r}")
