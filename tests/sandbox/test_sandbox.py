"""The escape suite: everything a hostile program might try is contained by the OS."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from bastion.errors import SandboxUnavailableError, UserError
from bastion.tools.sandbox import Sandbox, SandboxLimits, sandbox_tools

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed (apt-get install bubblewrap)"),
]


@pytest.fixture
def box() -> Sandbox:
    return Sandbox(SandboxLimits(wall_timeout=8, cpu_seconds=3, memory_mb=256, max_processes=16))


async def test_runs_python_and_shell(box: Sandbox) -> None:
    r = await box.run_python("import sys; print(6 * 7); print('err', file=sys.stderr); sys.exit(3)")
    assert (r.exit_code, r.stdout, r.stderr.strip()) == (3, "42\n", "err")
    r = await box.run_shell("echo $HOME; pwd")
    assert r.ok and r.stdout.split() == ["/work", "/work"]


async def test_no_network(box: Sandbox, unused_tcp_port: int) -> None:
    # A real server on the host's loopback: the sandbox has its own network namespace.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", unused_tcp_port)
    async with server:
        code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {unused_tcp_port}), timeout=2); print("CONNECTED")
except OSError as e:
    print("blocked", type(e).__name__)
try:
    socket.getaddrinfo("pypi.org", 443); print("RESOLVED")
except OSError as e:
    print("no dns", type(e).__name__)
"""
        r = await box.run_python(code)
    assert "CONNECTED" not in r.stdout and "RESOLVED" not in r.stdout
    assert "blocked" in r.stdout and "no dns" in r.stdout


async def test_cannot_read_host_files(box: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("CANARY-HOST-FILE")
    code = f"""
import os
for p in ["/etc/passwd", "/root", {str(secret)!r}, {str(Path.cwd())!r}]:
    try:
        print(p, "READ", open(p).read()[:20] if os.path.isfile(p) else os.listdir(p))
    except OSError as e:
        print(p, "denied", type(e).__name__)
"""
    r = await box.run_python(code)
    assert "CANARY-HOST-FILE" not in r.stdout
    assert "READ" not in r.stdout, r.stdout


async def test_cannot_write_outside_workdir(box: Sandbox) -> None:
    code = """
for p in ["/usr/evil", "/evil", "/proc/evil"]:
    try:
        open(p, "w").write("x"); print(p, "WROTE")
    except OSError as e:
        print(p, "denied")
open("/work/ok.txt", "w").write("fine"); print("workdir ok")
"""
    r = await box.run_python(code)
    assert "WROTE" not in r.stdout and "workdir ok" in r.stdout
    assert not await asyncio.to_thread(Path("/usr/evil").exists)


async def test_fork_bomb_is_contained(box: Sandbox) -> None:
    r = await box.run_shell(":(){ :|:& };:")
    # Contained: the run ends (by the process limit or the wall clock) and the host is fine.
    assert r.exit_code != 0 or r.timed_out
    after = await box.run_python("print('alive')")
    assert after.stdout == "alive\n"


async def test_memory_bomb_is_contained(box: Sandbox) -> None:
    r = await box.run_python("x = bytearray(2 * 1024 * 1024 * 1024); print('ALLOCATED')")
    assert "ALLOCATED" not in r.stdout and r.exit_code != 0
    assert "MemoryError" in r.stderr


async def test_infinite_loop_is_killed() -> None:
    box = Sandbox(SandboxLimits(wall_timeout=2, cpu_seconds=30))
    r = await box.run_python("while True: pass")
    assert r.timed_out and r.exit_code != 0


async def test_cpu_limit_kills_busy_loop() -> None:
    box = Sandbox(SandboxLimits(wall_timeout=20, cpu_seconds=1))
    r = await box.run_python("while True: pass")
    assert not r.timed_out and r.exit_code != 0  # SIGXCPU/SIGKILL from RLIMIT_CPU


async def test_huge_output_is_capped() -> None:
    box = Sandbox(SandboxLimits(max_output_bytes=1000))
    r = await box.run_python("while True: print('y' * 1000)")
    assert r.truncated and len(r.stdout) <= 1000


async def test_disk_fill_is_capped() -> None:
    box = Sandbox(SandboxLimits(workdir_mb=2, file_size_mb=64))
    r = await box.run_python("open('/work/big', 'wb').write(b'x' * 8 * 1024 * 1024); print('WROTE')")
    assert "WROTE" not in r.stdout and "No space left" in r.stderr


async def test_each_call_gets_a_fresh_sandbox(box: Sandbox) -> None:
    await box.run_shell("echo persisted > /work/state.txt")
    r = await box.run_shell("cat /work/state.txt")
    assert r.exit_code != 0 and "persisted" not in r.stdout


async def test_no_capabilities_and_unprivileged(box: Sandbox) -> None:
    r = await box.run_shell("grep -E '^Cap(Eff|Prm)' /proc/self/status; id -u")
    lines = r.stdout.split()
    assert "0000000000000000" in lines and lines[-1] != "0"


async def test_refuses_when_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import bastion.tools.sandbox._bwrap as bw

    monkeypatch.setattr(bw, "_checked", None)
    monkeypatch.setattr(bw.shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailableError, match="Refusing to run code unsandboxed"):
        await Sandbox().run_python("print(1)")


async def test_empty_command_is_a_user_error(box: Sandbox) -> None:
    with pytest.raises(UserError):
        await box.run([])


async def test_tools_expose_schema_and_results() -> None:
    run_python, run_shell = sandbox_tools(SandboxLimits(wall_timeout=5))
    assert run_python.parameters["required"] == ["code"]
    assert run_python.trust == "untrusted"
    out = await run_python.invoke({"code": "print('hi')"})
    assert out["stdout"] == "hi\n" and out["exit_code"] == 0
    out = await run_shell.invoke({"script": "exit 4"})
    assert out["exit_code"] == 4
