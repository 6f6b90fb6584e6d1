"""A project with real `Agent`s for attacks on a running `bastion serve`.

The model is the only double (a `FunctionModel` at the edge): `echo` answers with every user
message it was shown, so a test can see exactly what reached the model's context; `bank` pays
what the user asked for through an irreversible tool behind the real `ToolGateway` (it runs
without an approval when every value is the user's own, and pauses on one otherwise).
"""

from __future__ import annotations

import json
import re
from typing import Any

from bastion.graph.agent import Agent
from bastion.policy import AuditLog, Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel
from bastion.tools import tool
from bastion.types import ModelRequest, ToolCall

KEYS: dict[str, tuple[str, str]] = {
    "key-a-op": ("a", "operator"),
    "key-b-op": ("b", "operator"),
    "key-a-view": ("a", "viewer"),
    "key-admin": ("a", "admin"),
}


def seen_user_messages(request: ModelRequest) -> list[str]:
    return [m.text for m in request.messages if m.role == "user"]


def _echo(request: ModelRequest) -> str:
    return json.dumps({"seen": seen_user_messages(request)})


@tool(side_effect="irreversible")
def transfer(iban: str, amount: float) -> str:
    """Send money to an IBAN."""
    return f"sent {amount} to {iban}"


_PAY = re.compile(r"pay (?P<amount>\d+(?:\.\d+)?) to (?P<iban>[A-Z]{2}\d{2}[A-Z0-9]+)")


def _bank(request: ModelRequest) -> str | ToolCall:
    last = request.messages[-1]
    if last.role == "tool":
        return f"done: {last.text}"
    match = _PAY.search(last.text)
    if match is None:
        return json.dumps({"seen": seen_user_messages(request)})
    return ToolCall("transfer", {"iban": match["iban"], "amount": float(match["amount"])})


def build(env: ProjectEnv) -> Project:
    audit = AuditLog(env.home / "audit.db")
    gateway = ToolGateway(Policy({"bank": ["transfer"]}), audit=audit)
    agents: dict[str, Any] = {
        "echo": Agent(FunctionModel(_echo), name="echo", checkpointer=env.checkpointer()),
        "bank": Agent(
            FunctionModel(_bank), name="bank", tools=[transfer], tool_executor=gateway, checkpointer=env.checkpointer()
        ),
    }
    return Project(agents=agents, api_keys=dict(KEYS))
