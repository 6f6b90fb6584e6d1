"""`make demo` end to end: the support scenario on the real local model, through the real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.local_model, pytest.mark.sandbox]


def test_demo_scenario_runs_offline_and_the_injection_is_blocked(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run(
        [sys.executable, "-m", "bastion.cli", "--home", str(tmp_path), "demo", "--no-wait", "--port", str(port)],
        capture_output=True, text=True, timeout=1200, check=False, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    # Every scenario request produced a run, and the layers did their part.
    assert text.count("support ←") == 5 and "support-redteam ←" in text
    assert "search_kb:ok" in text and "get_order:ok" in text and "calculate:ok" in text
    # the refund over 30 EUR paused; the scripted approver approved it only if every value was the
    # customer's own words (the local model sometimes invents the amount: then it is rejected)
    assert "approval requested" in text and "demo approver" in text
    assert "approval_granted" in text or "approval_rejected" in text
    assert "interrupted" in text  # another refund waits in the approvals inbox
    assert "refund:policy_denied" in text  # the hijacked model's transfer was blocked
    assert "provenance:untrusted-value" in text and "hash chain intact: True" in text
    assert f"http://127.0.0.1:{port}/#key=" in text
