"""The escape suite: everything a hostile program might try is contained by the OS."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from bastion.errors import SandboxUnavailableError, UserError
from bastion.tools.sandbox import EgressPolicy, Sandbox, SandboxLimits, sandbox_tools

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


# -- the host's secrets, processes and descriptors stay out (issue 11, defects 3 and 4) -----------

CANARIES = {
    "OPENAI_API_KEY": "sk-canary-openai-5f1e",
    "BASTION_SECRET_CANARY": "canary-secret-9c2d",
    "BASTION_DATABASE_URL": "postgresql://bastion:canary-db-pw-77@db.internal/bastion",
}

_PROC_SCAN = """
import os
pids = sorted(p for p in os.listdir("/proc") if p.isdigit())
print("PIDS", " ".join(pids))
for pid in pids:
    for name in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                print("READ", pid, name, f.read().replace(b"\\0", b" ").decode(errors="replace"))
        except OSError as e:
            print("DENIED", pid, name, type(e).__name__)
"""


@pytest.mark.parametrize("egress", [False, True], ids=["plain", "with-egress-init"])
async def test_no_visible_process_holds_the_host_environment(monkeypatch: pytest.MonkeyPatch, egress: bool) -> None:
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    box = Sandbox(egress=EgressPolicy(["example.com"]) if egress else None)
    r = await box.run_python(_PROC_SCAN)
    assert r.exit_code == 0, r.stderr
    for value in CANARIES.values():
        assert value not in r.stdout and "canary" not in r.stdout
    # Only the program (and, with egress, its init) exists in the sandbox: no bwrap process.
    pids = r.stdout.splitlines()[0].split()[1:]
    assert pids == (["1", "2"] if egress else ["1"])
    assert "bwrap" not in r.stdout
    if egress:  # the init is non-dumpable: its environment is not even readable
        assert "DENIED 1 environ PermissionError" in r.stdout


_PTRACE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
me = os.getpid()
targets = sorted({int(p) for p in os.listdir("/proc") if p.isdigit()} - {me} | {1, HOST_PID})
for pid in targets:
    rc = libc.ptrace(PTRACE_ATTACH, pid, None, None)
    err = ctypes.get_errno()
    print("ATTACHED" if rc == 0 else "refused", pid, os.strerror(err) if rc else "")
    if rc == 0:
        libc.ptrace(PTRACE_DETACH, pid, None, None)
    try:
        with open(f"/proc/{pid}/mem", "rb") as f:
            f.read(1); print("MEM READ", pid)
    except OSError as e:
        print("mem denied", pid, type(e).__name__)
"""


@pytest.mark.parametrize("egress", [False, True], ids=["plain", "with-egress-init"])
async def test_nothing_outside_the_program_can_be_ptraced(egress: bool) -> None:
    box = Sandbox(egress=EgressPolicy(["example.com"]) if egress else None)
    # The host's own pid (this test process) must not be addressable from inside.
    r = await box.run_python(_PTRACE.replace("HOST_PID", str(os.getpid())))
    assert r.exit_code == 0, r.stderr
    assert "ATTACHED" not in r.stdout and "MEM READ" not in r.stdout, r.stdout
    assert f"refused {os.getpid()} No such process" in r.stdout
    if egress:
        assert "refused 1 Operation not permitted" in r.stdout  # the non-dumpable init


@pytest.mark.parametrize("egress", [False, True], ids=["plain", "with-egress-init"])
async def test_no_host_file_descriptor_is_inherited(tmp_path: Path, egress: bool) -> None:
    secret = tmp_path / "host.txt"
    secret.write_text("CANARY-FD")
    fd = os.open(secret, os.O_RDONLY)
    os.set_inheritable(fd, True)  # even a descriptor marked inheritable must not cross over
    try:
        box = Sandbox(egress=EgressPolicy(["example.com"]) if egress else None)
        r = await box.run_python(
            "import os\nopen_fds = []\nfor fd in range(1024):\n"
            "    try:\n        os.fstat(fd); open_fds.append(fd)\n    except OSError:\n        pass\n"
            "print(open_fds)"
        )
    finally:
        os.close(fd)
    assert r.stdout.strip() == "[0, 1, 2]", (r.stdout, r.stderr)


