"""Multi-agent patterns: handoffs with filtered history, agents as tools, supervisors (model and
rule routing), planner → parallel executors → verifier."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bastion.errors import MaxTurnsExceededError, UserError
from bastion.graph.agent import (
    Agent,
    HandoffEvent,
    Plan,
    PlanExecuteVerify,
    PlanStep,
    RunDone,
    Supervisor,
    TokenEvent,
    Verdict,
    handoff,
    keep_all,
    last_user_message,
)
from bastion.testing import DirectToolExecutor, FunctionModel, ScriptedModel
from bastion.tools import tool
from bastion.types import Message, ModelRequest, ToolCall


@tool(side_effect="read")
def lookup_account(email: str) -> dict[str, str]:
    """Find a customer's account."""
    return {"account": "A-17", "plan": "pro"}


def roles(messages: list[Message]) -> list[str]:
    return [m.role for m in messages]


def triage_and_billing(
    executor: DirectToolExecutor, **handoff_options: Any
) -> tuple[Agent[Any], ScriptedModel, FunctionModel]:
    triage_model = ScriptedModel(
        [
            ToolCall("lookup_account", {"email": "ann@example.com"}, id="l1"),
            [ToolCall("transfer_to_billing", {"reason": "refund"}, id="h1")],
        ],
        name="test:triage",
    )
    billing_model = FunctionModel(lambda r: "Refund issued for A-17.", name="test:billing")
    billing = Agent(billing_model, name="billing", description="refunds and invoices", tool_executor=executor)
    triage = Agent(
        triage_model,
        name="triage",
        tools=[lookup_account],
        handoffs=[handoff(billing, **handoff_options)],
        tool_executor=executor,
    )
    return triage, triage_model, billing_model


async def test_handoff_transfers_control_and_drops_tool_chatter(executor: DirectToolExecutor) -> None:
    triage, triage_model, billing_model = triage_and_billing(executor)
    result = await triage.run("I was charged twice, ann@example.com", thread_id="h")
    assert result.output == "Refund issued for A-17." and result.agent == "billing"
    spec_names = [t.name for t in triage_model.requests[0].tools]
    assert spec_names == ["lookup_account", "transfer_to_billing"]
    seen = billing_model.requests[0].messages
    assert roles(seen) == ["user"]  # no tool calls or results from triage
    assert seen[0].text == "I was charged twice, ann@example.com"
    # the thread still holds the whole transcript
    assert roles(result.messages) == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert result.messages[-1].name == "billing"


async def test_handoff_filters_are_pluggable(executor: DirectToolExecutor) -> None:
    triage, _, billing_model = triage_and_billing(executor, filter=keep_all)
    await triage.run("I was charged twice, ann@example.com")
    assert roles(billing_model.requests[0].messages) == ["user", "assistant", "tool", "assistant", "tool"]

    def only_text(messages: Any) -> list[Message]:
        return [Message.user("Summary: customer A-17 wants a refund")]

    triage, _, billing_model = triage_and_billing(executor, filter=only_text)
    await triage.run("I was charged twice")
    assert [m.text for m in billing_model.requests[0].messages] == ["Summary: customer A-17 wants a refund"]
    triage, _, billing_model = triage_and_billing(executor, filter=last_user_message)
    await triage.run("I was charged twice")
    assert [m.text for m in billing_model.requests[0].messages] == ["I was charged twice"]


async def test_the_next_run_on_the_thread_continues_with_the_new_agent(executor: DirectToolExecutor) -> None:
    triage, triage_model, billing_model = triage_and_billing(executor)
    await triage.run("refund please", thread_id="cont")
    second = await triage.run("thanks, and the invoice?", thread_id="cont")
    assert second.agent == "billing" and len(billing_model.requests) == 2 and len(triage_model.requests) == 2
    assert [m.text for m in billing_model.requests[1].messages if m.role == "user"] == [
        "refund please",
        "thanks, and the invoice?",
    ]


async def test_handoff_is_streamed(executor: DirectToolExecutor) -> None:
    triage, _, _ = triage_and_billing(executor)
    events = [e async for e in triage.stream("refund")]
    handoffs = [e for e in events if isinstance(e, HandoffEvent)]
    assert [(h.source, h.target) for h in handoffs] == [("triage", "billing")]
    assert isinstance(events[-1], RunDone) and events[-1].result.agent == "billing"


