"""`bastion run AGENT "input"`: one run in this process, progress streamed to the terminal."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.prompt import Prompt

from bastion.cli._approval import find_approval
from bastion.errors import UserError
from bastion.runtime import thread_key
from bastion.server._project import ProjectEnv, load_project
from bastion.types import RunContext, new_id

console = Console()


def _ask(interrupt: dict[str, Any], approve_all: bool) -> Any:
    payload = interrupt.get("payload") or {}
    ask = find_approval(payload) or {}
    risk = ask.get("risk")
    summary = risk.get("text") if isinstance(risk, dict) else None
    console.print(Panel(summary or json.dumps(payload, indent=2, default=str), title="approval needed", style="yellow"))
    if approve_all:
        console.print("[yellow]--yes: approved[/]")
        return {"action": "approve"}
    choice = Prompt.ask("approve, reject or edit?", choices=["approve", "reject", "edit"], default="reject")
    if choice == "edit":
        raw = Prompt.ask("new arguments (JSON)")
        return {"action": "edit", "arguments": json.loads(raw)}
    if choice == "reject":
        return {"action": "reject", "reason": Prompt.ask("reason", default="rejected in the terminal")}
    return {"action": "approve"}


async def run(
    spec: str, env: ProjectEnv, *, agent: str, input: str, tenant: str, thread: str | None, approve_all: bool
) -> int:
    from bastion.tracing import TraceStore, configure_tracing

    env.home.mkdir(parents=True, exist_ok=True)
    store = TraceStore(env.home / "traces.db")
    tracing = configure_tracing(store=store)
    project = await load_project(spec, env)
    try:
        runnables = project.runnables()
        if agent not in runnables:
            raise UserError(f"unknown agent {agent!r}; the project has {sorted(runnables)}")
        runnable = runnables[agent]
        thread_id = thread or new_id("thread_")
        context = RunContext(tenant=tenant, session=thread_id, run_id=new_id("run_"), agent=agent)

        async def emit(kind: str, data: dict[str, Any]) -> None:
            if kind == "token":
                console.print(data.get("text", ""), end="", style="dim", markup=False)
            elif kind == "tool_call":
                call = data.get("call", {})
                console.print(f"\n[cyan]→ {call.get('name')}[/]({json.dumps(call.get('arguments'), default=str)})")
            elif kind == "tool_result":
                result = data.get("result", {})
                style = "red" if result.get("is_error") else "green"
                console.print(f"[{style}]← {result.get('name')}[/]: {str(result.get('content'))[:200]}", markup=True)

        resume: Any = None
        total_cost = 0.0
        while True:
            outcome = await runnable.invoke(
                input, thread_id=thread_key(tenant, thread_id), context=context, resume=resume, emit=emit
            )
            total_cost += outcome.cost_usd
            if outcome.status == "completed":
                break
            decisions = {i.get("id", ""): _ask(i, approve_all) for i in outcome.interrupts}
            resume = next(iter(decisions.values())) if len(decisions) == 1 else decisions
        console.print()
        console.print(Panel(str(outcome.output), title="answer", style="bold green"))
        console.print(f"cost ${total_cost:.6f} · thread {thread_id} · trace {outcome.trace_id}", soft_wrap=True)
    finally:
        await project.close()
        tracing.force_flush(5)
        tracing.shutdown()
        store.close()
    return 0
