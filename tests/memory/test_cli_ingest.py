"""`bastion memory ingest PATH`, run as a real subprocess, writes searchable chunks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bastion.memory import HashingEmbedder, Namespace, SQLiteMemoryStore


def bastion(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion.cli", "--home", str(home), *args],
        capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "100"},
    )  # fmt: skip


async def test_ingest_a_directory_with_progress_then_search_it(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "policies").mkdir(parents=True)
    (docs / "refunds.md").write_text(
        "# Refunds\nRefunds are accepted within 30 days.\n\n# Shipping\nWe ship in 2 days."
    )
    (docs / "policies" / "privacy.txt").write_text("We never sell customer data. " * 40)
    (docs / "notes.bin").write_bytes(b"\x00\x01")  # not a document format: skipped
    args = ("memory", "ingest", str(docs), "--tenant", "acme", "--scope", "kb", "--embedder", "hashing")
    out = bastion(tmp_path, *args)
    assert out.returncode == 0, out.stderr
    assert "chunks embedded" in out.stdout  # the progress bar's row
    assert "2 files: 2 added, 0 replaced, 0 unchanged" in out.stdout
    again = bastion(tmp_path, *args)
    assert "2 files: 0 added, 0 replaced, 2 unchanged" in again.stdout

    store = SQLiteMemoryStore(tmp_path / "memory.db", HashingEmbedder())
    try:
        assert store.pending_embeddings == 0
        hits = await store.search(Namespace("acme", scope="kb"), "are refunds accepted", k=1, mode="vector")
        assert hits and "30 days" in hits[0].item.text and hits[0].item.kind == "document"
        assert await store.search(Namespace("globex", scope="kb"), "refund") == []
    finally:
        await store.close()


def test_ingest_reports_a_missing_path(tmp_path: Path) -> None:
    out = bastion(tmp_path, "memory", "ingest", str(tmp_path / "nope"), "--tenant", "acme", "--embedder", "hashing")
    assert out.returncode == 2 and "no such file or directory" in out.stderr
