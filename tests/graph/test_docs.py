"""The examples in docs/orchestration.md run as written."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "orchestration.md"


def test_doc_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)  # the examples write runs.db in the working directory
    namespace: dict[str, object] = {"__name__": "docs_orchestration"}
    for block in blocks:
        exec(compile(textwrap.dedent(block), str(DOC), "exec", dont_inherit=True), namespace)
    out = capsys.readouterr().out
    assert "{'question': 'Pay?', 'amount': 120}" in out
    assert "['Book it', 'That will be 120 EUR.', 'human said: approve']" in out
