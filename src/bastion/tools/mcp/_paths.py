"""The read-only paths a sandboxed stdio MCP server needs, found without `sandbox_paths`.

A server is often installed in its own virtualenv (`/opt/srv/.venv/bin/python -m srv`), whose
prefix, base interpreter and `.pth`-added directories Bastion cannot guess from its own
`sys.prefix`. When the command is a Python interpreter we ask it: one short run of the same
interpreter, with the same environment the server gets, prints its prefixes and `sys.path`.
Everything else (a script argument, the executable's own directory) is bound as given.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path

_PYTHON = re.compile(r"python(\d+(\.\d+)*)?(\.exe)?")
_PROBE = (
    "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, "
    "sys.base_exec_prefix, *sys.path]))"
)
# Already in every sandbox (read-only /usr); binding below them again is pointless.
_SYSTEM = ("/usr",)


def _minimal(paths: set[str]) -> list[str]:
    """Existing paths outside /usr (as given and with symlinks resolved: the sandbox sees both
    spellings), without those already inside another listed path."""
    spelled = {q for p in paths if p for q in (p, os.path.realpath(p))}
    keep = sorted(p for p in spelled if os.path.exists(p) and not p.startswith(_SYSTEM))
    out: list[str] = []
    for p in keep:  # sorted, so a parent comes before its children
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


async def _python_paths(executable: str, env: dict[str, str], timeout: float) -> set[str]:
    proc = await asyncio.create_subprocess_exec(
        executable,
        "-c",
        _PROBE,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return set()
    if proc.returncode != 0:
        return set()  # the server's own start will fail and report it, naming the server
    try:
        found = json.loads(out)
    except ValueError:
        return set()
    return {str(p) for p in found if isinstance(p, str)} if isinstance(found, list) else set()


def _command_paths(command: list[str]) -> tuple[set[str], str | None]:
    """The executable's directory and a script argument's directory; and the interpreter to ask
    when the executable is Python."""
    executable = shutil.which(command[0]) or command[0]
    paths: set[str] = set()
    python: str | None = None
    exe = Path(executable)
    if exe.exists():
        paths.add(str(exe.parent.absolute()))
        if _PYTHON.fullmatch(exe.name) or _PYTHON.fullmatch(exe.resolve().name):
            python = str(exe.absolute())
    for arg in command[1:]:
        if arg.startswith("-"):
            continue
        script = Path(arg)
        if script.is_file():
            paths.add(str(script.resolve().parent))
        break  # only the first positional argument is the script
    return paths, python


async def server_paths(command: list[str], env: dict[str, str] | None = None, *, timeout: float = 10.0) -> list[str]:
    """Directories (and files) to bind read-only so `command` can run in the sandbox: the
    executable's directory, a Python interpreter's prefixes and `sys.path`, and the directory of
    a script argument."""
    paths, python = _command_paths(command)
    if python is not None:
        from mcp.client.stdio import get_default_environment

        probe_env = {**get_default_environment(), **(env or {})}
        paths |= await _python_paths(python, probe_env, timeout)
    return _minimal(paths)


__all__ = ["server_paths"]
