"""Init process of a sandbox with egress: a loopback proxy port that leads to the host's proxy.

Runs INSIDE the sandbox as pid 1, started as `python3 -I -S -c <this source> SOCKET PORT CMD...`.
The sandbox has its own network namespace (no route out), so ordinary clients that honour
`HTTP_PROXY=http://127.0.0.1:PORT` connect here and every byte is copied to the host-side
`EgressProxy` over the bind-mounted unix socket, which decides what may leave.

It makes itself non-dumpable first: the sandboxed program runs as the same uid, and must not be
able to ptrace this process or read its memory. Standard library only (no site, no Bastion),
and only its C modules where it can (`_socket`, `_thread`): `socket` and `threading` cost 8 ms
of startup, paid on every sandboxed call with egress.
"""

import _socket
import _thread
import ctypes
import os
import sys

_PR_SET_DUMPABLE = 4


def _pump(src: _socket.socket, dst: _socket.socket, done: _thread.LockType | None) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        # Half-close so the other direction can still finish (HTTP/1.0 bodies end at EOF).
        try:
            dst.shutdown(_socket.SHUT_WR)
        except OSError:
            pass
        if done is not None:
            done.release()


def _bridge(client: _socket.socket, path: str) -> None:
    upstream = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return
    back_done = _thread.allocate_lock()
    back_done.acquire()
    _thread.start_new_thread(_pump, (upstream, client, back_done))
    _pump(client, upstream, None)
    back_done.acquire()  # the other direction has finished too
    client.close()
    upstream.close()


def _serve(listener: _socket.socket, path: str) -> None:
    while True:
        fd, _ = listener._accept()  # pyright: ignore[reportAttributeAccessIssue, reportUnknownVariableType]
        client = _socket.socket(fileno=fd)  # pyright: ignore[reportUnknownArgumentType]
        _thread.start_new_thread(_bridge, (client, path))


def main() -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        sys.exit("sandbox init: prctl(PR_SET_DUMPABLE) failed; refusing to run")
    path, port, command = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    # Fork before any thread exists; the listener is not inheritable, so exec closes it.
    child = os.fork()
    if child == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    _thread.start_new_thread(_serve, (listener, path))
    # As pid 1 this process must reap every orphan; the sandbox ends when the program does.
    while True:
        pid, status = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
