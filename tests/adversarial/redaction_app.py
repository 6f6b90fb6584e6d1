"""The adversarial project, plus a log line quoting the database URL (as a driver or a project
might): the process's logging must redact it. `build_light` has no checkpointers, so against an
unreachable database `serve` fails at once instead of after the checkpointer pool's 30 s wait."""

from __future__ import annotations

import logging

from apps import build as build_base  # pyright: ignore[reportImplicitRelativeImport]  # `bastion serve` puts this folder on sys.path

from bastion.graph.agent import Agent
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel


def build(env: ProjectEnv) -> Project:
    logging.getLogger("bastion.project").warning("project connects to %s", env.database_url)
    return build_base(env)


def build_light(env: ProjectEnv) -> Project:
    logging.getLogger("bastion.project").warning("project connects to %s", env.database_url)
    return Project(agents={"echo": Agent(FunctionModel(lambda request: "hi"), name="echo")})
