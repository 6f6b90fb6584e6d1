"""A real process is SIGKILLed in the middle of a node; the thread resumes in another process
(this one) without repeating completed nodes or memoized calls."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bastion.checkpoint import SqliteCheckpointer

APP = Path(__file__).with_name("crash_app.py")
_spec = importlib.util.spec_from_file_location("crash_app", APP)
assert _spec is not None and _spec.loader is not None
crash_app = sys.modules["crash_app"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crash_app)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_mid_node_then_resume(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(APP), str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "mid-node").exists():
            if time.monotonic() > deadline:
                pytest.fail("the child never reached the middle of node 'slow'")
            try:
                proc.wait(timeout=0.02)  # bounded wait; returning means the child died early
            except subprocess.TimeoutExpired:
                continue
            out, err = proc.communicate()
            pytest.fail(f"child exited early ({proc.returncode}): {err.decode()[-2000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]

    assert sorted(crash_app.calls(tmp_path)) == ["expensive", "fast", "prepare", "slow"]

    cp = SqliteCheckpointer(tmp_path / "runs.db")
    try:
        app = crash_app.build(tmp_path, hang=False).compile(checkpointer=cp)
        snap = app.get_state("job")
        assert snap.next == ("slow",), "fast's result survived the kill as a pending write"
        out = app.invoke(None, thread_id="job")  # the sync API, in a fresh event loop
    finally:
        cp.close()
    assert out["log"] == ["prepare", "fast", "slow:paid-for result", "finish"]
    assert sorted(crash_app.calls(tmp_path)) == sorted(["prepare", "fast", "slow", "expensive", "slow", "finish"]), (
        "only the killed node re-ran, and its memoized call did not"
    )
