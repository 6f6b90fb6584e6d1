"""One agent run is one trace: `invoke_agent` at the root, `execute_tool` per tool call, and a
sub-agent's own `invoke_agent` nested under the tool call that ran it."""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import StatusCode

from bastion.graph.agent import Agent
from bastion.testing import DirectToolExecutor, FunctionModel, ScriptedModel
from bastion.tools import tool
from bastion.types import RunContext, ToolCall

Traced = Any  # conftest.Traced: .spans() flushes and returns the finished spans


@tool(side_effect="read")
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


async def test_spans_of_a_run_with_a_tool_and_a_sub_agent(traced: Traced) -> None:
    researcher = Agent(FunctionModel(lambda r: "notes"), name="researcher", tool_executor=DirectToolExecutor())
    lead = Agent(
        ScriptedModel(
            [[ToolCall("lookup", {"key": "k"}, id="c1"), ToolCall("research", {"task": "t"}, id="c2")], "done"]
        ),
        name="lead",
        tools=[lookup, researcher.as_tool("research")],
        tool_executor=DirectToolExecutor(),
    )
    await lead.run("go", context=RunContext(tenant="acme", run_id="run-1"))
    finished = traced.spans()
    by_name: dict[str, Any] = {s.name: s for s in finished}
    assert set(by_name) >= {
        "invoke_agent lead",
        "execute_tool lookup",
        "execute_tool research",
        "invoke_agent researcher",
    }
    root = by_name["invoke_agent lead"]
    assert root.parent is None and root.attributes["gen_ai.agent.name"] == "lead"
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}
    by_id = {s.context.span_id: s for s in finished}

    def ancestors(span: Any) -> list[str]:
        out: list[str] = []
        while span.parent is not None:
            span = by_id[span.parent.span_id]
            out.append(span.name)
        return out

    # the engine may put its own node spans in between; the nesting is what matters
    assert ancestors(by_name["execute_tool lookup"])[-1] == "invoke_agent lead"
    assert by_name["execute_tool lookup"].attributes["gen_ai.tool.call.id"] == "c1"
    sub = ancestors(by_name["invoke_agent researcher"])
    assert "execute_tool research" in sub and sub[-1] == "invoke_agent lead"


async def test_an_interrupt_is_not_a_failed_span(traced: Traced) -> None:
    @tool(side_effect="irreversible")
    def pay(amount: int) -> str:
        """Pay."""
        return "paid"

    agent = Agent(
        ScriptedModel([ToolCall("pay", {"amount": 3}), "ok"]),
        name="payer",
        tools=[pay],
        tool_executor=DirectToolExecutor(approval={"pay"}),
    )
    paused = await agent.run("pay 3", thread_id="p")
    assert paused.interrupted
    spans = {s.name: s for s in traced.spans()}
    for name in ("execute_tool pay", "invoke_agent payer"):
        assert spans[name].status.status_code is not StatusCode.ERROR, name
        assert "error.type" not in (spans[name].attributes or {}), name
