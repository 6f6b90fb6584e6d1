"""A trace summary is labelled with its root agent, not the alphabetically largest agent in it."""

from __future__ import annotations

from bastion.graph.agent import Agent, Plan, PlanExecuteVerify, Supervisor, Verdict
from bastion.testing import DirectToolExecutor, FunctionModel, ScriptedModel
from bastion.tracing import TraceStore, TracingHandle
from bastion.types import Message, ModelRequest


def _member(name: str) -> Agent[object]:
    async def reply(request: ModelRequest) -> str:
        return f"{name} did: {request.messages[-1].text}"

    return Agent(FunctionModel(reply, name=f"test:{name}"), name=name, tool_executor=DirectToolExecutor())


def _labels(traced: TracingHandle, store: TraceStore) -> list[tuple[str | None, set[str]]]:
    traced.force_flush()
    out: list[tuple[str | None, set[str]]] = []
    for summary in store.list_traces():
        tree = store.get_trace(summary.trace_id)
        assert tree is not None
        agents = {str(s.attributes["gen_ai.agent.name"]) for s in tree.spans if "gen_ai.agent.name" in s.attributes}
        out.append((summary.agent, agents))
    return out


async def test_a_rule_supervisor_trace_is_labelled_with_the_supervisor(
    traced: TracingHandle, store: TraceStore
) -> None:
    def rule(messages: list[Message]) -> str | None:
        return None if messages[-1].role == "assistant" else "tech"

    sup = Supervisor([_member("billing"), _member("tech")], router=rule, name="helpdesk")
    result = await sup.run("The app crashes")
    assert result.output == "tech did: The app crashes"
    [(label, agents)] = _labels(traced, store)
    assert {"helpdesk", "tech"} <= agents  # the member ran inside the supervisor's trace
    assert label == "helpdesk"  # max(agent) said "tech"


async def test_a_plan_execute_verify_trace_is_labelled_with_the_pattern(
    traced: TracingHandle, store: TraceStore
) -> None:
    ex = DirectToolExecutor()
    pattern = PlanExecuteVerify(
        planner=Agent(
            ScriptedModel([Plan(steps=["a"]).model_dump_json()]), name="planner", output_type=Plan, tool_executor=ex
        ),
        executor=Agent(ScriptedModel(["did a"]), name="worker", tool_executor=ex),
        verifier=Agent(
            ScriptedModel([Verdict(ok=True).model_dump_json()]), name="verifier", output_type=Verdict, tool_executor=ex
        ),
        name="checker",
    )
    outcome = (await pattern.run("do a")).output
    assert outcome is not None and outcome.ok
    [(label, agents)] = _labels(traced, store)
    assert {"checker", "planner", "worker", "verifier"} <= agents
    assert label == "checker"  # max(agent) said "worker"
