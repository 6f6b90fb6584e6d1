"""Running an agent inside another agent's step (agents as tools, supervisor members, plan
roles): journalled, so a resumed parent never re-runs a sub-agent that already answered; its
interrupts (approvals) surface as the parent's; its events reach the outer stream and its
spend the outer result."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from bastion.errors import UserError
from bastion.graph.agent._result import AgentResult, RunDone
from bastion.graph.agent._runtime import current_runtime

if TYPE_CHECKING:
    from bastion.graph.agent._agent import Agent, AgentInput

# Spend of nested runs made while one outer step runs (a list shared with copied contexts:
# tools may run in other tasks or threads).
_SPEND: ContextVar[list[dict[str, Any]] | None] = ContextVar("bastion_agent_spend", default=None)


@contextmanager
def collect_spend() -> Generator[list[dict[str, Any]]]:
    spent: list[dict[str, Any]] = []
    token = _SPEND.set(spent)
    try:
        yield spent
    finally:
        _SPEND.reset(token)


def report_spend(record: dict[str, Any]) -> None:
    sink = _SPEND.get()
    if sink is not None:
        sink.append({"agent": record["agent"], "usage": record["usage"], "cost": record["cost"]})


def _record(agent: Agent[Any], result: AgentResult[Any]) -> dict[str, Any]:
    """The journalled, JSON form of a sub-run's result."""
    spec = agent.output_spec
    output = spec.adapter.dump_python(result.output, mode="json") if spec and not result.interrupted else result.output
    return {
        "agent": result.agent or agent.name,
        "output": output,
        "text": output if isinstance(output, str) else result.text,
        "usage": result.usage.to_dict(),
        "cost": result.cost,
        "interrupts": [{"id": i.id, "value": i.value} for i in result.interrupts],
    }


async def _drive(agent: Agent[Any], input: AgentInput | None, resume: Any, thread_id: str | None) -> AgentResult[Any]:
    """One `run` (input) or `resume` (input None) of the sub-agent; streamed into the outer
    stream while the outer run streams."""
    runtime = current_runtime()
    # A context of its own: the sub-run gets its own `invoke_agent` span under the caller's.
    context = replace(runtime.context, agent=agent.name)
    if not runtime.streaming:
        if input is not None:
            return await agent.run(input, thread_id=thread_id, context=context)
        assert thread_id is not None
        return await agent.resume(resume, thread_id=thread_id, context=context)
    from bastion.graph import emit

    result: AgentResult[Any] | None = None
    if input is not None:
        events = agent.stream(input, thread_id=thread_id, context=context)
    else:
        assert thread_id is not None
        events = agent.stream(None, resume=resume, thread_id=thread_id, context=context)
    async for event in events:
        if isinstance(event, RunDone):
            result = event.result
        else:
            emit(event.kind, event)
    assert result is not None  # stream() always ends with RunDone
    return result


def _outer_thread() -> str | None:
    from bastion.graph import get_config

    try:
        return get_config().thread_id
    except UserError:  # not inside a graph node (e.g. a tool invoked by hand)
        return None


async def run_nested(agent: Agent[Any], input: AgentInput, *, key: str) -> dict[str, Any]:
    """Run `agent` to its final answer inside the current node and return its record
    `{"agent", "output" (JSON form), "text", "usage", "cost"}`.

    The sub-run lives on its own thread `<outer thread>/<key>` (in the sub-agent's
    checkpointer), deleted once it has answered. When it stops at an interrupt, the outer node
    raises one interrupt carrying the sub-run's
    (`{"type": "agent_interrupt", "agent", "interrupts": [{"id", "value"}]}`); the answer the
    outer run is resumed with is passed on to the sub-run's `resume`. Each stage is
    journalled, so a re-run of the outer node replays instead of repeating.
    """
    from bastion.graph import interrupt, memo

    outer = _outer_thread()
    if outer is None:
        result = await _drive(agent, input, None, None)
        if result.interrupted:
            raise UserError(
                f"agent {agent.name!r} stopped at an interrupt outside a graph run; run it with a thread_id "
                "and resume it directly"
            )
        return _record(agent, result)
    thread = f"{outer}/{key}"

    async def start() -> dict[str, Any]:
        if await agent.stopped_on_error(thread):
            # An earlier attempt of this node failed part-way (e.g. a provider error) and the
            # outer run is being continued: continue the sub-run too (new input would be refused).
            from bastion.graph.agent._run import CONTINUE

            return _record(agent, await _drive(agent, None, CONTINUE, thread))
        return _record(agent, await _drive(agent, input, None, thread))

    record = await memo(f"{key}:start", start)
    stage = 0
    while record["interrupts"]:
        answer = interrupt(
            {"type": "agent_interrupt", "agent": agent.name, "thread_id": thread, "interrupts": record["interrupts"]}
        )

        async def resume(answer: Any = answer) -> dict[str, Any]:
            return _record(agent, await _drive(agent, None, answer, thread))

        record = await memo(f"{key}:resume:{stage}", resume)
        stage += 1
    # The record is journalled in the outer thread; the sub-thread is no longer needed.
    await agent.delete_thread(thread)
    return record