_FILL = """
import os
def writable_dirs():
    found = []
    for root, dirs, _ in os.walk("/"):
        if root.startswith(("/proc", "/sys")):
            dirs[:] = []
            continue
        probe = os.path.join(root, ".probe")
        try:
            with open(probe, "wb"):
                pass
            os.unlink(probe)
            found.append(root)
        except OSError:
            pass
    return found
chunk = b"x" * (256 * 1024)
for d in writable_dirs():
    written, n, why = 0, 0, ""
    while written < 512 * 1024 * 1024 and not why:
        try:
            with open(os.path.join(d, f"fill{n}"), "wb") as f:
                n += 1
                while True:
                    f.write(chunk); f.flush(); written += len(chunk)
        except OSError as e:
            # EFBIG: this file reached RLIMIT_FSIZE, so go on with the next one.
            why = "" if e.errno == 27 else ("ENOSPC" if e.errno == 28 else type(e).__name__)
    print("FILLED", d, written // (1024 * 1024), why)
"""


async def test_every_writable_path_is_bounded() -> None:
    limits = SandboxLimits(workdir_mb=6, tmp_mb=3, shm_mb=2, file_size_mb=1, wall_timeout=20)
    r = await Sandbox(limits).run_python(_FILL)
    filled = {line.split()[1]: (int(line.split()[2]), line.split()[3:]) for line in r.stdout.splitlines()}
    # Exactly the three capped tmpfs mounts are writable: not /dev, not the root, not /usr.
    assert set(filled) == {"/work", "/tmp", "/dev/shm"}, (r.stdout, r.stderr)
    caps = {"/work": 6, "/tmp": 3, "/dev/shm": 2}
    for path, (mb, why) in filled.items():
        assert why == ["ENOSPC"] and mb <= caps[path], (path, mb, why)
    # SIGXFSZ is ignored by Python, so a single file stops at the per-file cap with EFBIG.
    one = await Sandbox(limits).run_python("open('/work/one', 'wb').write(b'x' * 3 * 1024 * 1024)")
    assert "File too large" in one.stderr


async def test_kernel_memory_outside_any_mount_is_refused() -> None:
    # SysV shm/msg queues live in the IPC namespace and memfds outside every mount: before the
    # seccomp filter, attach-fill-detach held 1.2 GB of host memory with memory_mb=256.
    r = await Sandbox(SandboxLimits(memory_mb=256)).run_python(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "def show(name, rc):\n    print(name, 'OK' if rc >= 0 else os.strerror(ctypes.get_errno()))\n"
        "show('shmget', libc.shmget(0, 64 * 1024 * 1024, 0o1600))\n"
        "show('msgget', libc.msgget(0, 0o1600))\n"
        "try:\n    os.memfd_create('x'); print('memfd_create OK')\n"
        "except OSError as e:\n    print('memfd_create', e.strerror)\n"
        "rt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
        "class Attr(ctypes.Structure):\n    _fields_ = [('f', ctypes.c_long), ('m', ctypes.c_long), "
        "('s', ctypes.c_long), ('c', ctypes.c_long), ('pad', ctypes.c_long * 4)]\n"
        "show('mq_open', rt.mq_open(b'/q', os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(Attr(0, 10, 8192, 0))))\n"
    )
    assert r.stdout.splitlines() == [
        "shmget Operation not permitted",
        "msgget Operation not permitted",
        "memfd_create Operation not permitted",
        "mq_open Too many open files",  # RLIMIT_MSGQUEUE=0
    ], (r.stdout, r.stderr)


def test_seccomp_filter_only_where_syscall_numbers_are_known() -> None:
    from bastion.tools.sandbox._seccomp import filter_program

    assert filter_program("riscv64") is None
    x86, arm = filter_program("x86_64"), filter_program("aarch64")
    assert x86 is not None and arm is not None
    assert len(x86) % 8 == 0 and len(x86) == len(arm) + 8  # x86_64 also refuses the x32 ABI
