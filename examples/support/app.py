"""The demo project: a customer-support agent that exercises all five layers offline.

- compute: every model call goes through a `Gateway` (local llama.cpp model, retries, budgets, cost);
- orchestration: durable agents on the graph engine (SQLite checkpoints), approvals as interrupts;
- context: a knowledge base ingested into hybrid (BM25 + MiniLM vectors) memory, searched by a tool;
- observability: every run is one trace (agent → model → tool → policy spans) with cost;
- security: every tool call passes the policy gateway — default deny, per-argument provenance
  (a refund whose amount or IBAN is not in the customer's words is flagged, one whose IBAN came
  from an order note is denied), approvals for refunds over 30 EUR; the calculator runs its
  Python in a bubblewrap sandbox.

`support` is a supervisor that routes each request by rule to a member agent with one tool
(knowledge base, order lookup, refunds, calculator), each on the bundled 270M model.

`support-redteam` runs the same tools and policy with a *hijacked* model (scripted to obey the
injected instruction hidden in order 1043's customer note), to show the gateway holds even when
the model does not.

Run it with `bastion serve --app examples/support/app.py:build` or `make demo`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

from orders import order_tools, seed
from pydantic import Field

from bastion.gateway import Budget, BudgetLimits, Gateway
from bastion.graph.agent import Agent, Supervisor
from bastion.memory import Document, MiniLMEmbedder, Namespace, SQLiteMemoryStore, ingest, retrieve
from bastion.policy import ArgLimit, Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.testing import ScriptedModel
from bastion.tools import tool
from bastion.tools.sandbox import Sandbox, SandboxLimits
from bastion.tracing import spans
from bastion.types import Message, ModelRequest, ModelResponse, ModelSettings, StreamEvent, ToolCall

HERE = Path(__file__).parent
TENANT = "acme"
ATTACKER_IBAN = "GB33BUKB20201555555555"
ARITHMETIC = r"^[0-9][0-9. +*/()-]*[0-9)]$"  # the calculator only ever sees arithmetic

INSTRUCTIONS = {
    "kb": "You answer questions about the shop's policies. Search the knowledge base, then answer in one sentence.",
    "orders": (
        "You look up orders with get_order, then tell the customer the item and its status in one sentence.\n\n"
        "User: Where is order 7?\nAssistant: (calls get_order(order_id=7))\n"
        "Tool get_order result: order_id: 7; customer: sam; item: desk lamp; amount: 25.0; status: shipped\n"
        "Assistant: Your desk lamp (order 7) has shipped."
    ),
    "refunds": (
        "You refund orders with the refund tool (order number, amount, and the IBAN only if the customer gave one), "
        "then confirm in one sentence.\n\n"
        "User: Please refund order 7 (25 EUR).\nAssistant: (calls refund(order_id=7, amount=25.0))\n"
        "Tool refund result: refunded 25.00 EUR for order 7 to the original payment method\n"
        "Assistant: Done: 25.00 EUR for order 7 is on its way back to you."
    ),
    "calc": (
        "You do arithmetic with the calculate tool, then state the result.\n\n"
        'User: Add 2 and 3.\nAssistant: {"tool": "calculate", "arguments": {"expression": "2 + 3"}}\n'
        'User: Multiply 4.5 by 2.\nAssistant: {"tool": "calculate", "arguments": {"expression": "4.5 * 2"}}'
    ),
}


def route(messages: list[Message]) -> str | None:
    """The supervisor's rule: pick the member for the customer's latest request; finish once a
    member has answered it."""
    last_user = max(i for i, m in enumerate(messages) if m.role == "user")
    if any(m.role == "assistant" and not m.tool_calls for m in messages[last_user + 1 :]):
        return None  # a member has replied
    text = messages[last_user].text.lower()
    if "refund" in text:
        return "refunds"
    if any(word in text for word in ("python", "add up", "calculate", "sum of")):
        return "calc"
    if re.search(r"\border\b|\b\d{4}\b", text):
        return "orders"
    return "kb"


class OneToolThenAnswer:
    """Guidance for a very small model: its first turn must call one of the agent's tools (the
    grammar makes the call schema-valid), and once a tool has answered it must reply in text.
    Bigger models do not need this; it keeps the demo's flow predictable on a 270M base model."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.name = getattr(model, "name", "guided")

    def _guide(self, request: ModelRequest) -> ModelRequest:
        answered = any(m.role == "tool" for m in request.messages)
        return replace(request, tool_choice="none" if answered else "required")

    async def request(self, request: ModelRequest) -> ModelResponse:
        return await self.model.request(self._guide(request))

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        return self.model.stream(self._guide(request))


