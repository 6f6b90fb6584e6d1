"""The example in docs/memory.md runs as written, and the public surface is pinned."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import bastion.memory

DOC = Path(__file__).resolve().parents[2] / "docs" / "memory.md"


def test_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.group(1), str(DOC), "exec"), {"__name__": "__main__"})
    first = out.getvalue().splitlines()[0]
    assert first.startswith("['Alice moved to Berlin'") and "Paris" not in first
    assert (tmp_path / "memory.db").exists()


def test_public_surface_is_pinned() -> None:
    assert sorted(bastion.memory.__all__) == [
        "AssembledContext",
        "Chunk",
        "ContextAssembler",
        "ContextPolicy",
        "CoreMemory",
        "DEFAULT_WINDOW",
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
    for name in bastion.memory.__all__:
        assert getattr(bastion.memory, name) is not None


def test_importing_memory_loads_no_heavy_modules() -> None:
    import subprocess
    import sys

    code = (
        "import sys, bastion.memory; "
        "heavy = [m for m in ('onnxruntime', 'psycopg', 'bs4', 'pypdf', 'apsw', 'numpy') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
