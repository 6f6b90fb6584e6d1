"""Attacks run against the assembled system: a real `bastion serve` subprocess per test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).parent
APP = f"{HERE / 'apps.py'}:build"
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    """A running `bastion serve` subprocess; its combined output goes to a file under `home`."""

    url: str
    home: Path
    proc: subprocess.Popen[bytes]
    database: str | None
    log_path: Path
    argv: list[str] = field(default_factory=list)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)


def _wait_healthy(served: Served, deadline: float) -> None:
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            raise RuntimeError(f"bastion serve exited with {served.proc.returncode}:\n{served.output()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{served.url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)  # polling a real process's port: bounded by the deadline above
    served.kill()
    raise RuntimeError(f"bastion serve did not become healthy in {START_TIMEOUT_S}s:\n{served.output()[-4000:]}")


ServerFactory = Callable[..., Served]


@pytest.fixture
def bastion_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """`bastion_server(app=APP, database=None, workers=1, env=None, args=[], home=None) -> Served`.

    Several servers may be started in one test (e.g. a restart on the same `home`); all are
    stopped at the end."""
    started: list[Served] = []

    def start(
        app: str = APP,
        *,
        database: str | None = None,
        workers: int = 1,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        home: Path | None = None,
    ) -> Served:
        home = home or tmp_path / f"home{len(started)}"
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        argv = [sys.executable, "-m", "bastion.cli", "--home", str(home), "serve", "--app", app]
        argv += ["--port", str(port), "--workers", str(workers)]
        if database:
            argv += ["--database", database]
        argv += args or []
        log_path = home / f"serve-{len(started)}.log"
        proc_env = {**os.environ, "BASTION_CACHE_ENABLED": "false", **(env or {})}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=proc_env, cwd=tmp_path)
        served = Served(f"http://127.0.0.1:{port}", home, proc, database, log_path, argv)
        started.append(served)
        _wait_healthy(served, time.monotonic() + START_TIMEOUT_S)
        return served

    yield start
    for served in started:
        served.stop()
