"""Handoffs in the trace and handing control back: the agent that takes over has its own
`invoke_agent` span (naming who handed over) under the run's span, so its model and tool calls
are not attributed to the agent that handed off; `handoff(..., return_to_caller=True)` brings
the answer back to the caller, like LangGraph swarm's handoff back."""

from __future__ import annotations

from typing import Any

from bastion.gateway import Gateway
from bastion.graph.agent import Agent, HandoffEvent, RunDone, handoff
from bastion.testing import DirectToolExecutor, FunctionModel, ScriptedModel
from bastion.tools import tool
from bastion.types import ModelRequest, ToolCall

Traced = Any  # conftest.Traced: .spans() flushes and returns the finished spans


@tool(side_effect="read")
def lookup_account(email: str) -> str:
    """Find a customer's account."""
    return "A-17"


@tool(side_effect="write")
def issue_refund(account: str) -> str:
    """Refund the last invoice."""
    return f"refunded {account}"


def agents(**handoff_options: Any) -> tuple[Agent[Any], ScriptedModel, ScriptedModel]:
    triage_model = ScriptedModel(
        [
            ToolCall("lookup_account", {"email": "ann@example.com"}, id="l1"),
            ToolCall("transfer_to_billing", {"reason": "refund"}, id="h1"),
            "Billing has refunded you; anything else?",
        ],
        name="test:triage",
    )
    billing_model = ScriptedModel(
        [ToolCall("issue_refund", {"account": "A-17"}, id="r1"), "Refund issued for A-17."], name="test:billing"
    )
    gateway = Gateway(models=[triage_model, billing_model], cache=False)
    executor = DirectToolExecutor()
    billing = Agent("test:billing", gateway=gateway, name="billing", tools=[issue_refund], tool_executor=executor)
    triage = Agent(
        "test:triage",
        gateway=gateway,
        name="triage",
        tools=[lookup_account],
        handoffs=[handoff(billing, **handoff_options)],
        tool_executor=executor,
    )
    return triage, triage_model, billing_model


async def test_the_agent_handed_to_works_under_its_own_span(traced: Traced) -> None:
    triage, _, _ = agents()
    result = await triage.run("refund me please")
    assert result.agent == "billing" and result.output == "Refund issued for A-17."

    finished = traced.spans()
    by_id = {s.context.span_id: s for s in finished}

    def parent(span: Any) -> Any:
        return by_id[span.parent.span_id] if span.parent is not None else None

    (root,) = [s for s in finished if s.parent is None]
    assert root.name == "invoke_agent triage"
    chats = [s for s in finished if s.name.startswith("chat ")]
    triage_chats = [s for s in chats if s.attributes["gen_ai.agent.name"] == "triage"]
    billing_chats = [s for s in chats if s.attributes["gen_ai.agent.name"] == "billing"]
    assert len(triage_chats) == 2 and len(billing_chats) == 2
    # The handing-off agent's calls stay directly under the run's span ...
    assert all(parent(s) is root for s in triage_chats)
    assert parent(next(s for s in finished if s.name == "execute_tool lookup_account")) is root
    # ... and everything billing does nests under `invoke_agent billing`, a child of triage's span.
    refund = next(s for s in finished if s.name == "execute_tool issue_refund")
    for span in [*billing_chats, refund]:
        handed = parent(span)
        assert handed.name == "invoke_agent billing", span.name
        assert parent(handed) is root
        assert handed.attributes["bastion.handoff.from"] == "triage"
        assert handed.attributes["bastion.handoff.to"] == "billing"
        assert handed.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}


async def test_return_to_caller_hands_the_answer_back(traced: Traced) -> None:
    triage, triage_model, billing_model = agents(return_to_caller=True)
    events = [e async for e in triage.stream("refund me please")]
    assert [(e.source, e.target) for e in events if isinstance(e, HandoffEvent)] == [
        ("triage", "billing"),
        ("billing", "triage"),
    ]
    done = events[-1]
    assert isinstance(done, RunDone)
    assert done.result.agent == "triage" and done.result.output == "Billing has refunded you; anything else?"
    assert len(billing_model.requests) == 2 and len(triage_model.requests) == 3

    # Triage continues its own history: its transfer call answered with billing's result.
    back: ModelRequest = triage_model.requests[2]
    call, answer = back.messages[-2], back.messages[-1]
    assert [c.id for c in call.tool_calls] == ["h1"]
    (result,) = answer.tool_results
    assert result.tool_call_id == "h1" and result.trust == "untrusted"
    assert result.content == {"agent": "billing", "answer": "Refund issued for A-17."}
    # Billing's tool chatter is not in triage's view (it saw only its own turns and the answer).
    assert not any(c.name == "issue_refund" for m in back.messages for c in m.tool_calls)
    assert any(r.name == "lookup_account" for m in back.messages for r in m.tool_results)

    # In the trace, billing's work sits under its handoff span; triage's last call under the root.
    finished = traced.spans()
    by_id = {s.context.span_id: s for s in finished}
    (root,) = [s for s in finished if s.parent is None]
    assert [s.name for s in finished if s.name.startswith("invoke_agent ")].count("invoke_agent triage") == 1
    assert {s.attributes["bastion.handoff.to"] for s in finished if "bastion.handoff.to" in s.attributes} == {"billing"}
    last_triage_chat = max(
        (s for s in finished if s.name.startswith("chat ") and s.attributes["gen_ai.agent.name"] == "triage"),
        key=lambda s: s.start_time,
    )
    assert by_id[last_triage_chat.parent.span_id] is root


async def test_return_to_caller_carries_a_structured_answer_and_the_thread_goes_on() -> None:
    from pydantic import BaseModel

    class Refund(BaseModel):
        account: str
        amount: float

    seen: list[ModelRequest] = []

    def triage_reply(request: ModelRequest) -> Any:
        seen.append(request)
        if len(seen) == 1:
            return ToolCall("transfer_to_billing", {}, id="h1")
        return "ok: " + request.messages[-1].text

    billing = Agent(
        FunctionModel(lambda r: Refund(account="A-17", amount=9.5).model_dump_json(), name="test:billing"),
        name="billing",
        output_type=Refund,
        tool_executor=DirectToolExecutor(),
    )
    triage = Agent(
        FunctionModel(triage_reply, name="test:triage"),
        name="triage",
        handoffs=[handoff(billing, return_to_caller=True)],
        tool_executor=DirectToolExecutor(),
    )
    result = await triage.run("refund", thread_id="t1")
    assert result.agent == "triage"
    assert seen[-1].messages[-1].tool_results[0].content == {
        "agent": "billing",
        "answer": {"account": "A-17", "amount": 9.5},
    }
    # The next run on the thread starts with triage again (control came back), not billing.
    again = await triage.run("thanks", thread_id="t1")
    assert again.agent == "triage" and again.output == "ok: thanks"
