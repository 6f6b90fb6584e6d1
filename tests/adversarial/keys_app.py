"""A project for the key-lifecycle attacks: the adversarial `apps.build` agents plus a gateway
(so `bastion serve` mounts the OpenAI-compatible proxy at /openai/v1), with the configured API
keys read from `BASTION_TEST_API_KEYS` (JSON) so a test can change the configuration between
restarts the way an operator edits it."""

from __future__ import annotations

import json
import os

from apps import KEYS  # type: ignore[import-not-found]
from apps import build as build_agents  # type: ignore[import-not-found]

from bastion.gateway import Gateway
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel
from bastion.types import ModelRequest


def _cheap(request: ModelRequest) -> str:
    return "hello from the cheap model"


def build(env: ProjectEnv) -> Project:
    project = build_agents(env)
    configured = os.environ.get("BASTION_TEST_API_KEYS")
    keys = {k: (t, r) for k, (t, r) in json.loads(configured).items()} if configured else dict(KEYS)
    project.api_keys = keys
    gateway = Gateway(models={"cheap": FunctionModel(_cheap)})
    project.gateway = gateway
    project.on_close.append(gateway.aclose)
    return project
