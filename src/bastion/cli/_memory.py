"""`bastion memory ingest PATH...`: load documents into long-term memory with a progress bar.

Files are read, chunked and written one after another while the store's background batcher
embeds the chunks already written, so reading and embedding overlap; the bar follows the
embedding, which is most of the time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bastion.errors import UserError

SUFFIXES = (".txt", ".text", ".md", ".markdown", ".html", ".htm", ".pdf")


def collect(paths: Sequence[Path]) -> list[Path]:
    """The files named, and the supported files under the directories named, in a stable order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"no such file or directory: {path}")
    if not files:
        raise UserError(f"no documents to ingest under {', '.join(map(str, paths))} (looked for {', '.join(SUFFIXES)})")
    return list(dict.fromkeys(files))


def open_store(home: Path, *, file: Path | None, database: str | None, embedder: str) -> Any:
    """The memory store to write to without `--app`: a PostgreSQL database, or a SQLite file
    (default `<home>/memory.db`)."""
    from bastion.memory import HashingEmbedder, MiniLMEmbedder, PostgresMemoryStore, SQLiteMemoryStore

    emb = HashingEmbedder() if embedder == "hashing" else MiniLMEmbedder()
    if database:
        return PostgresMemoryStore(database, emb, batch_size=256)
    path = file or home / "memory.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Large embedding batches: sorted by length inside a batch, they waste little on padding.
    return SQLiteMemoryStore(path, emb, batch_size=256)


async def ingest_command(
    paths: Sequence[Path],
    home: Path,
    *,
    tenant: str,
    agent: str = "",
    user: str = "",
    scope: str = "",
    app: str | None = None,
    file: Path | None = None,
    database: str | None = None,
    embedder: str = "minilm",
    untrusted: bool = False,
) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bastion.memory import IngestResult, Namespace, ingest, load_document

    console = Console()
    files = collect(paths)
    ns = Namespace(tenant, agent, user, scope)
    project: Any = None
    if app is not None:
        from bastion.server import ProjectEnv, load_project

        project = await load_project(app, ProjectEnv(home=home, database_url=database))
        store = project.memory
        if store is None:
            raise UserError(f"project {app} has no memory store (Project(memory=...)); or omit --app")
    else:
        store = open_store(home, file=file, database=database, embedder=embedder)
    results: list[IngestResult] = []
    started = time.perf_counter()
    queued = 0

    def backlog() -> int:
        return int(getattr(store, "pending_embeddings", 0))

    try:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[rate]}"))  # fmt: skip
        with Progress(*columns, console=console, transient=False) as progress:
            reading = progress.add_task("files", total=len(files), rate="")
            embedding = progress.add_task("chunks embedded", total=None, rate="")

            def show() -> None:
                done = queued - backlog()
                elapsed = time.perf_counter() - started
                rate = f"{done / elapsed:,.0f} chunks/s" if elapsed > 0 and done else ""
                progress.update(embedding, total=queued, completed=done, rate=rate)

            for path in files:
                trust = "untrusted" if untrusted else "trusted"
                result = await ingest(store, ns, load_document(path), trust=trust)
                results.append(result)
                queued += result.chunks
                progress.advance(reading)
                show()
            flushing = asyncio.ensure_future(store.flush())
            while not flushing.done():
                await asyncio.wait({flushing}, timeout=0.2)
                show()
            await flushing
            show()
    finally:
        if project is not None:
            await project.close()
        else:
            await store.close()
    elapsed = time.perf_counter() - started
    counts = {s: sum(r.status == s for r in results) for s in ("added", "replaced", "unchanged")}
    rate = f", {queued / elapsed:,.0f} chunks/s" if queued else ""
    console.print(
        f"{len(files)} files: {counts['added']} added, {counts['replaced']} replaced, {counts['unchanged']} unchanged; "
        f"{queued} chunks into {ns.tenant}/{ns.agent}/{ns.user}/{ns.scope} in {elapsed:.1f} s{rate}",
        soft_wrap=True,
    )
    return 0


__all__ = ["collect", "ingest_command"]
