"""The `bastion` command, run as real subprocesses."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PROJECT = f"{Path(__file__).with_name('project.py')}:build"


def bastion(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion.cli", "--home", str(home), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_run_approves_in_the_terminal_and_trace_show_reads_it_back(tmp_path: Path) -> None:
    out = bastion(tmp_path, "run", "--app", PROJECT, "--yes", "support", "Refund order 7")
    assert out.returncode == 0, out.stderr
    assert "approval needed" in out.stdout and "refund" in out.stdout
    assert "Refund sent." in out.stdout
    trace_id = re.search(r"trace ([0-9a-f]{32})", out.stdout)
    assert trace_id, out.stdout
    shown = bastion(tmp_path, "trace", "show", trace_id.group(1))
    assert shown.returncode == 0, shown.stderr
    assert "invoke_agent support" in shown.stdout and "execute_tool refund" in shown.stdout
    listed = bastion(tmp_path, "trace", "list")
    assert trace_id.group(1)[:8] in listed.stdout


def test_run_rejects_an_unknown_agent_clearly(tmp_path: Path) -> None:
    out = bastion(tmp_path, "run", "--app", PROJECT, "ghost", "hi")
    assert out.returncode == 2 and "unknown agent 'ghost'" in out.stderr


def test_bad_project_spec_is_a_clear_error(tmp_path: Path) -> None:
    out = bastion(tmp_path, "run", "--app", "no_colon_here", "a", "b")
    assert out.returncode == 2 and "module:attr" in out.stderr


def test_keys_create_prints_a_key_once(tmp_path: Path) -> None:
    out = bastion(tmp_path, "keys", "create", "--tenant", "acme", "--role", "viewer")
    assert out.returncode == 0 and out.stdout.startswith("bsk-") and "role=viewer" in out.stderr
    assert out.stdout.strip().count("\n") == 0  # the key alone on stdout: KEY=$(bastion keys create ...)


def test_worker_requires_a_database(tmp_path: Path) -> None:
    out = bastion(tmp_path, "worker", "--app", PROJECT)
    assert out.returncode == 2 and "--database postgresql://" in out.stderr


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_doctor_reports_each_check(tmp_path: Path) -> None:
    out = bastion(tmp_path, "doctor")
    assert "sandbox" in out.stdout and "database" in out.stdout and "local model" in out.stdout
    assert out.returncode in (0, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bastion.cli", "--home", str(tmp_path), "serve", "--app", PROJECT, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        body = b""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                    body = r.read()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)  # readiness poll interval
        assert b'"agents":["support"]' in body
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/runs", headers={"Authorization": "Bearer cli-test-key"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        if proc.stderr:
            proc.stderr.close()
