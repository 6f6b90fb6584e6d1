"""The README is followed word for word: the commands it documents run as written, and every
test it names as the check of a security claim exists."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def documented(prefix: str) -> list[str]:
    """The README's command lines starting with `prefix`, without their trailing comments."""
    out = []
    for line in README.splitlines():
        if line.startswith(prefix):
            out.append(line.split("  #", 1)[0].strip())
    assert out, f"the README documents no `{prefix}` command any more; update this test"
    return out


def bastion(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BASTION_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "bastion.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_key_commands_work_as_documented(tmp_path: Path) -> None:
    (create,) = documented("bastion keys create")
    (listing,) = documented("bastion keys list")
    (revoke,) = documented("bastion keys revoke")
    made = bastion(shlex.split(create)[1:], tmp_path)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("bsk-") and "\n" not in key  # only the key on stdout: KEY=$(bastion keys create ...)
    listed = bastion(shlex.split(listing)[1:], tmp_path)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if " acme " in line]
    key_id = row.split()[0]
    assert "operator" in row and "active" in row
    assert revoke.endswith(" <key id>"), "the documented revoke command takes a key id"
    args = [*shlex.split(revoke.removesuffix(" <key id>"))[1:], key_id]
    revoked = bastion(args, tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    again = bastion(shlex.split(listing)[1:], tmp_path).stdout
    assert not any(key_id in line and "active" in line for line in again.splitlines()), again


def test_audit_verify_fails_loudly_without_a_log(tmp_path: Path) -> None:
    (verify,) = documented("bastion audit verify")
    result = bastion(shlex.split(verify)[1:], tmp_path)
    assert result.returncode == 1 and "no audit log" in result.stdout + result.stderr


def test_every_test_named_by_the_threat_model_exists() -> None:
    section = README[README.index("## Security: threat model") : README.index("## Benchmarks")]
    named = set(re.findall(r"`((?:tests/[\w/]+/)?test_\w+\.py)(?:::(\w+))?`", section))
    assert len(named) >= 15
    for path, function in named:
        file = ROOT / path if path.startswith("tests/") else ROOT / "tests" / "adversarial" / path
        assert file.exists(), f"the README names {path}, which does not exist"
        if function:
            assert re.search(rf"def {function}\(", file.read_text()), f"{path} has no test {function}"


@pytest.mark.slow
@pytest.mark.local_model
def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    block = README[README.index("```python\n", README.index("## Quick start")) + len("```python\n") :]
    code = block[: block.index("```")]
    script = tmp_path / "quick_start.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "BASTION_HOME": str(tmp_path / ".bastion")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Usage(" in result.stdout or "input_tokens" in result.stdout, result.stdout
