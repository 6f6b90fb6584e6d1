"""Code execution in a fresh bubblewrap sandbox per call.

What the OS enforces (never a Python-level filter):
- namespaces: no network (only an isolated loopback), own pid/ipc/uts/user namespaces;
- no capabilities (`--cap-drop ALL`), an unprivileged uid picked per call, a new session;
- filesystem: a read-only root with `/usr` read-only and nothing else of the host
  (no /etc, /home, /root, the project);
  a size-capped tmpfs as the work dir, destroyed with the sandbox;
- rlimits: CPU seconds, address space, processes (per-call uid, so a fork bomb only hits its own
  limit), file size, open files; plus a wall-clock timeout and an output cap enforced here.

If bubblewrap is missing or cannot create namespaces, `Sandbox.run` raises
`SandboxUnavailableError` instead of running anything unsandboxed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from bastion.errors import SandboxUnavailableError, UserError


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    wall_timeout: float = 10.0  # seconds, whole run
    cpu_seconds: int = 5
    memory_mb: int = 512  # address space
    max_processes: int = 32
    file_size_mb: int = 16
    workdir_mb: int = 64  # tmpfs size
    max_output_bytes: int = 64 * 1024  # per stream
    max_open_files: int = 128


@dataclass(frozen=True, slots=True)
class SandboxResult:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool  # output exceeded the cap and the run was killed
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.truncated


_PYTHON = "/usr/bin/python3"
_PATH = "/usr/local/bin:/usr/bin:/bin"
_checked: bool | None = None


def _tool_paths() -> tuple[str, str]:
    bwrap = shutil.which("bwrap")
    setpriv = shutil.which("setpriv")
    if not bwrap or not setpriv:
        raise SandboxUnavailableError(
            "code execution needs bubblewrap and setpriv (util-linux); install them with "
            "`apt-get install bubblewrap util-linux`. Refusing to run code unsandboxed."
        )
    return bwrap, setpriv


class Sandbox:
    """Runs one command per call in a new bubblewrap sandbox with `limits`."""

    def __init__(self, limits: SandboxLimits | None = None, *, python: str = _PYTHON) -> None:
        self.limits = limits or SandboxLimits()
        self.python = python

    # -- availability -------------------------------------------------------------------------

    @staticmethod
    def check() -> None:
        """Raise `SandboxUnavailableError` unless a trivial sandboxed command runs here."""
        global _checked
        if _checked:
            return
        bwrap, setpriv = _tool_paths()
        argv = Sandbox()._argv(bwrap, setpriv, uid=65534, command=["/usr/bin/true"])
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SandboxUnavailableError(f"bubblewrap could not start: {e}; refusing to run code") from e
        if proc.returncode != 0:
            raise SandboxUnavailableError(
                "bubblewrap cannot create its namespaces on this machine "
                f"({proc.stderr.decode(errors='replace').strip()}); enable unprivileged user "
                "namespaces (sysctl kernel.unprivileged_userns_clone=1). Refusing to run code unsandboxed."
            )
        _checked = True

    @staticmethod
    def available() -> bool:
        try:
            Sandbox.check()
        except SandboxUnavailableError:
            return False
        return True

    # -- running ------------------------------------------------------------------------------

    def _argv(self, bwrap: str, setpriv: str, *, uid: int, command: list[str]) -> list[str]:
        lim = self.limits
        return [
            setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            bwrap,
            "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(lim.workdir_mb * 1024 * 1024), "--tmpfs", "/work",
            "--size", str(8 * 1024 * 1024), "--tmpfs", "/tmp",
            "--remount-ro", "/",
            "--chdir", "/work", "--clearenv",
            "--setenv", "PATH", _PATH, "--setenv", "HOME", "/work", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--", *command,
        ]  # fmt: skip

    def _set_limits(self) -> None:
        # Runs in the child between fork and exec: inherited by setpriv, bwrap and the payload.
        lim = self.limits
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_mb * mb, lim.memory_mb * mb))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim.max_processes, lim.max_processes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_size_mb * mb, lim.file_size_mb * mb))
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim.max_open_files, lim.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    async def run(self, command: list[str], *, stdin: str | None = None) -> SandboxResult:
        """Run `command` inside a fresh sandbox; the sandbox is gone when this returns."""
        if not command:
            raise UserError("Sandbox.run needs a command, e.g. ['/usr/bin/python3', '-c', 'print(1)']")
        Sandbox.check()
        bwrap, setpriv = _tool_paths()
        # A fresh unprivileged uid per call: RLIMIT_NPROC counts per uid, so concurrent
        # sandboxes cannot exhaust each other's process budget.
        uid = random.randint(200_000, 1_000_000)
        argv = self._argv(bwrap, setpriv, uid=uid, command=command)
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=self._set_limits,
            start_new_session=True,
        )
        cap = self.limits.max_output_bytes
        truncated = False

        async def read(stream: asyncio.StreamReader | None) -> bytes:
            nonlocal truncated
            if stream is None:
                return b""
            buf = bytearray()
            while chunk := await stream.read(65536):
                room = cap - len(buf)
                buf += chunk[:room]
                if len(chunk) > room and not truncated:
                    truncated = True
                    _kill(proc, uid)
                # Keep draining to EOF after the cap: a writer blocked on a full pipe would
                # otherwise keep the other stream (and this run) open.
            return bytes(buf)

        async def feed() -> None:
            if stdin is not None and proc.stdin is not None:
                try:
                    proc.stdin.write(stdin.encode())
                    await proc.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    proc.stdin.close()

        timed_out = False
        # One task owns the pipes: on timeout we kill the sandbox and let the same task drain
        # to EOF, so no transport is left open.
        pipes = asyncio.gather(read(proc.stdout), read(proc.stderr), feed(), proc.wait())
        task = asyncio.ensure_future(pipes)
        done, _ = await asyncio.wait({task}, timeout=self.limits.wall_timeout)
        if not done:
            timed_out = True
            _kill(proc, uid)
        out, err, _, _ = await task
        code = proc.returncode if proc.returncode is not None else -9
        return SandboxResult(
            exit_code=code,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            timed_out=timed_out,
            truncated=truncated,
            duration_s=time.perf_counter() - started,
        )

    async def run_python(self, code: str) -> SandboxResult:
        """Run Python source (sent on stdin, so its size is not bounded by argv limits)."""
        return await self.run([self.python, "-I", "-"], stdin=code)

    async def run_shell(self, script: str) -> SandboxResult:
        return await self.run(["/bin/sh", "-s"], stdin=script)


def _kill(proc: asyncio.subprocess.Process, uid: int) -> None:
    """Kill the whole sandbox: the process group of bwrap, and every process running as the
    sandbox's own uid (unique per call), so nothing it forked can keep a pipe open."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as f:
                real_uid = next((line.split()[1] for line in f if line.startswith("Uid:")), None)
            if real_uid == str(uid):
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError):
            continue  # gone already, or not ours to read
