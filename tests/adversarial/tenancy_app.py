"""The tenancy attacks' project: `apps.py`'s echo and bank agents, with the bank's approval made
certain by an argument rule (transfers above 5 need a human), whatever the provenance rules
would decide about a user-typed IBAN. The model is the only double (a `FunctionModel`)."""

from __future__ import annotations

import json
import re
from typing import Any

from bastion.graph.agent import Agent
from bastion.policy import ArgLimit, AuditLog, Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel
from bastion.tools import tool
from bastion.types import ModelRequest, ToolCall

KEYS: dict[str, tuple[str, str]] = {
    "key-a-op": ("a", "operator"),
    "key-b-op": ("b", "operator"),
    "key-a-view": ("a", "viewer"),
}
_PAY = re.compile(r"pay (?P<amount>\d+(?:\.\d+)?) to (?P<iban>[A-Z]{2}\d{2}[A-Z0-9]+)")


def _seen(request: ModelRequest) -> str:
    return json.dumps({"seen": [m.text for m in request.messages if m.role == "user"]})


@tool(side_effect="irreversible")
def transfer(iban: str, amount: float) -> str:
    """Send money to an IBAN."""
    return f"sent {amount} to {iban}"


def _bank(request: ModelRequest) -> str | ToolCall:
    last = request.messages[-1]
    if last.role == "tool":
        return f"done: {last.text}"
    match = _PAY.search(last.text)
    if match is None:
        return _seen(request)
    return ToolCall("transfer", {"iban": match["iban"], "amount": float(match["amount"])})


def build(env: ProjectEnv) -> Project:
    policy = Policy({"bank": ["transfer"]}, rules=[ArgLimit("transfer", "amount", max=5, effect="require_approval")])
    gateway = ToolGateway(policy, audit=AuditLog(env.home / "audit.db"))
    agents: dict[str, Any] = {
        "echo": Agent(FunctionModel(_seen), name="echo", checkpointer=env.checkpointer()),
        "bank": Agent(
            FunctionModel(_bank), name="bank", tools=[transfer], tool_executor=gateway, checkpointer=env.checkpointer()
        ),
    }
    return Project(agents=agents, api_keys=dict(KEYS))
