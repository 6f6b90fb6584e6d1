"""A tiny project for CLI tests: a scripted agent with a refund tool that needs approval."""

from __future__ import annotations

from bastion.graph.agent import Agent
from bastion.policy import Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.testing import ScriptedModel
from bastion.tools import tool
from bastion.types import ToolCall


@tool(side_effect="irreversible")
def refund(order_id: int, amount: float) -> str:
    """Refund an order."""
    return f"refunded {amount} for order {order_id}"


def build(env: ProjectEnv) -> Project:
    model = ScriptedModel([ToolCall("refund", {"order_id": 7, "amount": 25.0}), "Refund sent."])
    agent = Agent(
        model, tools=[refund], name="support", checkpointer=env.checkpointer(),
        tool_executor=ToolGateway(Policy({"support": ["refund"]})),
    )  # fmt: skip
    return Project({"support": agent}, api_keys={"cli-test-key": ("acme", "operator")})
