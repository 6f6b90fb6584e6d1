"""Memory RAG wired into an agent: documents are ingested into a `MemoryStore`, and the agent
answers from them through its `search_memory` tool (which runs through the policy gateway and
can only read the run's own tenant).

    python examples/memory_rag.py
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from bastion.graph.agent import Agent
from bastion.memory import Document, HashingEmbedder, Namespace, SQLiteMemoryStore, ingest, memory_tools
from bastion.testing import FunctionModel
from bastion.types import ModelRequest, RunContext, ToolCall

DOCS = [
    Document("returns", "# Returns\nItems can be returned within 30 days.", "markdown", source="returns.md"),
    Document("shipping", "# Shipping\nOrders ship within 2 business days.", "markdown", source="shipping.md"),
    Document("warranty", "# Warranty\nElectronics carry a 2-year warranty.", "markdown", source="warranty.md"),
]


def answer(request: ModelRequest) -> str | ToolCall:
    """Plays the model: search memory for the question, then answer from the best hit."""
    last = request.messages[-1]
    if last.role != "tool":
        return ToolCall("search_memory", {"query": last.text, "k": 2})
    hits = json.loads(last.text)
    if not hits:
        return "I found nothing about that."
    return f"{hits[0]['text'].splitlines()[-1]} (source: {hits[0]['source']})"


async def main(home: Path) -> None:
    # HashingEmbedder: instant and offline; the default (no embedder=) is MiniLM, also offline.
    store = SQLiteMemoryStore(home / "memory.db", embedder=HashingEmbedder())
    shared = Namespace("acme", agent="support")  # shared by every user of the support agent
    for doc in DOCS:
        await ingest(store, shared, doc)
    await store.flush()  # wait for the background embedder, so vectors join BM25 in the search

    model = FunctionModel(answer)
    agent = Agent(model, tools=memory_tools(store), name="support", instructions="Answer from memory.")
    ctx = RunContext(tenant="acme", user="ada")  # the tools take the namespace from here, never from the model
    result = await agent.run("How many days do I have to return an item?", context=ctx)
    print("answer:", result.output)
    assert result.output == "Items can be returned within 30 days. (source: returns.md)"
    [call] = [c for m in result.messages for c in m.tool_calls]
    print("tool call:", call.name, call.arguments)

    other = RunContext(tenant="globex", user="bob")  # another tenant: none of acme's documents
    elsewhere = await agent.run("How many days do I have to return an item?", context=other)
    print("globex:", elsewhere.output)
    assert elsewhere.output == "I found nothing about that."
    await store.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
