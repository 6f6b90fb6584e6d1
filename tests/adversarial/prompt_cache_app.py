"""The prompt-cache attacks' project: one real `Agent` on `openai:gpt-4o-mini`, pointed at a
fake OpenAI server (the model API is the only double) whose URL comes from `FAKE_OPENAI_URL`.
Its instructions are long enough (~1,500 tokens) for OpenAI to cache."""

from __future__ import annotations

import os

from bastion.gateway._resolve import resolve_model
from bastion.graph.agent import Agent
from bastion.server import Project, ProjectEnv

KEYS: dict[str, tuple[str, str]] = {"key-a-op": ("a", "operator"), "key-b-op": ("b", "operator")}
INSTRUCTIONS = "You are the support agent of Acme. Answer from the documentation only. " * 90


def build(env: ProjectEnv) -> Project:
    model = resolve_model("openai:gpt-4o-mini", base_url=os.environ["FAKE_OPENAI_URL"], api_key="test-key")
    agent = Agent(model, name="support", instructions=INSTRUCTIONS, checkpointer=env.checkpointer())
    return Project(agents={"support": agent}, api_keys=dict(KEYS))
