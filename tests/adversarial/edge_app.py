"""The adversarial project (`apps.build`) plus what the HTTP-edge attacks need: a signed webhook
and a gateway served as the OpenAI-compatible proxy under `/openai` (its model is a
`FunctionModel`, the only double)."""

from __future__ import annotations

from apps import build as build_base  # pyright: ignore[reportImplicitRelativeImport]  # `bastion serve` puts this folder on sys.path

from bastion.gateway import Gateway
from bastion.runtime import Webhook
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel

WEBHOOK_SECRET = "edge-hook-secret"


def build(env: ProjectEnv) -> Project:
    project = build_base(env)
    project.webhooks = [Webhook("ticket", "echo", secret=WEBHOOK_SECRET, tenant="a")]
    project.gateway = Gateway(models={"echo-model": FunctionModel(lambda request: "ok", name="echo-model")})
    return project
