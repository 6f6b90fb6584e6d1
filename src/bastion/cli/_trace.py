"""`bastion trace list|show`: read the trace store: the embedded one under `--home`, or the
PostgreSQL store every server and worker of a scaled-out deployment writes to (`--database` or
BASTION_DATABASE_URL)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from bastion.errors import UserError

console = Console()

_HEX = re.compile(r"[0-9a-f]{1,32}")


def _store(home: Path, database: str | None = None) -> Any:
    from bastion.tracing import TraceStore, open_trace_store

    if database:  # scaled out: every server and worker writes to the shared store
        return open_trace_store(home, database)
    path = home / "traces.db"
    if not path.exists():
        raise UserError(f"no trace store at {path}; run something first, pass --home, or --database for PostgreSQL")
    return TraceStore(path)


def list_traces(home: Path, database: str | None = None) -> int:
    store = _store(home, database)
    try:
        table = Table("trace", "root", "started", "spans", "errors", "cost $", "run")
        for column in (table.columns[0], table.columns[-1]):
            column.no_wrap = True  # ids are copied into `trace show`: never cut or folded
        for t in store.list_traces(limit=30):
            started = datetime.fromtimestamp(t.start_ns / 1e9).strftime("%H:%M:%S")
            table.add_row(t.trace_id, escape(t.name or ""), started, str(t.span_count), str(t.error_count),
                          f"{t.cost_usd:.6f}", t.run_id or "")  # fmt: skip
        # Wider than the terminal (80 columns when piped) rather than truncating an id.
        wanted = console.measure(table, options=console.options.update_width(10_000)).maximum
        (console if wanted <= console.width else Console(width=wanted)).print(table)
    finally:
        store.close()
    return 0


def resolve_trace_id(store: Any, ref: str) -> str:
    """The full trace id for `ref`: a trace id, a unique prefix of one, or a run id."""
    ref = ref.strip().lower()
    if ref.startswith("run_"):
        traces = store.list_traces(run_id=ref, limit=2)
        if not traces:
            raise UserError(f"no trace for run {ref}; `bastion trace list` shows the recorded ones")
        return traces[0].trace_id
    if not _HEX.fullmatch(ref):
        raise UserError(f"{ref!r} is not a trace id (32 hex digits, or a unique prefix of one) or a run id")
    rows = store.query("SELECT DISTINCT trace_id FROM spans WHERE trace_id LIKE ? LIMIT 11", [ref + "%"])
    ids = sorted(str(r[0]) for r in rows)
    if not ids:
        raise UserError(f"no trace starts with {ref!r}; `bastion trace list` shows the recorded ones")
    if len(ids) > 1:
        shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
        raise UserError(f"{ref!r} matches {len(ids)} traces ({shown}); give more of the id")
    return ids[0]


def show_trace(home: Path, ref: str, database: str | None = None) -> int:
    store = _store(home, database)
    try:
        trace_id = resolve_trace_id(store, ref)
        tree = store.get_trace(trace_id)
        if tree is None:
            raise UserError(f"trace {trace_id} not found in the trace store")
        root = Tree(f"trace {trace_id}")
        nodes: dict[str, Any] = {}
        for depth, span in tree.walk():
            cost = span.attributes.get("bastion.cost.usd")
            label = f"{escape(span.name)} [dim]{span.duration_s * 1000:.1f} ms[/]"
            if cost is not None:
                label += f" [green]${float(cost):.6f}[/]"
            if span.is_error:
                label += " [red]error[/]"
            parent = nodes.get(span.parent_id or "", root) if depth else root
            nodes[span.span_id] = parent.add(label)
        console.print(root, soft_wrap=True)
    finally:
        store.close()
    return 0
