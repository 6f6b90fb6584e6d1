"""The runnable Python examples in docs/sandbox-mcp.md run as written (against a real sandbox)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "sandbox-mcp.md"


@pytest.mark.sandbox
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_python_examples_in_docs_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    runnable = [b for b in blocks if "asyncio.run(main())" in b]
    assert runnable, "docs/sandbox-mcp.md lost its runnable example"
    for block in runnable:
        exec(compile(block, str(DOC), "exec"), {"__name__": "docs_example"})
