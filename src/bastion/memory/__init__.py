"""Layer 3, context: what the model sees (working memory) and what the agent remembers
(long-term memory).

- `ContextAssembler` builds each request's messages under a token budget: pinned
  instructions and core memory, a running summary of evicted turns, recent turns verbatim,
  retrieved evidence next to the question. Old tool results are stubbed before anything is
  summarised; summarising is a model call through the `Model` protocol (the gateway).
- `MemoryStore` (protocol) with `SQLiteMemoryStore` (embedded: FTS5 + sqlite-vec) and
  `PostgresMemoryStore` (pgvector HNSW + tsvector): semantic facts with validity intervals,
  episodes, versioned skills, hybrid retrieval (reciprocal rank fusion), one partition per tenant.
- Embedders (`MiniLMEmbedder` offline default, `OpenAIEmbedder`, `HashingEmbedder`), ingestion
  (loaders and chunkers) and the governed entry points agents use: `memory_tools()` and
  `retrieve()` / `retrieval_node()`.

Heavy modules (onnxruntime, psycopg, bs4, pypdf) load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion._lazy import lazy_getattr
from bastion.memory._types import Episode, MemoryItem, Namespace, SearchHit, Skill

if TYPE_CHECKING:
    from bastion.memory._batcher import EmbeddingBatcher
    from bastion.memory._context import (
        DEFAULT_WINDOW,
        AssembledContext,
        ContextAssembler,
        ContextPolicy,
        Summary,
        edge_order,
    )
    from bastion.memory._core import CoreMemory
    from bastion.memory._embedders import Embedder, HashingEmbedder, MiniLMEmbedder, OpenAIEmbedder
    from bastion.memory._facts import FactMemory, extract_facts
    from bastion.memory._ingest import (
        Chunk,
        Document,
        IngestResult,
        chunk_markdown,
        chunk_tokens,
        ingest,
        load_document,
        load_html,
        load_pdf,
    )
    from bastion.memory._postgres import PostgresMemoryStore
    from bastion.memory._sqlite import SQLiteMemoryStore
    from bastion.memory._store import MemoryStore
    from bastion.memory._tokens import TokenCounter, counter_for
    from bastion.memory._tools import memory_tools, retrieval_node, retrieve, use_run_context

_LAZY = {
    "EmbeddingBatcher": "._batcher",
    "AssembledContext": "._context",
    "ContextAssembler": "._context",
    "ContextPolicy": "._context",
    "DEFAULT_WINDOW": "._context",
    "Summary": "._context",
    "edge_order": "._context",
    "CoreMemory": "._core",
    "extract_facts": "._facts",
    "FactMemory": "._facts",
    "Embedder": "._embedders",
    "HashingEmbedder": "._embedders",
    "MiniLMEmbedder": "._embedders",
    "OpenAIEmbedder": "._embedders",
    "Chunk": "._ingest",
    "Document": "._ingest",
    "IngestResult": "._ingest",
    "chunk_markdown": "._ingest",
    "chunk_tokens": "._ingest",
    "ingest": "._ingest",
    "load_document": "._ingest",
    "load_html": "._ingest",
    "load_pdf": "._ingest",
    "PostgresMemoryStore": "._postgres",
    "SQLiteMemoryStore": "._sqlite",
    "MemoryStore": "._store",
    "TokenCounter": "._tokens",
    "counter_for": "._tokens",
    "memory_tools": "._tools",
    "retrieval_node": "._tools",
    "retrieve": "._tools",
    "use_run_context": "._tools",
}

__all__ = [
    "DEFAULT_WINDOW",
    "AssembledContext",
    "Chunk",
    "ContextAssembler",
    "ContextPolicy",
    "CoreMemory",
    "Document",
    "Embedder",
    "EmbeddingBatcher",
    "Episode",
    "FactMemory",
    "HashingEmbedder",
    "IngestResult",
    "MemoryItem",
    "MemoryStore",
    "MiniLMEmbedder",
    "Namespace",
    "OpenAIEmbedder",
    "PostgresMemoryStore",
    "SQLiteMemoryStore",
    "SearchHit",
    "Skill",
    "Summary",
    "TokenCounter",
    "chunk_markdown",
    "chunk_tokens",
    "counter_for",
    "edge_order",
    "extract_facts",
    "ingest",
    "load_document",
    "load_html",
    "load_pdf",
    "memory_tools",
    "retrieval_node",
    "retrieve",
    "use_run_context",
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
