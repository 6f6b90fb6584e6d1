"""A real process is SIGKILLed while a tool runs; a new process resumes the thread from the
SQLite file without repeating the model call or the tool call that had completed."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path

    from bastion.checkpoint import SqliteCheckpointer
    from bastion.graph.agent import Agent
    from bastion.testing import DirectToolExecutor, ScriptedModel
    from bastion.tools import tool
    from bastion.types import ToolCall

    work = Path(sys.argv[1])

    @tool
    def search(query: str) -> str:
        with open(work / "search.log", "a") as f:
            f.write(query + "\\n")
        return "found " + query

    @tool
    async def archive(item: str) -> str:
        print("ARCHIVING", flush=True)  # the parent kills us now
        await asyncio.Event().wait()
        return "unreachable"

    async def main():
        model = ScriptedModel([
            ToolCall("search", {"query": "q"}, id="s1"),
            ToolCall("archive", {"item": "x"}, id="a1"),  # a later step: search is checkpointed
            "never reached in this process",
        ])
        saver = SqliteCheckpointer(str(work / "runs.db"))
        agent = Agent(model, tools=[search, archive], tool_executor=DirectToolExecutor(), checkpointer=saver)
        await agent.run("search and archive", thread_id="killed")

    asyncio.run(main())
    """
)


def wait_for_line(proc: subprocess.Popen[str], expected: str, timeout: float) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise AssertionError(f"child did not print {expected!r} within {timeout} s")
    line = proc.stdout.readline()
    assert line.strip() == expected, line


def run_child_until_killed(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_line(proc, "ARCHIVING", timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "search.log").read_text() == "q\n"


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
async def test_sigkilled_run_resumes_without_repeating_completed_calls(tmp_path: Path) -> None:
    from bastion.checkpoint import SqliteCheckpointer
    from bastion.graph.agent import Agent
    from bastion.testing import DirectToolExecutor, ScriptedModel
    from bastion.tools import tool

    run_child_until_killed(tmp_path)

    archived: list[str] = []

    @tool
    def search(query: str) -> str:
        raise AssertionError("search completed before the crash and must not run again")

    @tool
    def archive(item: str) -> str:
        archived.append(item)
        return "archived " + item

    model = ScriptedModel(["Searched and archived."])  # only the turn that had not happened yet
    saver = SqliteCheckpointer(str(tmp_path / "runs.db"))
    agent = Agent(model, tools=[search, archive], tool_executor=DirectToolExecutor(), checkpointer=saver)
    try:
        done = await agent.resume(thread_id="killed")
    finally:
        await saver.aclose()
    assert done.output == "Searched and archived."
    assert archived == ["x"] and len(model.requests) == 1
    results = {r.tool_call_id: r.content for m in model.requests[0].messages for r in m.tool_results}
    assert results == {"s1": "found q", "a1": "archived x"}
    assert (tmp_path / "search.log").read_text() == "q\n"


WINDOW_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path

    from bastion.checkpoint import SqliteCheckpointer
    from bastion.graph.agent import Agent
    from bastion.testing import DirectToolExecutor, ScriptedModel
    from bastion.tools import tool
    from bastion.types import ToolCall

    work, die_after = Path(sys.argv[1]), sys.argv[2]

    class DieAfterJournal(SqliteCheckpointer):
        # Dies right after a memoized call is journalled, before the engine records that its
        # task finished: the window in which only the journal prevents a repeat.
        async def put_journal(self, entry):
            await super().put_journal(entry)
            if die_after in entry.key:
                os.kill(os.getpid(), signal.SIGKILL)

    @tool
    def search(query: str) -> str:
        with open(work / "search.log", "a") as f:
            f.write(query + "\\n")
        return "found " + query

    async def main():
        model = ScriptedModel([ToolCall("search", {"query": "q"}, id="s1"), "too late"])
        saver = DieAfterJournal(str(work / "runs.db"))
        agent = Agent(model, tools=[search], tool_executor=DirectToolExecutor(), checkpointer=saver)
        await agent.run("search", thread_id="window")

    asyncio.run(main())
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
@pytest.mark.parametrize("die_after", [":model:", ":tool:s1"])
async def test_a_call_journalled_just_before_a_crash_is_not_repeated(tmp_path: Path, die_after: str) -> None:
    from bastion.checkpoint import SqliteCheckpointer
    from bastion.graph.agent import Agent
    from bastion.testing import DirectToolExecutor, ScriptedModel
    from bastion.tools import tool

    run_child_to_death(WINDOW_CHILD, tmp_path, die_after)
    searched_before = (tmp_path / "search.log").read_text() if (tmp_path / "search.log").exists() else ""

    @tool
    def search(query: str) -> str:
        with open(tmp_path / "search.log", "a") as f:
            f.write(query + "\n")
        return "found " + query

    model = ScriptedModel(["Found it."])  # the first turn was journalled by the dead process
    saver = SqliteCheckpointer(str(tmp_path / "runs.db"))
    agent = Agent(model, tools=[search], tool_executor=DirectToolExecutor(), checkpointer=saver)
    try:
        done = await agent.resume(thread_id="window")
    finally:
        await saver.aclose()
    assert done.output == "Found it." and len(model.requests) == 1
    assert (tmp_path / "search.log").read_text() == "q\n"
    assert searched_before == ("q\n" if die_after == ":tool:s1" else "")


def run_child_to_death(code: str, tmp_path: Path, *args: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
