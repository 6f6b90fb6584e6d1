"""An MCP server that does not come up gives one clear error naming it, within a bound; a
server installed in another virtualenv runs sandboxed without `sandbox_paths`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from bastion.errors import ConfigError, ToolError
from bastion.tools.mcp import MCPServerConfig, MCPToolset
from bastion.tools.mcp._paths import server_paths

SERVER = str(Path(__file__).with_name("server_demo.py"))
SECRET = "sk-proj-" + "q" * 30


async def _start(config: MCPServerConfig, tmp_path: Path) -> None:
    await _start_all([config], tmp_path)


async def _start_all(configs: list[MCPServerConfig], tmp_path: Path) -> None:
    async with MCPToolset(configs, lock=tmp_path / "l", trust_on_first_use=True):
        raise AssertionError("a failing server was expected")


async def test_missing_command_is_a_config_error_naming_the_server(tmp_path: Path) -> None:
    config = MCPServerConfig("ghost", command=[str(tmp_path / "no-such-server")])
    with pytest.raises(ConfigError) as info:
        await _start(config, tmp_path)
    message = str(info.value)
    assert "MCP server 'ghost'" in message and "was not found" in message and "command=" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_server_that_exits_names_it_and_quotes_its_stderr_redacted(tmp_path: Path) -> None:
    crash = "import os, sys; print('token', os.environ['TOKEN'], 'key', sys.argv[1], file=sys.stderr); sys.exit(3)"
    env = {"TOKEN": "hunter2-internal"}
    config = MCPServerConfig("crashy", command=[sys.executable, "-c", crash, SECRET], env=env)
    started = time.monotonic()
    with pytest.raises(ToolError) as info:
        await _start(config, tmp_path)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert info.value.tool == "crashy" and "MCP server 'crashy'" in message
    assert "exited or closed its output before the handshake" in message
    assert "Last lines of its stderr:\ntoken [REDACTED] key [REDACTED]" in message
    assert SECRET not in message and "hunter2-internal" not in message
    assert "TaskGroup" not in message and info.value.__cause__ is None


async def test_server_that_hangs_in_the_handshake_times_out_naming_it(tmp_path: Path) -> None:
    hang = "import sys, time; print('starting up', file=sys.stderr, flush=True); time.sleep(60)"
    config = MCPServerConfig("stuck", command=[sys.executable, "-c", hang], startup_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ToolError) as info:
        await _start(config, tmp_path)
    assert time.monotonic() - started < 10  # 1 s handshake bound + the transport's bounded shutdown
    message = str(info.value)
    assert "MCP server 'stuck'" in message and "within 1s" in message and "startup_timeout=" in message
    assert message.endswith("Last lines of its stderr:\nstarting up")


async def test_a_failed_server_does_not_leave_the_others_running(tmp_path: Path) -> None:
    pidfile = tmp_path / "good.pid"
    good = MCPServerConfig("good", command=[sys.executable, SERVER], env={"DEMO_PIDFILE": str(pidfile)})
    bad = MCPServerConfig("bad", command=[sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(ToolError, match="MCP server 'bad'"):
        await _start_all([good, bad], tmp_path)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped when the toolset unwound


def _other_venv(tmp_path: Path) -> Path:
    """A fresh virtualenv with nothing installed; a .pth file lends it this project's packages
    (mcp), as a server's own venv would have them installed."""
    venv = tmp_path / "server-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    Path(site, "lend.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.sandbox
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
async def test_server_in_another_venv_runs_sandboxed_without_sandbox_paths(tmp_path: Path) -> None:
    python = _other_venv(tmp_path)
    command = [str(python), SERVER]
    found = await server_paths(command)
    venv = str(python.parent.parent)
    assert venv in found and sysconfig.get_paths()["purelib"] in found  # from the .pth, found by asking
    config = MCPServerConfig("boxed", command=command, sandbox=True, env={"DEMO_WHERE": "1"})
    async with MCPToolset([config], lock=tmp_path / "l", trust_on_first_use=True) as ts:
        tools = {t.name: t for t in ts.tools}
        assert await tools["boxed.where"].invoke({}) == {"result": venv}
        assert await tools["boxed.probe"].invoke({}) == {"result": "network:blocked,home:hidden"}
