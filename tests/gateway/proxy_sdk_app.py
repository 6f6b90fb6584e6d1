"""A project whose gateway is served as the OpenAI-compatible proxy (`/openai/v1`) by a real
`bastion serve`: the openai-agents SDK's default model name and an embeddings name both route
to the FakeOpenAIServer whose `/v1` URL the test passes in `SDK_UPSTREAM`."""

from __future__ import annotations

import os

from bastion.gateway import Gateway, resolve_model
from bastion.server import Project, ProjectEnv


def build(env: ProjectEnv) -> Project:
    upstream = resolve_model(f"openai-compat:{os.environ['SDK_UPSTREAM']}#fake-model")
    gateway = Gateway(
        models={"fake": upstream},
        tiers={os.environ["SDK_MODEL"]: "fake", "text-embedding-3-small": "fake"},
        pricing={"openai-compat:*": {"input": 1.0, "output": 2.0}},
        cache=False,
    )
    return Project(agents={}, gateway=gateway, on_close=[gateway.aclose])
