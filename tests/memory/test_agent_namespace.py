"""Memory tools called by an agent land in that agent's namespace (tenant, agent, user)."""

from __future__ import annotations

from pathlib import Path

from bastion.graph.agent import Agent
from bastion.memory import HashingEmbedder, Namespace, SQLiteMemoryStore, memory_tools
from bastion.policy import Policy, ToolGateway
from bastion.testing import ScriptedModel
from bastion.types import RunContext, ToolCall


async def test_agent_memory_writes_are_namespaced_by_the_run(tmp_path: Path) -> None:
    store = SQLiteMemoryStore(tmp_path / "m.db", HashingEmbedder())
    tools = memory_tools(store)
    model = ScriptedModel([ToolCall("remember", {"text": "Ana lives in Lisbon."}), "Noted."])
    agent = Agent(
        model, tools=tools, name="concierge",
        tool_executor=ToolGateway(Policy({"concierge": ["search_memory", "remember", "forget"]})),
    )  # fmt: skip
    result = await agent.run("Remember that I live in Lisbon.", context=RunContext(tenant="acme", user="ana"))
    assert result.output == "Noted."
    await store.flush()
    mine = await store.search(Namespace("acme", "concierge", "ana"), "Lisbon", mode="bm25", include_untrusted=True)
    assert [h.item.text for h in mine] == ["Ana lives in Lisbon."]
    other_agent = await store.search(Namespace("acme", "", "ana"), "Lisbon", mode="bm25", include_untrusted=True)
    other_tenant = await store.search(
        Namespace("evil", "concierge", "ana"), "Lisbon", mode="bm25", include_untrusted=True
    )
    assert other_agent == [] and other_tenant == []
    await store.close()