async def test_agent_as_tool_runs_the_sub_agent_on_the_task_only(executor: DirectToolExecutor) -> None:
    researcher_model = FunctionModel(lambda r: f"3 sources about {r.messages[-1].text}", name="test:researcher")
    researcher = Agent(researcher_model, name="researcher", instructions="Research.", tool_executor=executor)
    lead_model = ScriptedModel(
        [ToolCall("research", {"task": "solar panels"}, id="r1"), "Summary: 3 sources."], name="test:lead"
    )
    lead = Agent(
        lead_model,
        tools=[researcher.as_tool("research", "Research a topic")],
        tool_executor=executor,
        name="lead",
    )
    result = await lead.run("Write about solar panels")
    assert result.output == "Summary: 3 sources."
    assert lead_model.requests[0].tools[0].name == "research"
    assert lead_model.requests[0].tools[0].parameters["required"] == ["task"]
    assert [m.text for m in researcher_model.requests[0].messages] == ["Research.", "solar panels"]
    tool_result = lead_model.requests[1].messages[-1].tool_results[0]
    assert tool_result.content == "3 sources about solar panels" and tool_result.trust == "untrusted"
    assert researcher_model.requests[0].context.agent == "researcher"
    assert result.usage.requests == 3  # the lead's two turns and the researcher's one


async def test_sub_agent_events_join_the_callers_stream(executor: DirectToolExecutor) -> None:
    researcher = Agent(FunctionModel(lambda r: "three sources"), name="researcher", tool_executor=executor)
    lead = Agent(
        ScriptedModel([ToolCall("research", {"task": "x"}), "summary"]),
        tools=[researcher.as_tool("research")],
        tool_executor=executor,
        name="lead",
    )
    events = [e async for e in lead.stream("go")]
    tokens = [(e.agent, e.text) for e in events if isinstance(e, TokenEvent)]
    assert "".join(t for a, t in tokens if a == "researcher") == "three sources"
    assert "".join(t for a, t in tokens if a == "lead") == "summary"
    done = events[-1]
    assert isinstance(done, RunDone) and done.result.usage.requests == 3


def member(name: str, rendezvous: Any = None) -> tuple[Agent[Any], FunctionModel]:
    async def reply(request: ModelRequest) -> str:
        if rendezvous is not None:
            await rendezvous.meet()
        return f"{name} did: {request.messages[-1].text}"

    model = FunctionModel(reply, name=f"test:{name}")
    return Agent(model, name=name, description=f"the {name} expert", tool_executor=DirectToolExecutor()), model


async def test_supervisor_routes_by_model_and_runs_members_in_parallel(rendezvous: Any) -> None:
    meeting = rendezvous(2)
    math, math_model = member("math", meeting)
    writer, writer_model = member("writer", meeting)
    sup_model = ScriptedModel(
        [
            [
                ToolCall("route_to_math", {"task": "compute 6*7"}, id="m1"),
                ToolCall("route_to_writer", {"task": "write a haiku"}, id="w1"),
            ],
            "42, and a haiku.",
        ],
        name="test:supervisor",
    )
    sup = Supervisor([math, writer], model=sup_model)
    result = await asyncio.wait_for(sup.run("Compute 6*7 and write a haiku"), 10)
    assert result.output == "42, and a haiku."
    assert [t.name for t in sup_model.requests[0].tools] == ["route_to_math", "route_to_writer"]
    assert "math: the math expert" in sup_model.requests[0].messages[0].text
    assert [m.text for m in math_model.requests[0].messages] == ["compute 6*7"]
    assert [m.text for m in writer_model.requests[0].messages] == ["write a haiku"]
    answers = {r.tool_call_id: r.content for m in sup_model.requests[1].messages for r in m.tool_results}
    assert answers == {"m1": "math did: compute 6*7", "w1": "writer did: write a haiku"}
    assert result.usage.requests == 4  # 2 supervisor turns + 2 members


async def test_supervisor_stream_carries_the_members_tokens() -> None:
    math, _ = member("math")
    sup = Supervisor([math], model=ScriptedModel([ToolCall("route_to_math", {"task": "6*7"}), "42"]))
    events = [e async for e in sup.stream("6*7?")]
    assert "".join(e.text for e in events if isinstance(e, TokenEvent) and e.agent == "math") == "math did: 6*7"
    assert isinstance(events[-1], RunDone) and events[-1].result.output == "42"


async def test_supervisor_rejects_an_unknown_route_and_lets_the_model_retry() -> None:
    math, _ = member("math")
    sup_model = ScriptedModel(
        [ToolCall("route_to_physics", {"task": "x"}, id="bad"), ToolCall("route_to_math", {"task": "1+1"}), "2"]
    )
    result = await Supervisor([math], model=sup_model).run("1+1?")
    assert result.output == "2"
    rejected = sup_model.requests[1].messages[-1].tool_results[0]
    assert rejected.is_error and "route_to_math" in rejected.content["message"]


async def test_supervisor_routes_by_rule_with_filtered_history() -> None:
    billing, billing_model = member("billing")
    tech, tech_model = member("tech")

    def rule(messages: list[Message]) -> str | None:
        if messages[-1].role == "assistant":
            return None  # a member answered: done
        return "billing" if "invoice" in messages[-1].text else "tech"

    sup = Supervisor([billing, tech], router=rule)
    result = await sup.run("My invoice is wrong")
    assert result.output == "billing did: My invoice is wrong"
    assert len(billing_model.requests) == 1 and tech_model.requests == []
    assert result.messages[-1].name == "billing"
    second = await sup.run("The app crashes")
    assert second.output == "tech did: The app crashes"


