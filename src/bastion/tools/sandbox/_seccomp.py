"""A seccomp filter for the sandbox: no kernel memory that no mount or rlimit bounds.

Every writable path in the sandbox is a size-capped tmpfs, but SysV shared memory and message
queues live in the IPC namespace, outside any mount: with the default `shmall` a sandbox held
1.2 GB of host memory with `memory_mb=256` (attach, fill, detach, repeat). `memfd_create` files
are bounded only by open files x `RLIMIT_FSIZE`. The filter makes these calls fail with EPERM,
and refuses every syscall of another ABI (i386 `int 0x80`, x32), whose numbers it does not check.

Classic BPF, assembled here: no libseccomp needed. bwrap installs it (`--seccomp FD`) after
setting no_new_privs, just before it executes the program.
"""

from __future__ import annotations

import errno
import platform
import struct

_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
_ALLOW = 0x7FFF0000  # SECCOMP_RET_ALLOW
_ERRNO = 0x00050000  # SECCOMP_RET_ERRNO | errno
_X32_BIT = 0x40000000

# machine -> (AUDIT_ARCH_*, syscall numbers of shmget, msgget, memfd_create)
_ARCHES: dict[str, tuple[int, tuple[int, ...]]] = {
    "x86_64": (0xC000003E, (29, 68, 319)),
    "aarch64": (0xC00000B7, (194, 186, 279)),
}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def filter_program(machine: str | None = None) -> bytes | None:
    """The compiled filter for this machine, or None where its syscall numbers are unknown."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, denied = arch
    deny = _insn(_RET_K, 0, 0, _ERRNO | errno.EPERM)
    checks = [(_JGE_K, _X32_BIT)] if _is_x86(audit_arch) else []
    checks += [(_JEQ_K, nr) for nr in denied]
    program = [
        _insn(_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(_JEQ_K, 1, 0, audit_arch),
        deny,  # another ABI: refuse everything
        _insn(_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    for i, (code, k) in enumerate(checks):
        # A match jumps over the remaining checks and the ALLOW to the final deny.
        program.append(_insn(code, len(checks) - i, 0, k))
    program += [_insn(_RET_K, 0, 0, _ALLOW), deny]
    return b"".join(program)


def _is_x86(audit_arch: int) -> bool:
    return audit_arch == _ARCHES["x86_64"][0]
