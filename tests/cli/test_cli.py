"""The `bastion` command, run as real subprocesses."""

from __future__ import annotations

import importlib.util
import os
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


def bastion(
    home: Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # No terminal on any stream, as in CI or a pipe; COLUMNS pins rich's width for piped output.
    return subprocess.run(
        [sys.executable, "-m", "bastion.cli", "--home", str(home), *args],
        capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "80", **(env or {})},
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


def test_run_needing_an_approval_without_a_terminal_exits_3_and_names_yes_and_no(tmp_path: Path) -> None:
    out = bastion(tmp_path, "run", "--app", PROJECT, "support", "Refund order 7")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "EOFError" not in out.stderr
    message = " ".join(out.stderr.split())
    assert "needs an approval for refund" in message and "stdin is not a terminal" in message
    assert "--yes" in message and "--no" in message and "exit code 3" in message
    assert "approval needed" in out.stdout  # what was asked is shown, so the rerun is an informed choice


def test_run_with_no_rejects_and_the_answer_is_printed_once(tmp_path: Path) -> None:
    rejected = bastion(tmp_path, "run", "--app", PROJECT, "--no", "support", "Refund order 7")
    assert rejected.returncode == 0, rejected.stderr
    assert "--no: rejected" in rejected.stdout and "approval_rejected" in rejected.stdout
    assert "refunded 25.0" not in rejected.stdout and "untrusted_data" not in rejected.stdout  # never ran
    approved = bastion(tmp_path, "run", "--app", PROJECT, "--yes", "support", "Refund order 7")
    assert approved.returncode == 0, approved.stderr
    # the tool's result without the data markers meant for the model, labelled untrusted
    assert "← refund: (untrusted) refunded 25.0 for order 7" in approved.stdout
    assert "untrusted_data" not in approved.stdout and "approval_rejected" not in approved.stdout
    # streamed token by token, then not repeated in an answer panel
    assert approved.stdout.count("Refund sent.") == 1, approved.stdout
    both = bastion(tmp_path, "run", "--app", PROJECT, "--yes", "--no", "support", "Refund order 7")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_long_operations_show_progress_on_a_terminal_only(tmp_path: Path) -> None:
    args = ("run", "--app", PROJECT, "--yes", "support", "Refund order 7")
    piped = bastion(tmp_path, *args)
    assert piped.returncode == 0 and "loading the project" not in piped.stderr + piped.stdout
    # rich draws its live display when told the output is a terminal (TTY_COMPATIBLE, rich >= 14)
    tty = bastion(tmp_path, *args, env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"})
    assert tty.returncode == 0, tty.stderr
    assert "loading the project" in tty.stderr and "\x1b[" in tty.stderr  # drawn, then erased (transient)


def _store_traces(home: Path, trace_ids: list[str]) -> None:
    from bastion.tracing import TraceStore
    from bastion.tracing._store import SpanRecord

    home.mkdir(parents=True, exist_ok=True)
    store = TraceStore(home / "traces.db")
    try:
        for i, tid in enumerate(trace_ids):
            attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support"}
            store.enqueue(SpanRecord(tid, f"{i:016x}", None, f"invoke_agent support{i}", 10**18 + i, 10**18 + i + 10**6,
                                     attributes=attrs))  # fmt: skip
        assert store.flush(10)
    finally:
        store.close()


def test_trace_list_prints_whole_ids_and_show_takes_a_unique_prefix(tmp_path: Path) -> None:
    ids = ["abc1" + "0" * 28, "abc2" + "1" * 28, "f" * 32]
    _store_traces(tmp_path, ids)
    listed = bastion(tmp_path, "trace", "list")  # COLUMNS=80: rich used to cut ids to 'abc10000…'
    assert listed.returncode == 0, listed.stderr
    for tid in ids:
        assert tid in listed.stdout
    assert "…" not in listed.stdout
    shown = bastion(tmp_path, "trace", "show", "abc2")
    assert shown.returncode == 0, shown.stderr
    assert f"trace {ids[1]}" in shown.stdout and "invoke_agent support1" in shown.stdout
    ambiguous = bastion(tmp_path, "trace", "show", "abc")
    assert ambiguous.returncode == 2
    message = " ".join(ambiguous.stderr.split())
    assert "matches 2 traces" in message and ids[0] in message and ids[1] in message
    missing = bastion(tmp_path, "trace", "show", "0123")
    assert missing.returncode == 2 and "no trace starts with '0123'" in missing.stderr
    wildcard = bastion(tmp_path, "trace", "show", "%")
    assert wildcard.returncode == 2 and "is not a trace id" in wildcard.stderr


def test_run_then_trace_show_by_run_id(tmp_path: Path) -> None:
    out = bastion(tmp_path, "run", "--app", PROJECT, "--yes", "support", "Refund order 7")
    assert out.returncode == 0, out.stderr
    listed = bastion(tmp_path, "trace", "list")
    run_id = re.search(r"run_[0-9a-f]{24}", listed.stdout)
    assert run_id, listed.stdout
    shown = bastion(tmp_path, "trace", "show", run_id.group(0))
    assert shown.returncode == 0 and "invoke_agent support" in shown.stdout


@pytest.mark.local_model
def test_local_model_run_keeps_llama_cpp_logs_off_stderr_and_shows_the_load(tmp_path: Path) -> None:
    if importlib.util.find_spec("llama_cpp") is None:  # not imported here: it leaks /dev/null handles
        pytest.skip("needs the `local` extra")
    project = f"{Path(__file__).with_name('local_project.py')}:build"
    out = bastion(tmp_path, "run", "--app", project, "echo", "Say hello.", timeout=300)
    assert out.returncode == 0, out.stderr
    # llama.cpp's C code logged e.g. "llama_kv_cache_iswa: using full-size SWA cache" to fd 2
    assert "llama" not in out.stderr and "ggml" not in out.stderr, out.stderr
    assert out.stdout.count("cost $0.000000") == 1
    tty = bastion(tmp_path, "run", "--app", project, "echo", "Say hello.", timeout=300,
                  env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"})  # fmt: skip
    assert tty.returncode == 0, tty.stderr
    assert "loading local model gemma-3-270m" in tty.stderr
    assert "llama_" not in tty.stderr


def test_bench_counts_the_benchmarks_with_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "alpha.py").write_text("print('alpha table: 42 ops/s')\n")
    (bench / "beta.py").write_text("import sys\nprint('beta table: 7 ops/s')\nsys.exit(1)\n")
    (bench / "_util.py").write_text("raise SystemExit('helpers are not benchmarks')\n")

    def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bastion.cli", "--home", str(tmp_path / "home"), "bench", "--quick"],
            capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL, cwd=tmp_path,
            env={**os.environ, "COLUMNS": "100", **env},
        )  # fmt: skip

    piped = run({})
    assert piped.returncode == 1  # the worst benchmark's exit code
    assert "alpha table: 42 ops/s" in piped.stdout and "beta table: 7 ops/s" in piped.stdout
    assert "benchmark alpha" not in piped.stdout  # no live display when piped
    tty = run({"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"})
    assert tty.returncode == 1
    assert "alpha table: 42 ops/s" in tty.stdout and "beta table: 7 ops/s" in tty.stdout
    assert "benchmark alpha" in tty.stdout and "benchmark beta" in tty.stdout and "0/2" in tty.stdout
