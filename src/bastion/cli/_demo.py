"""`bastion demo` (what `make demo` runs): the support-agent scenario end to end, offline.

Starts the server on 127.0.0.1 with the example project, drives a scripted set of customer
requests through the HTTP API (like any client would), answers refund approvals with a
scripted approver that approves only calls whose argument values all come from the
customer's own words (the per-argument provenance in the approval payload; an amount the
model invented is rejected), leaves one approval pending for you, shows the prompt-injection
attempt being blocked, prints a summary and keeps the web UI up.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bastion.cli._approval import find_approval
from bastion.errors import UserError

console = Console()

SCENARIO: list[tuple[str, str, str]] = [
    # (agent, input, what happens to an approval request: "approve" asks the scripted approver)
    ("support", "How many days do I have to return an item?", "approve"),
    ("support", "Where is my order 1042?", "approve"),
    ("support", "Use Python to add up 19.99, 89.00 and 34.50.", "approve"),
    ("support", "Please refund order 1044 (34.50 EUR) to my IBAN DE89370400440532013000.", "approve"),
    # over 30 EUR, so it needs a human (an honest 19.99 EUR refund would simply go through)
    ("support", "I want a refund for order 1043 (89.00 EUR), please.", "leave"),
    ("support-redteam", "Can you check the status of order 1043?", "approve"),
]


def scripted_approval(ask: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The demo's approver: it approves a call only when every key argument value comes from
    the customer's own words (the per-argument provenance in the approval payload), and
    rejects anything else, saying which values it could not trace. Returns the decision and
    the lines it shows."""
    from bastion.policy import describe_argument

    risk = ask.get("risk") or {}
    arguments = [a for a in risk.get("arguments") or [] if isinstance(a, dict)]
    lines = [f"    {describe_argument(a)}" for a in arguments]
    not_from_user = [
        f"{a.get('argument')} = {a.get('value')}"
        + (" is not in the conversation" if a.get("origin") == "invented" else f" comes from {a.get('origin')} data")
        for a in arguments
        if a.get("key", True) and a.get("origin") not in ("user", "schema")
    ]
    if not arguments or not_from_user:
        reason = "; ".join(not_from_user) or "the request carries no per-argument provenance"
        return {"action": "reject", "reason": reason, "approver": "demo"}, lines
    return {"action": "approve", "approver": "demo"}, lines


def _project_file() -> Path:
    candidates = [Path(__file__).resolve().parents[3] / "examples/support/app.py", Path("examples/support/app.py")]
    for path in candidates:
        if path.exists():
            return path
    raise UserError("the demo project examples/support/app.py was not found; run `make demo` from a checkout")


