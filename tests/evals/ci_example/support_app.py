"""The project of the documented CI example (docs/observability.md, "CI gate on pass^k").

One real `Agent` with a policy-checked tool; the model is the only double (a `FunctionModel`
at the edge). `SUPPORT_AGENT_VERSION=1` is the buggy release that crashed in production on a
refund request; the default (2) is the fix that CI checks before it ships.
"""

from __future__ import annotations

import os
import re

from bastion.graph.agent import Agent
from bastion.policy import Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel
from bastion.tools import tool
from bastion.types import ModelRequest, ToolCall

KEYS: dict[str, tuple[str, str]] = {"key-support-op": ("acme", "operator")}
ORDERS = {"A7": "lost in transit", "B9": "delivered damaged"}


@tool(side_effect="read")
def lookup_order(order_id: str) -> str:
    """The shipping status of an order."""
    return ORDERS.get(order_id, "unknown order")


def _reply(request: ModelRequest) -> str | ToolCall:
    last = request.messages[-1]
    if last.role == "tool":
        status = next((s for s in ORDERS.values() if s in last.text), "unknown")
        return f"Your order is {status}. We have issued a refund."
    order = re.search(r"\b([A-Z]\d+)\b", last.text)
    if order is None:
        return "Which order do you mean?"
    if "refund" in last.text.lower() and os.environ.get("SUPPORT_AGENT_VERSION") == "1":
        raise RuntimeError("release 1 cannot parse refund requests")  # the production bug
    return ToolCall("lookup_order", {"order_id": order.group(1)})


def agent(checkpointer: object = None) -> Agent[str]:
    gateway = ToolGateway(Policy({"support": ["lookup_order"]}))
    return Agent(
        FunctionModel(_reply, name="test:support"),
        name="support",
        tools=[lookup_order],
        tool_executor=gateway,
        checkpointer=checkpointer,
    )


def build(env: ProjectEnv) -> Project:
    return Project(agents={"support": agent(env.checkpointer())}, api_keys=dict(KEYS))
