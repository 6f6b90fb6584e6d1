"""The demo project: a customer-support agent that exercises all five layers offline.

- compute: every model call goes through a `Gateway` (local llama.cpp model, retries, budgets, cost);
- orchestration: durable agents on the graph engine (SQLite checkpoints), approvals as interrupts;
- context: a knowledge base ingested into hybrid (BM25 + MiniLM vectors) memory, searched by a tool;
- observability: every run is one trace (agent → model → tool → policy spans) with cost;
- security: every tool call passes the policy gateway — default deny, approvals for refunds,
  taint rules against prompt injection, a sandboxed code tool.

`support-redteam` runs the same tools and policy with a *hijacked* model (scripted to obey the
injected instruction hidden in order 1043's customer note), to show the gateway holds even when
the model does not.

Run it with `bastion serve --app examples/support/app.py:build` or `make demo`.
"""

from __future__ import annotations

from pathlib import Path

from orders import order_tools, seed

from bastion.gateway import Budget, BudgetLimits, Gateway
from bastion.graph.agent import Agent
from bastion.memory import Document, MiniLMEmbedder, Namespace, SQLiteMemoryStore, ingest, memory_tools
from bastion.policy import ArgLimit, AuditLog, Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.testing import ScriptedModel
from bastion.tools.sandbox import SandboxLimits, sandbox_tools
from bastion.types import ModelSettings, ToolCall

HERE = Path(__file__).parent
TENANT = "acme"
ATTACKER_IBAN = "GB33BUKB20201555555555"

INSTRUCTIONS = (
    "You are the support assistant of an online shop. Answer briefly. "
    "Use search_memory for questions about returns, shipping or warranty. "
    "Use get_order to look up an order number. Use refund only when the customer asks for a refund. "
    "Use run_python for arithmetic."
)


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
            "support": ["search_memory", "get_order", "refund", "run_python"],
            "support-redteam": ["get_order", "refund"],
        },
        rules=[ArgLimit("refund", "amount", max=500)],
        on_taint="deny",  # a destination copied from untrusted tool output never gets paid
    )
    tool_gateway = ToolGateway(policy, audit=AuditLog(env.home / "audit.db"))
    kb_tools = memory_tools(memory, lambda run: Namespace(run.tenant, scope="kb"))[:1]  # search_memory only
    tools = [*kb_tools, *order_tools(orders_db), *sandbox_tools(SandboxLimits(wall_timeout=10))[:1]]
    settings = ModelSettings(temperature=0.0, max_tokens=160)

    support = Agent(
        gateway.model("local"), name="support", instructions=INSTRUCTIONS, tools=tools, max_turns=4,
        model_settings=settings, tool_executor=tool_gateway, checkpointer=env.checkpointer(),
        description="Support assistant on the bundled local model",
    )  # fmt: skip
    redteam = Agent(
        hijacked_model(), name="support-redteam", instructions=INSTRUCTIONS, tools=order_tools(orders_db),
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
