"""The examples in docs/runtime.md's "Deploying a graph" section run as written."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "runtime.md"


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_deploying_a_graph_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", section("Deploying a graph"), flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)  # the example writes under ./graph-home
    namespace: dict[str, object] = {"__name__": "docs_runtime_graph"}
    for block in blocks:
        exec(compile(textwrap.dedent(block), str(DOC), "exec", dont_inherit=True), namespace)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "interrupted ['notes on churn', 'notes on pricing']",
        "completed yes",
        "['plan', 'research', 'research', 'review']",
        "['notes on retention']",
    ]
    # The project loads as a server would load it, with both ways of deploying the graph.
    build = namespace["build"]
    from bastion.runtime import GraphRunnable
    from bastion.server import ProjectEnv

    runnables = build(ProjectEnv(home=tmp_path / "again")).runnables()  # type: ignore[operator]
    assert all(isinstance(r, GraphRunnable) for r in runnables.values())
    assert runnables["ask"].input_map == "question"
