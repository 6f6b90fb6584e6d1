"""The runnable example in docs/gateway-core.md really runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway-core.md"


def test_first_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/gateway-core.md has no python example"
    exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out
    assert out.startswith("Paris. 0.0 1 1")
    assert "'test:primary': 'closed'" in out and "Spend(tokens=" in out
