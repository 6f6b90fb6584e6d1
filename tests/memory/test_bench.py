"""The memory benchmark runs end to end (small sizes) and reports every number it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "memory.py"


@pytest.mark.slow
def test_bench_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--no-peer", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    for row in report["latency_sqlite"]:
        assert row["hybrid"]["p50_ms"] > 0 and 0 <= row["index_recall@10_clustered"] <= 1
    # --quick adds one single-tenant run (--tenant-size, 8,000 items when quick)
    assert [(r["tenants"], r["items_per_tenant"]) for r in report["latency_sqlite"]][-1] == (1, 8000)
    quality = report["quality"]
    assert quality["questions"] > 0 and 0 < quality["index_recall@10_minilm"] <= 1
    for mode in ("bm25", "vector", "hybrid"):
        assert 0 <= quality[mode]["recall@10"] <= 1
    assert quality["hybrid_k1_differs_from_k10_top1"] == 0  # the top hit does not depend on k
    ingestion = report["ingestion"]  # the default embedder on short turns (the 500 items/s target)
    assert ingestion["avg_tokens"] < 30 and min(ingestion["items_per_s"]) > 0 and ingestion["items_per_cpu_s"] > 0
    assert "| put_many + flush, SQLite |" in proc.stdout
    assert "| hybrid |" in proc.stdout
