"""A project on the bundled local model (llama.cpp), for the CLI's output hygiene tests."""

from __future__ import annotations

from bastion.graph.agent import Agent
from bastion.server import Project, ProjectEnv
from bastion.types import ModelSettings


def build(env: ProjectEnv) -> Project:
    agent = Agent(
        "local:gemma-3-270m", name="echo", checkpointer=env.checkpointer(),
        instructions="Answer in one short sentence.", model_settings=ModelSettings(max_tokens=8),
    )  # fmt: skip
    return Project({"echo": agent})
