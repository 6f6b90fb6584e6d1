"""Code execution in a fresh bubblewrap sandbox per call.

What the OS enforces (never a Python-level filter):
- namespaces: no network (only an isolated loopback), own pid/ipc/uts/user namespaces;
- no capabilities (`--cap-drop ALL`), an unprivileged uid picked per call, a new session;
- nothing of the host's environment: bubblewrap itself starts with an empty environment (its
  pid-1 reaper would otherwise keep the parent's, readable in `/proc/1/environ`), and the program
  runs as pid 1 (`--as-pid-1`), so no other process is visible, let alone ptraceable; with
  egress the init is our forwarder, which makes itself non-dumpable;
- no inherited file descriptors beyond stdin/stdout/stderr;
- filesystem: a read-only root with `/usr` read-only and nothing else of the host
  (no /etc, /home, /root, the project); `/dev` read-only (device nodes only);
  every writable place is a size-capped tmpfs (`/work`, `/tmp`, `/dev/shm`), destroyed with the sandbox;
- rlimits: CPU seconds, address space, processes (per-call uid, so a fork bomb only hits its own
  limit), file size, open files, POSIX message queues; plus a wall-clock timeout and an output
  cap enforced here;
- optional egress: an `EgressPolicy` allowlist served by a host-side proxy (`_egress.py`).

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
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import SandboxUnavailableError, UserError
from bastion.tools.sandbox._egress import PROXY_PORT, SOCKET_IN_SANDBOX, EgressPolicy, EgressProxy, sandbox_env
from bastion.tools.sandbox._seccomp import filter_program


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    wall_timeout: float = 10.0  # seconds, whole run
    cpu_seconds: int = 5
    memory_mb: int = 512  # address space
    max_processes: int = 32
    file_size_mb: int = 16
    workdir_mb: int = 64  # tmpfs size of /work
    tmp_mb: int = 8  # tmpfs size of /tmp
    shm_mb: int = 8  # tmpfs size of /dev/shm
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
_MB = 1024 * 1024
_checked: bool | None = None
_FORWARDER = (Path(__file__).parent / "_forwarder.py").read_text()


def egress_args(socket_path: str, python: str = _PYTHON) -> tuple[list[str], list[str]]:
    """bwrap options and a command prefix that give a sandbox the egress proxy at `socket_path`.

    The prefix runs `_forwarder.py` as the sandbox's init; it needs `--as-pid-1` and a python
    readable inside the sandbox."""
    options = ["--ro-bind", socket_path, SOCKET_IN_SANDBOX]
    for name, value in sandbox_env().items():
        options += ["--setenv", name, value]
    prefix = [python, "-I", "-S", "-c", _FORWARDER, SOCKET_IN_SANDBOX, str(PROXY_PORT)]
    return options, prefix


@contextlib.contextmanager
def _seccomp_fd() -> Generator[int | None]:
    """A pipe holding the compiled seccomp filter, for bwrap's `--seccomp FD` (it reads it once)."""
    program = filter_program()
    if program is None:
        yield None
        return
    read, write = os.pipe()
    try:
        os.write(write, program)  # a few dozen bytes: never blocks on the pipe buffer
    finally:
        # Closed exactly once: with concurrent sandboxes a second close could hit a reused number.
        os.close(write)
    try:
        yield read
    finally:
        os.close(read)


