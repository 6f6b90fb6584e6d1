"""The public graph and agent API type-checks: pyright (strict) on `typing_snippet.py`, a
small program using it, must reveal the marked types and report exactly the marked errors
(a node over the wrong state, a node that returns no update, an undefined state key...)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyright")

SNIPPET = Path(__file__).with_name("typing_snippet.py")
CONFIG = {"typeCheckingMode": "strict", "pythonVersion": "3.11", "reportUnusedExpression": False}


def expected_marks() -> tuple[dict[int, str], dict[int, str]]:
    types: dict[int, str] = {}
    errors: dict[int, str] = {}
    for n, line in enumerate(SNIPPET.read_text(encoding="utf-8").splitlines(), 1):
        if m := re.search(r"# T: (.+)$", line):
            types[n] = m.group(1).strip()
        if m := re.search(r"# E: (\w+)", line):
            errors[n] = m.group(1)
    return types, errors


def test_public_api_types_under_pyright_strict(tmp_path: Path) -> None:
    shutil.copy(SNIPPET, tmp_path / SNIPPET.name)
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(CONFIG), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable, SNIPPET.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = json.loads(proc.stdout)
    revealed: dict[int, str] = {}
    errors: dict[int, set[str]] = {}
    for d in report["generalDiagnostics"]:
        line = d["range"]["start"]["line"] + 1
        if d["severity"] == "information" and (m := re.match(r'Type of ".*" is "(.*)"$', d["message"], re.S)):
            revealed[line] = m.group(1)
        elif d["severity"] == "error":
            errors.setdefault(line, set()).add(d.get("rule", d["message"]))
    want_types, want_errors = expected_marks()
    assert len(want_types) >= 10 and len(want_errors) >= 6  # the marks were read
    assert revealed == want_types
    unexpected = {n: sorted(r) for n, r in errors.items() if n not in want_errors}
    assert not unexpected, f"errors on unmarked lines: {unexpected}"
    for n, rule in want_errors.items():
        assert rule in errors.get(n, set()), f"line {n}: expected {rule}, pyright reported {errors.get(n)}"
