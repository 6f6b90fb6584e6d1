"""An agent asks for an approval, its process exits, and a new process resumes the run with the
human's decision from the durable SQLite checkpoint.

    python examples/approval_restart.py                   # both phases, each in a fresh process
    python examples/approval_restart.py request runs.db   # phase 1: the refund waits for a human
    python examples/approval_restart.py approve runs.db   # phase 2: another process approves it
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bastion.checkpoint import SqliteCheckpointer
from bastion.graph.agent import Agent
from bastion.policy import ArgLimit, Policy, ToolGateway
from bastion.testing import FunctionModel
from bastion.tools import tool
from bastion.types import ModelRequest, ToolCall

THREAD = "refund-1044"
refunds: list[str] = []  # what the tool did in THIS process


@tool(side_effect="irreversible")
def refund(order_id: int, amount: float) -> str:
    """Refund an order."""
    refunds.append(f"{order_id}:{amount:.2f}")
    return f"refunded {amount:.2f} EUR on order {order_id}"


def answer(request: ModelRequest) -> str | ToolCall:
    """Plays the model: ask for the refund, then report the tool's result."""
    last = request.messages[-1]
    return f"Done: {last.text}" if last.role == "tool" else ToolCall("refund", {"order_id": 1044, "amount": 89.0})


def build(db: Path) -> tuple[Agent[str], FunctionModel]:
    model = FunctionModel(answer)
    over_30 = ArgLimit("refund", "amount", max=30, effect="require_approval")  # a human signs off
    gateway = ToolGateway(Policy({"support": ["refund"]}, rules=[over_30]))
    agent = Agent(model, tools=[refund], name="support", tool_executor=gateway, checkpointer=SqliteCheckpointer(db))
    return agent, model


def request(db: Path) -> None:
    agent, _ = build(db)
    paused = agent.run_sync("Please refund order 1044, 89.00 EUR.", thread_id=THREAD)
    [pending] = paused.interrupts
    assert paused.interrupted and pending.value["tool"] == "refund" and refunds == []
    print(f"phase 1: waiting for approval of {pending.value['tool']} {pending.value['arguments']}; exiting")


def approve(db: Path) -> None:
    agent, model = build(db)  # a new process: nothing in memory, everything from runs.db
    done = agent.resume_sync({"action": "approve"}, thread_id=THREAD)
    assert done.output == "Done: refunded 89.00 EUR on order 1044", done.output
    assert refunds == ["1044:89.00"] and len(model.requests) == 1  # the first model call was not repeated
    print(f"phase 2: approved in a new process -> {done.output!r}")


def main() -> None:
    if len(sys.argv) == 3:
        {"request": request, "approve": approve}[sys.argv[1]](Path(sys.argv[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "runs.db")
        for phase in ("request", "approve"):
            subprocess.run([sys.executable, __file__, phase, db], check=True, timeout=120)


if __name__ == "__main__":
    main()
