"""The project every process of the scale-out test loads: one agent whose (edge) model is
priced, so each run leaves a trace and a cost row in the shared store, and whose tool calls go
through the policy gateway into the deployment's audit log (`env.audit_log()`: PostgreSQL, keyed
by BASTION_SECRET_AUDIT_KEY). Every run makes two model calls: the first asks for `lookup`
(granted) or, when the prompt mentions "wipe", for `wipe` (not granted: denied and audited);
the second answers. A call without tools (a proxy client's) is answered at once. A prompt
starting with "slow" makes each call wait a little: a window for the test to kill a worker.
The gateway is also served as the proxy (`/openai/v1`), for virtual keys."""

from __future__ import annotations

import asyncio
import re

from bastion.gateway import Gateway
from bastion.graph.agent import Agent
from bastion.policy import Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel
from bastion.tools import tool
from bastion.types import Message, ModelRequest, ModelResponse, ToolCall, Usage

KEYS: dict[str, tuple[str, str]] = {"key-a": ("a", "operator"), "key-b": ("b", "operator")}
PRICE = {"input": 50.0, "output": 50.0}  # USD per million tokens: 50 tokens a call cost $0.0025
CALL_USD = 0.0025
COST_USD = 2 * CALL_USD  # a run: the tool call, then the answer
_NUMBER = re.compile(r"\d+")


@tool(side_effect="read")
def lookup(item: int) -> str:
    """Look an item up."""
    return f"item {item} is in stock"


@tool(side_effect="irreversible")
def wipe(item: int) -> str:
    """Delete an item (never granted to the clerk)."""
    return f"wiped {item}"


async def _priced(request: ModelRequest) -> ModelResponse:
    prompt = next(m.text for m in request.messages if m.role == "user")
    if prompt.startswith("slow"):
        await asyncio.sleep(0.4)
    last = request.messages[-1]
    if last.role == "tool" or not request.tools:  # its answer (or a proxy client's call)
        reply = Message.assistant(f"done: {prompt} ({last.text})")
    else:
        found = _NUMBER.search(prompt)
        item = int(found[0]) if found else 0
        reply = Message.assistant("", [ToolCall("wipe" if "wipe" in prompt else "lookup", {"item": item})])
    return ModelResponse(reply, Usage(40, 10), model="test:priced")


def build(env: ProjectEnv) -> Project:
    # Through a gateway, as in production: it prices the call and records the `chat` span.
    model = FunctionModel(_priced, name="test:priced")
    gateway = Gateway(models={"test:priced": model}, pricing={"test:priced": PRICE})
    tools = ToolGateway(Policy({"clerk": ["lookup"]}), audit=env.audit_log())
    agent = Agent(
        gateway.model("test:priced"), name="clerk", tools=[lookup, wipe], tool_executor=tools,
        checkpointer=env.checkpointer(),
    )  # fmt: skip
    return Project(
        agents={"clerk": agent}, gateway=gateway, api_keys=dict(KEYS), on_close=[gateway.aclose, tools.close]
    )