def writable_mounts(limits: SandboxLimits) -> list[str]:
    """bwrap options for the only writable places: size-capped tmpfs mounts, and a read-only /dev.

    bwrap's `--dev` is a tmpfs sized at half the host's RAM; it is remounted read-only (the
    device nodes are separate bind mounts and stay usable) and /dev/shm gets its own capped tmpfs."""
    return [
        "--dev", "/dev",
        "--size", str(limits.shm_mb * _MB), "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",
        "--size", str(limits.workdir_mb * _MB), "--tmpfs", "/work",
        "--size", str(limits.tmp_mb * _MB), "--tmpfs", "/tmp",
    ]  # fmt: skip


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
    """Runs one command per call in a new bubblewrap sandbox with `limits`.

    Without `egress` the sandbox has no network at all; with an `EgressPolicy`, HTTP(S) to its
    allowlisted hosts goes through a host-side proxy started for each call (`_egress.py`)."""

    def __init__(
        self, limits: SandboxLimits | None = None, *, python: str = _PYTHON, egress: EgressPolicy | None = None
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.python = python
        self.egress = egress

    # -- availability -------------------------------------------------------------------------

    @staticmethod
    def check() -> None:
        """Raise `SandboxUnavailableError` unless a trivial sandboxed command runs here."""
        global _checked
        if _checked:
            return
        bwrap, setpriv = _tool_paths()
        try:
            with _seccomp_fd() as seccomp:
                argv = Sandbox()._argv(bwrap, setpriv, uid=65534, command=["/usr/bin/true"], seccomp_fd=seccomp)
                proc = subprocess.run(
                    argv, capture_output=True, timeout=10, check=False, env={}, pass_fds=_fds(seccomp)
                )
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

    def _argv(
        self,
        bwrap: str,
        setpriv: str,
        *,
        uid: int,
        command: list[str],
        egress_socket: str | None = None,
        seccomp_fd: int | None = None,
    ) -> list[str]:
        options, prefix = egress_args(egress_socket, _PYTHON) if egress_socket else ([], [])
        if seccomp_fd is not None:
            options += ["--seccomp", str(seccomp_fd)]
        return [
            setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            bwrap,
            "--unshare-all", "--die-with-parent", "--new-session", "--as-pid-1", "--cap-drop", "ALL",
            "--clearenv",  # before any --setenv: bwrap applies them in order
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--proc", "/proc", *writable_mounts(self.limits),
            *options,
            "--remount-ro", "/",
            "--chdir", "/work",
            "--setenv", "PATH", _PATH, "--setenv", "HOME", "/work", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--", *prefix, *command,
        ]  # fmt: skip

    def _set_limits(self) -> None:
        # Runs in the child between fork and exec: inherited by setpriv, bwrap and the payload.
        lim = self.limits
        resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_mb * _MB, lim.memory_mb * _MB))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim.max_processes, lim.max_processes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_size_mb * _MB, lim.file_size_mb * _MB))
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim.max_open_files, lim.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # POSIX message queues live in kernel memory outside any mount: none at all.
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))

    async def run(self, command: list[str], *, stdin: str | None = None, tool: str = "sandbox") -> SandboxResult:
        """Run `command` inside a fresh sandbox; the sandbox is gone when this returns.

        `tool` names the caller in egress audit events."""
        if not command:
            raise UserError("Sandbox.run needs a command, e.g. ['/usr/bin/python3', '-c', 'print(1)']")
        Sandbox.check()
        async with self._egress(tool) as egress_socket:
            return await self._run(command, stdin=stdin, egress_socket=egress_socket)

    @contextlib.asynccontextmanager
    async def _egress(self, tool: str) -> AsyncGenerator[str | None]:
        if self.egress is None:
            yield None
            return
        async with EgressProxy(self.egress, tool=tool) as proxy:
            yield proxy.socket_path

    async def _run(self, command: list[str], *, stdin: str | None, egress_socket: str | None) -> SandboxResult:
        bwrap, setpriv = _tool_paths()
        # A fresh unprivileged uid per call: RLIMIT_NPROC counts per uid, so concurrent
        # sandboxes cannot exhaust each other's process budget.
        uid = random.randint(200_000, 1_000_000)
        started = time.perf_counter()
        with _seccomp_fd() as seccomp:
            argv = self._argv(bwrap, setpriv, uid=uid, command=command, egress_socket=egress_socket, seccomp_fd=seccomp)
            proc = await self._spawn(argv, stdin=stdin, seccomp=seccomp)
        return await self._collect(proc, uid, stdin=stdin, started=started)

    async def _spawn(self, argv: list[str], *, stdin: str | None, seccomp: int | None) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=self._set_limits,
            start_new_session=True,
            # An empty environment for setpriv and bwrap themselves: bwrap's --clearenv only
            # cleans the program's, and any process visible in the sandbox must hold none of ours.
            env={},
            close_fds=True,
            pass_fds=_fds(seccomp),
        )

    async def _collect(
        self, proc: asyncio.subprocess.Process, uid: int, *, stdin: str | None, started: float
    ) -> SandboxResult:
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

    async def run_python(self, code: str, *, tool: str = "run_python") -> SandboxResult:
        """Run Python source (sent on stdin, so its size is not bounded by argv limits)."""
        return await self.run([self.python, "-I", "-"], stdin=code, tool=tool)

    async def run_shell(self, script: str, *, tool: str = "run_shell") -> SandboxResult:
        return await self.run(["/bin/sh", "-s"], stdin=script, tool=tool)


def _fds(fd: int | None) -> tuple[int, ...]:
    return () if fd is None else (fd,)


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
