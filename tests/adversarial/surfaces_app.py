"""A project whose agent writes long-term memory, for cross-tenant attacks on the read surfaces
(memory browser, traces, costs, eval datasets). The model is a `FunctionModel` at the edge."""

from __future__ import annotations

import json
from typing import Any

from bastion.graph.agent import Agent
from bastion.memory import HashingEmbedder, memory_tools
from bastion.policy import Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel
from bastion.types import ModelRequest, ToolCall

KEYS: dict[str, tuple[str, str]] = {"key-a-op": ("a", "operator"), "key-b-op": ("b", "operator")}


def _notes(request: ModelRequest) -> str | ToolCall:
    last = request.messages[-1]
    if last.role == "tool":
        return f"noted: {last.text}"
    text = last.text
    if text.startswith("remember "):
        return ToolCall("remember", {"text": text.removeprefix("remember ")})
    if text.startswith("recall "):
        return ToolCall("search_memory", {"query": text.removeprefix("recall ")})
    return json.dumps({"seen": [m.text for m in request.messages if m.role == "user"]})


def build(env: ProjectEnv) -> Project:
    if env.database_url:
        from bastion.memory import PostgresMemoryStore

        memory: Any = PostgresMemoryStore(env.database_url, HashingEmbedder())
    else:
        from bastion.memory import SQLiteMemoryStore

        memory = SQLiteMemoryStore(env.home / "memory.db", HashingEmbedder())
    tools = memory_tools(memory, unknown_origin_trust="trusted")
    gateway = ToolGateway(Policy({"notes": [t.name for t in tools]}))
    agent = Agent(
        FunctionModel(_notes), name="notes", tools=tools, tool_executor=gateway, checkpointer=env.checkpointer()
    )
    return Project(agents={"notes": agent}, memory=memory, api_keys=dict(KEYS), on_close=[memory.close])
