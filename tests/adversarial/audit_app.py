"""The bank agent of `apps.py` with the deployment's own audit log (`env.audit_log()`): SQLite
under the home directory, or PostgreSQL with `--database` (key from BASTION_SECRET_AUDIT_KEY)."""

from __future__ import annotations

from apps import KEYS, _bank, transfer  # type: ignore[import-not-found]

from bastion.graph.agent import Agent
from bastion.policy import Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel


def build(env: ProjectEnv) -> Project:
    gateway = ToolGateway(Policy({"bank": ["transfer"]}), audit=env.audit_log())
    bank = Agent(
        FunctionModel(_bank), name="bank", tools=[transfer], tool_executor=gateway, checkpointer=env.checkpointer()
    )
    return Project(agents={"bank": bank}, api_keys=dict(KEYS), on_close=[gateway.close])
