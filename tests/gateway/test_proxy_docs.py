"""The Python example in docs/gateway-proxy.md runs as written (on a free port)."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway-proxy.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    runnable = [b for b in blocks if "asyncio.run(main())" in b]
    assert len(runnable) == 1, "expected exactly one runnable example in the doc"
    return runnable[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_doc_example_runs(tmp_path: Path) -> None:
    code = _example().replace("8700", str(_free_port()))
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == "Hello from Bastion!"
    assert float(lines[1]) == 0.0
