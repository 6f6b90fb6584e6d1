"""The Python examples in docs/security.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def test_python_examples_in_docs_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    runnable = [b for b in blocks if "asyncio.run(main())" in b]
    assert runnable, "docs/security.md lost its runnable example"
    for block in runnable:
        exec(compile(block, str(DOC), "exec"), {"__name__": "docs_example"})
