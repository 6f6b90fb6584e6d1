"""The documented CI example (docs/observability.md, "CI gate on pass^k ...") run word for word:
production runs on a real `bastion serve` are promoted through the API, the dataset is exported
with curl, and `bastion eval` (a subprocess) gates on pass^k."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "observability.md"
EXAMPLE = Path(__file__).parent / "ci_example"
KEY = "key-support-op"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the documented commands use curl")


def _section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("### CI gate on pass^k")
    end = text.index("\n## ", start)
    return text[start:end]


def _blocks(section: str, fence: str) -> list[str]:
    found = re.findall(rf"^( *)```{re.escape(fence)}\n(.*?)^\1```", section, re.S | re.M)
    return [textwrap.dedent("".join(f"{indent}{line}" for line in body.splitlines(True))) for indent, body in found]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None)
    request.add_header("Authorization", f"Bearer {KEY}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "BASTION_CAPTURE_CONTENT": "1",
        "BASTION_CACHE_ENABLED": "false",
        "SUPPORT_AGENT_VERSION": "1",  # production runs the buggy release
    }
    argv = [sys.executable, "-m", "bastion.cli", "--home", str(tmp_path / "home"), "serve"]
    argv += ["--app", f"{EXAMPLE / 'support_app.py'}:build", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bastion serve did not come up:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)  # polling a real process's port, bounded by the deadline
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def test_the_documented_ci_job_gates_on_pass_hat_k_from_promoted_traces(server: str, tmp_path: Path) -> None:
    section = _section()
    promote, ci_job = _blocks(section, "bash")
    [suite_file] = _blocks(section, "python file=ci/support_suite.py")

    good = _api(f"{server}/v1/runs", "POST", {"agent": "support", "input": "Where is order A7?", "wait": True})
    failed = _api(f"{server}/v1/runs", "POST", {"agent": "support", "input": "Refund order B9", "wait": True})
    assert (good["status"], failed["status"]) == ("completed", "failed")

    work = tmp_path / "repo"
    (work / "ci").mkdir(parents=True)
    (work / "ci" / "support_suite.py").write_text(suite_file)
    env = {k: v for k, v in os.environ.items() if k != "SUPPORT_AGENT_VERSION"}
    env |= {
        "BASTION_URL": server,
        "BASTION_API_KEY": KEY,
        "FAILED_RUN_ID": failed["id"],
        "GOOD_RUN_ID": good["id"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `bastion` of this venv
        "PYTHONPATH": f"{EXAMPLE}{os.pathsep}{env.get('PYTHONPATH', '')}",  # `support_app`
    }

    step1 = _bash(promote, work, env)
    assert step1.returncode == 0, step1.stderr
    cases = _api(f"{server}/v1/evals/datasets/support")["cases"]
    assert [c["input"] for c in cases] == ["Refund order B9", "Where is order A7?"]
    assert "tool_calls" not in cases[0]["expected"]  # a mixed dataset: item 7 of issue 16
    assert cases[1]["expected"]["tool_calls"] == [{"name": "lookup_order", "arguments": {"order_id": "A7"}}]

    # the fixed release passes the gate
    fixed = _bash(ci_job, work, env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "gate: PASS" in fixed.stdout
    assert "trajectory_strict: not applicable to 5 attempt(s)" in fixed.stdout
    summary = json.loads((work / "report.json").read_text())["summary"]
    assert (summary["cases"], summary["n"], summary["k"], summary["pass_hat_k"]) == (2, 5, 3, 1.0)
    assert summary["not_applicable"] == {"trajectory_strict": 5}

    # the release that crashed in production still does: the same job fails the build
    broken = _bash(ci_job, work, {**env, "SUPPORT_AGENT_VERSION": "1"})
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "gate: FAIL: pass^k 0.500 is below the minimum 0.800" in broken.stderr
