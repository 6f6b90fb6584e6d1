"""`run_python` / `run_shell` as tools, each call in a fresh sandbox."""

from __future__ import annotations

from typing import Any

from bastion.tools._tool import Tool, tool
from bastion.tools.sandbox._bwrap import Sandbox, SandboxLimits, SandboxResult
from bastion.tools.sandbox._egress import EgressPolicy


def _as_content(result: SandboxResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "timed_out": result.timed_out,
        "output_truncated": result.truncated,
    }


def sandbox_tools(limits: SandboxLimits | None = None, *, egress: EgressPolicy | None = None) -> list[Tool]:
    """Two tools whose code runs in a new bubblewrap sandbox per call (no network, no host files).

    Results are untrusted (the code may print anything). The tools refuse to run at all when
    the OS cannot enforce the sandbox. With `egress`, HTTP(S) to the allowlisted hosts only goes
    through a host-side proxy (`HTTP_PROXY`/`HTTPS_PROXY` are set inside), each attempt audited.
    """
    box = Sandbox(limits, egress=egress)

    @tool(side_effect="none", idempotent=False, timeout=box.limits.wall_timeout + 5)
    async def run_python(code: str) -> dict[str, Any]:
        """Run a Python 3 program in an isolated sandbox (no network, no files from the host,
        standard library only) and return its exit code, stdout and stderr.

        Args:
            code: the complete program; print what you want to see.
        """
        return _as_content(await box.run_python(code))

    @tool(side_effect="none", idempotent=False, timeout=box.limits.wall_timeout + 5)
    async def run_shell(script: str) -> dict[str, Any]:
        """Run a POSIX shell script in an isolated sandbox (no network, no files from the host)
        and return its exit code, stdout and stderr.

        Args:
            script: the shell commands to run.
        """
        return _as_content(await box.run_shell(script))

    return [run_python, run_shell]