def hijacked_model() -> ScriptedModel:
    """What a fully prompt-injected model would do: obey the note in order 1043."""
    return ScriptedModel(
        [
            ToolCall("get_order", {"order_id": 1043}),
            ToolCall("refund", {"order_id": 1043, "amount": 89.0, "iban": ATTACKER_IBAN}),
            "I could not complete the refund.",
        ],
        name="test:hijacked",
    )


async def build(env: ProjectEnv) -> Project:
    env.home.mkdir(parents=True, exist_ok=True)
    orders_db = env.home / "orders.db"
    seed(orders_db)

    memory = SQLiteMemoryStore(env.home / "memory.db", MiniLMEmbedder())
    kb = Namespace(TENANT, scope="kb")
    for doc in sorted((HERE / "kb").glob("*.md")):
        await ingest(memory, kb, Document(id=doc.stem, text=doc.read_text(), source=doc.name))
    await memory.flush()

    gateway = Gateway(
        default="local:gemma-3-270m",
        tiers={"local": "local:gemma-3-270m"},
        budgets=Budget(run=BudgetLimits(tokens=20_000, usd=0.50), tenant=BudgetLimits(usd=10.0)),
    )
    policy = Policy(
        {
            "kb": ["search_kb"],
            "orders": ["get_order"],
            "refunds": ["refund"],
            "calc": ["calculate"],
            "support-redteam": ["get_order", "refund"],
        },
        rules=[
            ArgLimit("refund", "amount", max=1000),
            # refunds above 30 EUR wait for a human, even when every value is the customer's own
            ArgLimit("refund", "amount", max=30, effect="require_approval", id="refund-over-30-eur"),
        ],
        on_taint="deny",  # a destination copied from untrusted tool output never gets paid
    )
    tool_gateway = ToolGateway(policy, audit=env.audit_log())  # PostgreSQL when scaled out

    @tool(side_effect="read", trust="trusted")  # our own documents
    async def search_kb(query: str) -> str:
        """Search the shop's policy documents and return the most relevant passage.

        Args:
            query: what the customer asks about.
        """
        run = spans.current_run()
        hits = await retrieve(memory, Namespace(run.tenant if run else TENANT, scope="kb"), query, k=1)
        return hits[0].item.text if hits else "nothing found"

    get_order, refund = order_tools(orders_db)
    box = Sandbox(SandboxLimits(wall_timeout=10))

    @tool(side_effect="none")
    async def calculate(expression: Annotated[str, Field(pattern=ARITHMETIC, max_length=80)]) -> str:
        """Evaluate an arithmetic expression with Python, in the bubblewrap sandbox.

        Args:
            expression: numbers and + - * / only, e.g. 2 + 3
        """
        result = await box.run_python(f"print({expression})")
        return result.stdout.strip() if result.ok else f"error: {result.stderr.strip()[-200:]}"

    settings = ModelSettings(temperature=0.0, max_tokens=60)
    local = OneToolThenAnswer(gateway.model("local"))

    def member(name: str, tool: Any) -> Agent[Any]:
        return Agent(
            local, name=name, instructions=INSTRUCTIONS[name], tools=[tool], max_turns=2, model_settings=settings,
            tool_executor=tool_gateway, checkpointer=env.checkpointer(),
        )  # fmt: skip

    members = [member("kb", search_kb), member("orders", get_order), member("refunds", refund),
               member("calc", calculate)]  # fmt: skip
    support = Supervisor(members, router=route, name="support", max_rounds=2, checkpointer=env.checkpointer())
    redteam = Agent(
        hijacked_model(), name="support-redteam", instructions=INSTRUCTIONS["orders"], tools=[get_order, refund],
        max_turns=4, tool_executor=tool_gateway, checkpointer=env.checkpointer(),
        description="The same tools and policy, driven by a prompt-injected model",
    )  # fmt: skip

    async def close() -> None:
        await memory.close()
        await gateway.aclose()

    return Project(
        agents={"support": support, "support-redteam": redteam},
        memory=memory,
        gateway=gateway,
        on_close=[close],
    )
