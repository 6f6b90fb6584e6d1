"""The adversarial project (`apps.build`) plus agents whose tools run code in the sandbox.

`coder` runs the user's message as a Python program with `run_python` and answers with the
tool's result verbatim, so a test sees exactly what the sandboxed code could read. `fetcher` is
the same with an egress allowlist (`EGRESS_ALLOW`, comma-separated `host:port`), its attempts
recorded in the project's audit log (`<home>/egress-audit.db`). The model is a `FunctionModel`.
"""

from __future__ import annotations

import os

from bastion.graph.agent import Agent
from bastion.policy import AuditLog, Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel
from bastion.tools.sandbox import EgressPolicy, SandboxLimits, audit_log_sink, sandbox_tools
from bastion.types import ModelRequest, ToolCall

try:  # loaded by path from `bastion serve` (its folder is on sys.path) or as a package module
    from apps import build as build_base  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from tests.adversarial.apps import build as build_base


def _coder(request: ModelRequest) -> str | ToolCall:
    last = request.messages[-1]
    if last.role == "tool":
        return last.text
    return ToolCall("run_python", {"code": last.text})


def build(env: ProjectEnv) -> Project:
    project = build_base(env)
    limits = SandboxLimits(wall_timeout=15)
    gateway = ToolGateway(Policy({"coder": ["run_python"], "fetcher": ["run_python"]}))
    run_python, _ = sandbox_tools(limits)
    project.agents["coder"] = Agent(
        FunctionModel(_coder), name="coder", tools=[run_python], tool_executor=gateway, checkpointer=env.checkpointer()
    )
    allow = [h for h in os.environ.get("EGRESS_ALLOW", "").split(",") if h]
    audit = AuditLog(env.home / "egress-audit.db")
    fetch_python, _ = sandbox_tools(limits, egress=EgressPolicy(allow, audit=audit_log_sink(audit)))
    project.agents["fetcher"] = Agent(
        FunctionModel(_coder),
        name="fetcher",
        tools=[fetch_python],
        tool_executor=gateway,
        checkpointer=env.checkpointer(),
    )
    project.on_close.append(audit.close)
    return project