async def test_supervisor_configuration_errors_and_round_limit() -> None:
    math, _ = member("math")
    with pytest.raises(UserError, match="exactly one"):
        Supervisor([math])
    with pytest.raises(UserError, match="not a member"):
        await Supervisor([math], router=lambda m: "nobody").run("hi")
    with pytest.raises(MaxTurnsExceededError, match="max_rounds=2"):
        await Supervisor([math], router=lambda m: "math", max_rounds=2).run("hi")


def verifier_model(verdicts: list[Verdict]) -> ScriptedModel:
    return ScriptedModel([v.model_dump_json() for v in verdicts], name="test:verifier")


async def test_plan_execute_verify_fans_out_independent_steps(rendezvous: Any) -> None:
    independent = [PlanStep(task="find flights", depends_on=[]), PlanStep(task="find hotels", depends_on=[])]
    planner_model = ScriptedModel([Plan(steps=independent).model_dump_json()], name="test:planner")
    meeting = rendezvous(2)

    async def execute(request: ModelRequest) -> str:
        await meeting.meet()  # the two independent steps must overlap
        return "result of " + request.messages[-1].text.split(": ", 2)[-1].split("\n")[0]

    executor_model = FunctionModel(execute, name="test:executor")
    verifier = verifier_model([Verdict(ok=True), Verdict(ok=True)])
    pattern = PlanExecuteVerify(
        planner=Agent(planner_model, name="planner", output_type=Plan, tool_executor=DirectToolExecutor()),
        executor=Agent(executor_model, name="executor", tool_executor=DirectToolExecutor()),
        verifier=Agent(verifier, name="verifier", output_type=Verdict, tool_executor=DirectToolExecutor()),
        max_rounds=3,
    )
    result = await asyncio.wait_for(pattern.run("Plan a trip to Rome"), 10)
    outcome = result.output
    assert outcome is not None and outcome.ok and outcome.rounds == 1
    assert outcome.plan == ["find flights", "find hotels"]
    assert outcome.results == ["result of find flights", "result of find hotels"]
    verifier_prompts = sorted(r.messages[-1].text for r in verifier.requests)
    assert "Result: result of find flights" in verifier_prompts[0]
    assert "Result: result of find hotels" in verifier_prompts[1]
    assert result.usage.requests == 1 + 2 + 2


async def test_plan_execute_verify_returns_the_last_verdict_when_rounds_run_out() -> None:
    pattern = PlanExecuteVerify(
        planner=Agent(
            ScriptedModel([Plan(steps=["a"]).model_dump_json()]),
            name="planner",
            output_type=Plan,
            tool_executor=DirectToolExecutor(),
        ),
        executor=Agent(FunctionModel(lambda r: "done a"), name="executor", tool_executor=DirectToolExecutor()),
        verifier=Agent(
            verifier_model([Verdict(ok=False, feedback="wrong")]),
            name="verifier",
            output_type=Verdict,
            tool_executor=DirectToolExecutor(),
        ),
        max_rounds=1,
        max_step_retries=0,
    )
    events = [e async for e in pattern.stream("do a")]
    tokens = "".join(e.text for e in events if isinstance(e, TokenEvent) and e.agent == "executor")
    assert tokens == "done a"
    done = events[-1]
    assert isinstance(done, RunDone)
    outcome = done.result.output
    assert outcome is not None and not outcome.ok and outcome.verdict.feedback.endswith(": wrong")
    assert json.loads(json.dumps(outcome.results)) == ["done a"]


def test_plan_execute_verify_needs_typed_planner_and_verifier() -> None:
    plain = Agent(ScriptedModel([]), name="plain")
    with pytest.raises(UserError, match="output_type=Plan"):
        PlanExecuteVerify(planner=plain, executor=plain, verifier=plain)


async def test_agents_can_hand_back_and_forth(executor: DirectToolExecutor) -> None:
    triage_model = ScriptedModel([ToolCall("transfer_to_billing", {}), "Anything else?"], name="test:triage")
    billing_model = ScriptedModel([ToolCall("transfer_to_triage", {"reason": "not billing"})], name="test:billing")
    triage = Agent(triage_model, name="triage", tool_executor=executor)
    billing = Agent(billing_model, name="billing", tool_executor=executor, handoffs=[triage])
    triage.add_handoffs(billing)
    events = [e async for e in triage.stream("my app crashes")]
    assert [(e.source, e.target) for e in events if isinstance(e, HandoffEvent)] == [
        ("triage", "billing"),
        ("billing", "triage"),
    ]
    done = events[-1]
    assert isinstance(done, RunDone) and done.result.output == "Anything else?" and done.result.agent == "triage"
    with pytest.raises(UserError, match="before the first run"):
        triage.add_handoffs(billing)
    with pytest.raises(UserError, match="must be unique"):
        Agent(triage_model, name="x", handoffs=[billing]).add_handoffs(billing)
