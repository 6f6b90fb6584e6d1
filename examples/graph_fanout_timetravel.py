"""A custom graph: `Send` fan-out to parallel workers, a flaky node that succeeds on retry, and
time travel (read the history, re-run a step with edited state, fork from an earlier checkpoint).

    python examples/graph_fanout_timetravel.py
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path
from typing import Annotated, TypedDict

from bastion.checkpoint import SqliteCheckpointer
from bastion.graph import END, START, Graph, RetryPolicy, Send, append


class State(TypedDict, total=False):
    topics: list[str]
    notes: Annotated[list[str], append]  # reducer: the workers' notes are merged
    style: str
    report: str


attempts: Counter[str] = Counter()  # calls of `research` per topic


def plan(state: State) -> list[Send]:
    return [Send("research", topic) for topic in state.get("topics", [])]  # one parallel task per topic


def research(topic: str) -> State:
    attempts[topic] += 1
    if topic == "pricing" and attempts[topic] == 1:
        raise ConnectionError("search API reset the connection")  # flaky: fails once
    return {"notes": [f"notes on {topic}"]}


def write(state: State) -> State:
    return {"report": f"{state.get('style', 'long')}: " + "; ".join(sorted(state.get("notes", [])))}


g = Graph(State)
g.add_node("plan", plan)
flaky = RetryPolicy(max_attempts=3, base_delay=0.01, retry_on=(ConnectionError,))
g.add_node("research", research, input_schema=str, retry=flaky)  # takes a Send's arg, not the state
g.add_node("write", write)
g.add_edge(START, "plan")
g.add_edge("research", "write")
g.add_edge("write", END)


async def main(db: Path) -> None:
    app = g.compile(checkpointer=SqliteCheckpointer(db))
    topics: State = {"topics": ["churn", "pricing", "retention"]}
    retries = [ev.data async for ev in app.astream(topics, thread_id="t1", kinds={"retry"})]
    report = (await app.aget_state("t1")).values.get("report")
    print("report:", report, "| retries:", [r["error"] for r in retries])
    assert len(retries) == 1 and attempts == Counter(churn=1, pricing=2, retention=1)

    history = [s async for s in app.aget_state_history("t1")]  # newest first
    print("history: checkpoints of steps", [s.step for s in history])
    [before_write] = [s for s in history if s.next == ("write",)]  # time travel: branch it, new style
    await app.aupdate_state("t1", {"style": "brief"}, checkpoint_id=before_write.checkpoint_id)
    again = (await app.ainvoke(None, thread_id="t1")).get("report", "")
    print("re-written:", again)
    assert again.startswith("brief: ") and sum(attempts.values()) == 4  # research not re-run

    # Fork from the checkpoint before the fan-out: a new thread that re-executes the workers.
    [after_plan] = [s for s in history if s.step == 1]  # written after `plan`, before the workers ran
    fork = await app.afork("t1", after_plan.checkpoint_id, new_thread_id="t1-fork")
    forked = (await app.ainvoke(None, thread_id=fork.thread_id)).get("report")
    print("fork:", forked, "| research calls:", sum(attempts.values()))
    assert forked == report and sum(attempts.values()) == 7


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp) / "graph.db"))
