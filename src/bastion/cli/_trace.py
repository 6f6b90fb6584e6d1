"""`bastion trace list|show`: read the embedded trace store."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from bastion.errors import UserError

console = Console()


def _store(home: Path):
    from bastion.tracing import TraceStore

    path = home / "traces.db"
    if not path.exists():
        raise UserError(f"no trace store at {path}; run something first or pass --home")
    return TraceStore(path)


def list_traces(home: Path) -> int:
    store = _store(home)
    try:
        table = Table("trace", "root", "started", "spans", "errors", "cost $", "run")
        for t in store.list_traces(limit=30):
            started = datetime.fromtimestamp(t.start_ns / 1e9).strftime("%H:%M:%S")
            table.add_row(t.trace_id, t.name or "", started, str(t.span_count), str(t.error_count),
                          f"{t.cost_usd:.6f}", t.run_id or "")  # fmt: skip
        console.print(table)
    finally:
        store.close()
    return 0


def show_trace(home: Path, trace_id: str) -> int:
    store = _store(home)
    try:
        tree = store.get_trace(trace_id)
        if tree is None:
            raise UserError(f"trace {trace_id} not found in {home / 'traces.db'}")
        root = Tree(f"trace {trace_id}")
        nodes = {}
        for depth, span in tree.walk():
            cost = span.attributes.get("bastion.cost.usd")
            label = f"{span.name} [dim]{span.duration_s * 1000:.1f} ms[/]"
            if cost is not None:
                label += f" [green]${float(cost):.6f}[/]"
            if span.is_error:
                label += " [red]error[/]"
            parent = nodes.get(span.parent_id, root) if depth else root
            nodes[span.span_id] = parent.add(label)
        console.print(root)
    finally:
        store.close()
    return 0