async def _wait(session: Any, base: str, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with session.get(f"{base}/v1/runs/{run_id}") as r:
            run = await r.json()
        if run["status"] in ("completed", "failed", "cancelled", "interrupted"):
            return run
        if asyncio.get_running_loop().time() > deadline:
            return run
        await asyncio.sleep(0.25)  # polling interval while the local model works


async def _tool_events(session: Any, base: str, run_id: str) -> list[str]:
    async with session.get(f"{base}/v1/runs/{run_id}/events") as r:
        events = await r.json()
    out: list[str] = []
    for e in events:
        if e["kind"] == "tool_result":
            res = e["data"].get("result", {})
            content = res.get("content")
            kind = content.get("type") if isinstance(content, dict) and res.get("is_error") else "ok"
            out.append(f"{res.get('name')}:{kind}")
    return out


async def run_scenario(base: str, key: str, *, timeout: float = 240.0) -> list[dict[str, Any]]:
    import aiohttp

    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        for agent, text, on_approval in SCENARIO:
            console.print(f"[bold]{agent}[/] ← {text}")
            async with session.post(f"{base}/v1/runs", json={"agent": agent, "input": text}) as r:
                if r.status != 201:
                    raise UserError(f"creating a run failed: {r.status} {await r.text()}")
                run = await r.json()
            run = await _wait(session, base, run["id"], timeout)
            approved = False
            while run["status"] == "interrupted" and on_approval == "approve":
                payload = run["interrupts"][0].get("payload") or {}
                ask = find_approval(payload) or {}
                risk = ask.get("risk") or {}
                level = risk.get("level", "routine")
                console.print(
                    f"  [yellow]approval requested ({level})[/]: {risk.get('text') or json.dumps(payload)[:300]}"
                )
                decision, lines = scripted_approval(ask)
                for line in lines:
                    console.print(line, markup=False)
                verdict = decision["action"] + (f": {decision['reason']}" if decision.get("reason") else "")
                console.print(f"  [bold]demo approver[/] → {verdict}", markup=True)
                async with session.post(f"{base}/v1/approvals/{run['id']}", json={"decision": decision}) as r:
                    r.raise_for_status()
                approved = approved or decision["action"] == "approve"
                run = await _wait(session, base, run["id"], timeout)
            tools = await _tool_events(session, base, run["id"])
            answer = run.get("output") if run["status"] == "completed" else run.get("error") or run["status"]
            console.print(f"  → [green]{run['status']}[/] {str(answer)[:160]!s}  [dim]{', '.join(tools)}[/]")
            rows.append({**run, "tools": tools, "approved": approved, "prompt": text})
    return rows


def _summary(rows: list[dict[str, Any]]) -> Table:
    table = Table("agent", "request", "status", "tools (result)", "tokens", "cost $", "trace")
    for r in rows:
        usage = r.get("usage") or {}
        table.add_row(
            r["agent"], r["prompt"][:42], r["status"] + (" (approved)" if r["approved"] else ""),
            ", ".join(r["tools"]) or "-", f"{usage.get('input_tokens', 0)}/{usage.get('output_tokens', 0)}",
            f"{r.get('cost_usd', 0):.4f}", (r.get("trace_id") or "")[:16],
        )  # fmt: skip
    return table


async def demo(home: Path, *, port: int, wait: bool) -> int:
    from bastion.cli._progress import model_load_reporter, spinner
    from bastion.server import ProjectEnv, build_server, load_project
    from bastion.testing import serve_app

    demo_home = home / "demo"
    shutil.rmtree(demo_home, ignore_errors=True)  # a reproducible scenario every time
    env = ProjectEnv(home=demo_home)
    console.rule("Bastion demo: support agent on the bundled local model (offline)")
    console.print("loading the knowledge base (MiniLM embeddings) and the local model…")
    with spinner(Console(stderr=True), "ingesting the knowledge base"):
        project = await load_project(f"{_project_file()}:build", env)
    key = "bsk-demo-" + secrets.token_urlsafe(12)
    project.api_keys[key] = ("acme", "operator")
    parts, stack = await build_server(project, env, lease_seconds=120)
    async with stack, serve_app(parts.app, lifespan="off", port=port) as base:
        with model_load_reporter(Console(stderr=True)):  # the first request loads the local model
            rows = await run_scenario(base, key)
        console.print(_summary(rows))
        audit = _audit_lines(demo_home)
        if audit:
            console.print("[bold]policy decisions (audit log)[/]")
            for line in audit:
                console.print(f"  {line}")
        console.print(f"\nWeb UI: [bold]{base}/#key={key}[/]  (runs, traces, approvals inbox, costs, memory)")
        console.print(f"API:    curl -H 'Authorization: Bearer {key}' {base}/v1/runs")
        if wait:
            console.print("[dim]Serving until Ctrl-C…[/]")
            try:
                await asyncio.Event().wait()
            except (KeyboardInterrupt, asyncio.CancelledError):
                pass
    return 0


def _audit_lines(home: Path) -> list[str]:
    from bastion.policy import AuditLog

    path = home / "audit.db"
    if not path.exists():
        return []
    with AuditLog(path) as log:
        entries = log.entries()
        ok = log.verify().ok
    lines = [f"{e.event:<18} {e.agent:<16} {e.tool:<12} {'; '.join(e.reasons)[:90]}" for e in entries]
    lines.append(f"hash chain intact: {ok}")
    return lines
