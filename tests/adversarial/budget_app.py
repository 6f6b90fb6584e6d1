"""A project whose gateway is served as the OpenAI-compatible proxy. The gateway has no `Budget`
of its own: `bastion serve` gives it one on the deployment's store (`<home>/budgets.db`, or
PostgreSQL with `--database`) to enforce the virtual keys' limits.

The upstream is a `FakeOpenAIServer` the test runs (`BUDGET_UPSTREAM`, its `/v1` URL); models
`priced` and `unpriced` both reach it. Prices come from `BUDGET_PRICES` (JSON overrides for
`Pricing`), so a test can restart the server with a price configured.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bastion.gateway import Gateway
from bastion.graph.agent import Agent
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel


def build(env: ProjectEnv) -> Project:
    upstream = os.environ["BUDGET_UPSTREAM"]
    prices: dict[str, Any] = json.loads(os.environ.get("BUDGET_PRICES", "{}"))
    gateway = Gateway(
        tiers={
            "priced": f"openai-compat:{upstream}#priced-model",
            "unpriced": f"openai-compat:{upstream}#unpriced-model",
        },
        pricing=prices,
        cache=False,
    )
    echo = Agent(FunctionModel(lambda r: "ok"), name="echo", checkpointer=env.checkpointer())
    return Project(agents={"echo": echo}, gateway=gateway, on_close=[gateway.aclose])
