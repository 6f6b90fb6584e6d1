"""`bastion run AGENT "input"`: one run in this process, progress streamed to the terminal.

Approvals are asked for in the terminal. Without one (stdin not a TTY: CI, a pipe, cron) a run
that needs a decision stops with exit code `NEEDS_DECISION` and a message naming `--yes` and
`--no`, instead of waiting for input that never comes.
"""

from __future__ import annotations

import json
import re
import sys
from contextlib import AbstractContextManager
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.prompt import Prompt

from bastion.cli._approval import find_approval
from bastion.cli._progress import spinner
from bastion.errors import UserError
from bastion.runtime import thread_key
from bastion.server import ProjectEnv, load_project
from bastion.types import RunContext, new_sortable_id

console = Console()
err = Console(stderr=True)

NEEDS_DECISION = 3
"""Exit code of `bastion run` when an approval is needed and nobody can answer it."""

Decide = Literal["ask", "approve", "reject"]


class _NoTerminal(Exception):
    """An approval is needed, stdin is not a terminal, and neither --yes nor --no was given."""

    def __init__(self, tool: str) -> None:
        super().__init__(tool)
        self.tool = tool


def _ask(interrupt: dict[str, Any], decide: Decide) -> Any:
    payload = interrupt.get("payload") or {}
    ask = find_approval(payload) or {}
    risk = ask.get("risk")
    summary = risk.get("text") if isinstance(risk, dict) else None
    tool = str(ask.get("tool") or "a tool call")
    console.print(
        Panel(escape(summary or json.dumps(payload, indent=2, default=str)), title="approval needed", style="yellow")
    )
    if decide == "approve":
        console.print("[yellow]--yes: approved[/]")
        return {"action": "approve"}
    if decide == "reject":
        console.print("[yellow]--no: rejected[/]")
        return {"action": "reject", "reason": "rejected with --no"}
    if not sys.stdin.isatty():
        raise _NoTerminal(tool)
    try:
        choice = Prompt.ask("approve, reject or edit?", choices=["approve", "reject", "edit"], default="reject")
        if choice == "edit":
            raw = Prompt.ask("new arguments (JSON)")
            return {"action": "edit", "arguments": json.loads(raw)}
        if choice == "reject":
            return {"action": "reject", "reason": Prompt.ask("reason", default="rejected in the terminal")}
    except EOFError:  # the terminal closed mid-question (Ctrl-D)
        raise _NoTerminal(tool) from None
    return {"action": "approve"}


# The tool gateway wraps untrusted results in data markers for the model (`spotlight`); a
# person reading the terminal wants the data and the label, not the note to the model.
_SPOTLIGHT = re.compile(r"<<untrusted_data id=\w+[^>\n]*>>\n(.*)\n<<end_untrusted_data id=\w+>>", re.DOTALL)


def _unwrap(content: Any) -> tuple[str, bool]:
    text = content if isinstance(content, str) else json.dumps(content, default=str)
    found = _SPOTLIGHT.search(text)
    return (found.group(1), True) if found else (text, False)


class _Printer:
    """Prints streamed tokens as they come and remembers the text since the last tool event, so
    the final answer is not printed a second time when it was streamed already."""

    def __init__(self) -> None:
        self.streamed: list[str] = []

    async def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "token":
            text = str(data.get("text", ""))
            self.streamed.append(text)
            console.print(text, end="", style="dim", markup=False, highlight=False, soft_wrap=True)
        elif kind == "tool_call":
            self.streamed.clear()
            call = data.get("call", {})
            console.print(f"\n[cyan]→ {escape(str(call.get('name')))}[/]", end="")
            console.print(f"({json.dumps(call.get('arguments'), default=str)})", markup=False, highlight=False)
        elif kind == "tool_result":
            self.streamed.clear()
            result = data.get("result", {})
            style = "red" if result.get("is_error") else "green"
            content, untrusted = _unwrap(result.get("content"))
            console.print(f"[{style}]← {escape(str(result.get('name')))}[/]: ", end="")
            if untrusted:
                console.print("[yellow](untrusted)[/] ", end="")
            console.print(content[:200] + ("…" if len(content) > 200 else ""), markup=False, highlight=False)

    def already_shown(self, output: Any) -> bool:
        text = "".join(self.streamed).strip()
        return bool(text) and text == (output if isinstance(output, str) else str(output)).strip()


async def run(
    spec: str,
    env: ProjectEnv,
    *,
    agent: str,
    input: str,
    tenant: str,
    thread: str | None,
    approve_all: bool = False,
    reject_all: bool = False,
) -> int:
    from bastion.tracing import TraceStore, configure_tracing

    if approve_all and reject_all:
        raise UserError("pass --yes (approve every request) or --no (reject every request), not both")
    decide: Decide = "approve" if approve_all else "reject" if reject_all else "ask"
    env.home.mkdir(parents=True, exist_ok=True)
    store = TraceStore(env.home / "traces.db")
    tracing = configure_tracing(store=store)
    project = None
    try:
        # Building a project may ingest documents and load a local model: show that it is working.
        with spinner(err, "loading the project"):
            project = await load_project(spec, env)
        runnables = project.runnables()
        if agent not in runnables:
            raise UserError(f"unknown agent {agent!r}; the project has {sorted(runnables)}")
        runnable = runnables[agent]
        thread_id = thread or new_sortable_id("thread_")
        context = RunContext(tenant=tenant, session=thread_id, run_id=new_sortable_id("run_"), agent=agent)
        printer = _Printer()
        resume: Any = None
        total_cost = 0.0
        while True:
            with _model_load_progress():
                outcome = await runnable.invoke(
                    input, thread_id=thread_key(tenant, thread_id), context=context, resume=resume, emit=printer
                )
            total_cost += outcome.cost_usd
            if outcome.status == "completed":
                break
            try:
                decisions = {i.get("id", ""): _ask(i, decide) for i in outcome.interrupts}
            except _NoTerminal as e:
                err.print(
                    f"[bold red]error:[/] the run needs an approval for {escape(e.tool)}, and stdin is not a "
                    "terminal to ask on. Re-run with [bold]--yes[/] to approve or [bold]--no[/] to reject every "
                    f"approval request (thread {thread_id}, exit code {NEEDS_DECISION}).",
                    soft_wrap=True,
                )
                return NEEDS_DECISION
            printer.streamed.clear()
            resume = next(iter(decisions.values())) if len(decisions) == 1 else decisions
        if printer.already_shown(outcome.output):
            console.print()
        else:
            console.print()
            console.print(Panel(escape(str(outcome.output)), title="answer", style="bold green"))
        console.print(f"cost ${total_cost:.6f} · thread {thread_id} · trace {outcome.trace_id}", soft_wrap=True)
    finally:
        if project is not None:
            await project.close()
        tracing.force_flush(5)
        tracing.shutdown()
        store.close()
    return 0


def _model_load_progress() -> AbstractContextManager[None]:
    """While a run is going, report a local model being loaded (the first call pays for it)."""
    from bastion.cli._progress import model_load_reporter

    return model_load_reporter(err)
