"""A project whose gateway is served as the OpenAI-compatible proxy (`/openai/v1`), with one
model: the FakeOpenAIServer whose base URL the test passes in `FAKE_UPSTREAM`."""

from __future__ import annotations

import os

from bastion.gateway import Gateway, resolve_model
from bastion.server import Project, ProjectEnv

KEYS = {"key-a-op": ("a", "operator")}


def build(env: ProjectEnv) -> Project:
    upstream = resolve_model(f"openai-compat:{os.environ['FAKE_UPSTREAM']}#fake-model")
    return Project(agents={}, gateway=Gateway(models={"fake": upstream}, cache=False), api_keys=dict(KEYS))
