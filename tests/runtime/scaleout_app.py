"""The project every process of the scale-out test loads: one agent whose (edge) model answers
with a priced response, so each run leaves a trace and a cost row in the shared store. A
prompt starting with "slow" waits a little first: a window for the test to kill a worker."""

from __future__ import annotations

import asyncio

from bastion.gateway import Gateway
from bastion.graph.agent import Agent
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel
from bastion.types import Message, ModelRequest, ModelResponse, Usage

KEYS: dict[str, tuple[str, str]] = {"key-a": ("a", "operator"), "key-b": ("b", "operator")}
PRICE = {"input": 50.0, "output": 50.0}  # USD per million tokens: 50 tokens a call cost $0.0025
COST_USD = 0.0025


async def _priced(request: ModelRequest) -> ModelResponse:
    prompt = next(m.text for m in request.messages if m.role == "user")
    if prompt.startswith("slow"):
        await asyncio.sleep(0.4)
    return ModelResponse(Message.assistant(f"done: {prompt}"), Usage(40, 10), model="test:priced")


def build(env: ProjectEnv) -> Project:
    # Through a gateway, as in production: it prices the call and records the `chat` span.
    model = FunctionModel(_priced, name="test:priced")
    gateway = Gateway(models={"test:priced": model}, pricing={"test:priced": PRICE})
    agent = Agent(gateway.model("test:priced"), name="clerk", checkpointer=env.checkpointer())
    return Project(agents={"clerk": agent}, api_keys=dict(KEYS), on_close=[gateway.aclose])
