"""The PostgreSQL store's RAM search index (issue 13): the same answers as the SQLite store,
kept fresh across processes (two store instances on one database stand for two processes),
deterministic ties, loaded off the event loop, per-tenant isolation."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import bastion.memory._pg_index as pg_index
from bastion.memory import HashingEmbedder, MemoryItem, Namespace, PostgresMemoryStore, SQLiteMemoryStore
from bastion.memory._store import tenant_suffix

pytestmark = pytest.mark.postgres

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega running runner runs ran deploy deploys deployed key keys").split()  # fmt: skip
WAIT = 15.0  # seconds: the bound on every cross-process wait


def sentences(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 20))) for _ in range(n)]


def open_pg(url: str) -> PostgresMemoryStore:
    return PostgresMemoryStore(url, HashingEmbedder(64))


@pytest.fixture
async def two(pg_url: str) -> AsyncIterator[tuple[PostgresMemoryStore, PostgresMemoryStore]]:
    a, b = open_pg(pg_url), open_pg(pg_url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `check` until it holds, at most `WAIT` seconds (another process's change arrives
    by notification, asynchronously)."""
    deadline = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.02)


async def ids(store: Any, ns: Namespace | list[Namespace], query: str, **kw: Any) -> list[str]:
    return [h.item.id for h in await store.search(ns, query, **kw)]


async def test_a_write_on_one_process_reaches_the_others_search(
    two: tuple[PostgresMemoryStore, PostgresMemoryStore],
) -> None:
    a, b = two
    ns = Namespace("acme", user="u")
    await a.put_many(ns, [MemoryItem(t) for t in sentences(50)])
    assert await ids(b, ns, "zebra", mode="bm25") == []  # b's index is loaded now
    loads = b.ram_index_loads
    item = await a.put(ns, MemoryItem("the zebra crossing is closed"))

    async def seen() -> bool:
        return await ids(b, ns, "zebra", mode="bm25") == [item.id]

    await eventually(seen, "b sees a's new item")
    await a.flush()  # the vector arrives as a change of its own

    async def embedded() -> bool:
        return item.id in await ids(b, ns, "zebra crossing closed", mode="vector", k=3)

    await eventually(embedded, "b sees a's vector")
    await a.forget(ns, item.id)  # invalidated: gone from current searches

    async def gone() -> bool:
        return await ids(b, ns, "zebra", mode="bm25") == []

    await eventually(gone, "b drops the invalidated item")
    erased = await a.put(ns, MemoryItem("a quokka smiles"))
    await eventually(lambda: _has(b, ns, "quokka", erased.id), "b sees the quokka")
    await a.forget(ns, erased.id, hard=True)

    async def erased_gone() -> bool:
        return erased.id not in await ids(b, ns, "quokka", k=50)

    await eventually(erased_gone, "b drops the erased item")
    bulk = await a.put_many(ns, [MemoryItem(f"marmot number {n}") for n in range(300)])  # tokenized in a thread

    async def bulk_seen() -> bool:
        return set(await ids(b, ns, "marmot", mode="bm25", k=300)) == {it.id for it in bulk}

    await eventually(bulk_seen, "b sees a's bulk write")
    assert b.ram_index_loads == loads  # caught up from the change log, never reloaded


async def _has(store: PostgresMemoryStore, ns: Namespace, query: str, item_id: str) -> bool:
    return item_id in await ids(store, ns, query)


async def test_own_writes_are_searchable_at_once(pg_url: str) -> None:
    store = open_pg(pg_url)
    ns = Namespace("acme", user="u")
    try:
        await store.put_many(ns, [MemoryItem(t) for t in sentences(20)])
        assert await ids(store, ns, "okapi", mode="bm25") == []
        item = await store.put(ns, MemoryItem("an okapi in the garden"))
        assert await ids(store, ns, "okapi", mode="bm25") == [item.id]  # no wait: this process wrote it
        await store.flush()
        assert (await ids(store, ns, "an okapi in the garden", mode="vector"))[0] == item.id
        await store.forget(ns, item.id, hard=True)
        assert item.id not in await ids(store, ns, "an okapi in the garden", k=50)
    finally:
        await store.close()


async def test_a_missed_notification_is_caught_up(two: tuple[PostgresMemoryStore, PostgresMemoryStore]) -> None:
    """b's listening connection dies (notifications sent meanwhile are lost): b's searches
    still see a's writes, from the change counter and after the listener reconnects."""
    a, b = two
    ns = Namespace("acme", user="u")
    await a.put(ns, MemoryItem("first words"))
    assert await ids(b, ns, "walrus", mode="bm25") == []
    async with await psycopg.AsyncConnection.connect(a.url, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'LISTEN bastion_memory%%' AND pid <> pg_backend_pid()"
        )
        assert await cur.fetchone() == (1,)  # b's listener (a has not searched, so it listens to nothing)
    item = await a.put(ns, MemoryItem("a walrus on the beach"))
    await eventually(lambda: _has(b, ns, "walrus", item.id), "b sees the write made while it was not listening")


async def test_ties_break_the_same_way_in_every_run_and_process(pg_url: str) -> None:
    """Identical texts score identically: the order is insertion order, the same for two
    tenants loaded with the same data (two runs) and for two processes on one tenant."""
    texts = ["deploy the key service"] * 30 + sentences(40)
    order = list(range(len(texts)))
    random.Random(5).shuffle(order)
    a, b = open_pg(pg_url), open_pg(pg_url)
    try:
        for tenant in ("run1", "run2"):
            await a.put_many(Namespace(tenant), [MemoryItem(texts[i], id=f"m{i}") for i in order])
        await a.flush()
        for mode in ("bm25", "vector", "hybrid"):
            first = await ids(a, Namespace("run1"), "deploy key service", k=20, mode=mode)
            assert len(first) == 20
            for store, tenant in ((a, "run2"), (b, "run1"), (b, "run2")):
                assert await ids(store, Namespace(tenant), "deploy key service", k=20, mode=mode) == first, mode
        # the 30 identical texts rank first, in the order they were written
        tied = [f"m{i}" for i in order if i < 30]
        assert (await ids(a, Namespace("run1"), "deploy key service", k=30, mode="bm25")) == tied
    finally:
        await a.close()
        await b.close()


async def test_warm_loads_the_index_so_the_first_search_does_not(pg_url: str) -> None:
    store = open_pg(pg_url)
    try:
        for tenant in ("t1", "t2"):
            await store.put_many(Namespace(tenant), [MemoryItem(t) for t in sentences(100)])
    finally:
        await store.close()
    store = open_pg(pg_url)
    try:
        assert await store.warm() == {"t1": 100, "t2": 100}
        assert store.ram_index_loads == 2
        for tenant in ("t1", "t2"):
            assert await ids(store, Namespace(tenant), "alpha beta")
        assert store.ram_index_loads == 2  # searches used the warmed indexes
        assert await store.warm(["t1", "nobody"]) == {"t1": 100}
        assert store.ram_index_loads == 2
    finally:
        await store.close()


async def test_warm_loads_in_a_thread_while_the_event_loop_keeps_serving(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load blocks its thread until a coroutine on the event loop has run: if the load
    ran on the loop, that coroutine could not run and the load would time out."""
    writer = open_pg(pg_url)
    try:
        for start in range(0, 6000, 2000):
            await writer.put_many(Namespace("big"), [MemoryItem(t) for t in sentences(2000, seed=start)])
    finally:
        await writer.close()
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    loop_ran = threading.Event()
    events: list[str] = []
    real = pg_index.load_tenant

    def load(*args: Any) -> Any:
        loop.call_soon_threadsafe(started.set)
        events.append("load waits for the loop" if loop_ran.wait(WAIT) else "load timed out")
        loaded = real(*args)
        events.append("load done")
        return loaded

    monkeypatch.setattr(pg_index, "load_tenant", load)
    store = open_pg(pg_url)
    try:
        warm = asyncio.create_task(store.warm(["big"]))
        await asyncio.wait_for(started.wait(), WAIT)

        async def trivial() -> None:
            events.append("a trivial coroutine ran")

        await trivial()
        loop_ran.set()
        assert not warm.done()
        assert await warm == {"big": 6000}
        assert events == ["a trivial coroutine ran", "load waits for the loop", "load done"]
        assert await ids(store, Namespace("big"), "alpha", k=3)
        assert store.ram_index_loads == 1
    finally:
        await store.close()


def corpus() -> list[tuple[Namespace, MemoryItem]]:
    """Items in nested namespaces, with metadata, sources, kinds, trust and validity."""
    rng = random.Random(9)
    spaces = [Namespace("acme"), Namespace("acme", agent="bot"), Namespace("acme", agent="bot", user="ada"),
              Namespace("acme", agent="bot", user="bob")]  # fmt: skip
    out: list[tuple[Namespace, MemoryItem]] = []
    for n, text in enumerate(sentences(240, seed=4)):
        out.append((spaces[n % 4], MemoryItem(
            text, id=f"i{n:03d}", kind=rng.choice(["fact", "document"]),
            trust="untrusted" if n % 7 == 0 else "trusted",
            metadata={"speaker": rng.choice(["ada", "bob"]), "session": n % 3},
            provenance={"source": rng.choice(["a.md", "b.md"])},
            valid_from=1_700_000_000.0 + n, valid_to=1_700_000_000.0 + n + 40 if n % 11 == 0 else None,
        )))  # fmt: skip
    return out


async def test_results_equal_the_sqlite_stores(pg_url: str, tmp_path: Path) -> None:
    pg, lite = open_pg(pg_url), SQLiteMemoryStore(tmp_path / "m.db", HashingEmbedder(64))
    try:
        for store in (pg, lite):
            for ns, item in corpus():
                await store.put(ns, dataclasses.replace(item))
            await store.flush()
        ada = Namespace("acme", agent="bot", user="ada")
        rng = random.Random(2)
        filters: list[dict[str, Any]] = [{}, {"kind": "fact"}, {"where": {"speaker": "ada"}},
                                         {"source": "b.md", "include_untrusted": True},
                                         {"since": 1_700_000_050.0, "until": 1_700_000_200.0},
                                         {"as_of": 1_700_000_050.0}, {"inherit": False}]  # fmt: skip
        compared = 0
        for _ in range(25):
            query = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
            for mode in ("bm25", "vector", "hybrid"):
                for kw in filters:
                    a = await pg.search(ada, query, k=10, mode=mode, **kw)
                    b = await lite.search(ada, query, k=10, mode=mode, **kw)
                    assert [h.item.id for h in a] == [h.item.id for h in b], (query, mode, kw)
                    # float32 vectors pass through text on PostgreSQL: scores equal to ~1e-7
                    assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-6), (query, mode, kw)
                    compared += len(a)
        assert compared > 2000
    finally:
        await pg.close()
        await lite.close()


async def test_a_tenant_never_gets_another_tenants_items_through_the_index(
    two: tuple[PostgresMemoryStore, PostgresMemoryStore],
) -> None:
    """Same item ids and texts in two tenants; a's changes, a notification naming b, and a
    forged change-log row for b naming an item only a has must not bring a's items into b's
    results."""
    a, b = two
    ta, tb = Namespace("tenant-a", user="u"), Namespace("tenant-b", user="u")
    for ns in (ta, tb):
        await a.put_many(ns, [MemoryItem(f"{ns.tenant} shared words {t}", id=f"x{n}")
                              for n, t in enumerate(sentences(30))])  # fmt: skip
    await a.flush()
    before = await b.search(tb, "shared words", k=50)
    assert len(before) == 30 and {h.item.text.split()[0] for h in before} == {"tenant-b"}
    secret = await a.put(ta, MemoryItem("tenant-a secret launch codes", id="secret"))
    await a.put(ta, MemoryItem("tenant-a shared words replaced", id="x0-new", supersedes="x0"))
    async with await psycopg.AsyncConnection.connect(a.url, autocommit=True) as admin, admin.transaction():
        cur = await admin.execute(
            "UPDATE bastion_memory_tenants SET seq = seq + 1 WHERE tenant = %s RETURNING seq", (tb.tenant,)
        )
        (seq,) = await cur.fetchone()  # type: ignore[misc]
        await admin.execute(
            "INSERT INTO bastion_memory_changes(tenant, seq, item_id, op) VALUES (%s, %s, %s, 'put')",
            (tb.tenant, seq, secret.id),
        )
        await admin.execute("SELECT pg_notify('bastion_memory', %s)", (tenant_suffix(tb.tenant),))
    await eventually(lambda: _has(a, ta, "secret launch codes", "secret"), "a's own write is visible to a")

    async def b_caught_up() -> bool:
        # b's index has applied the forged change once its counter reached the forged seq
        loaded = b._ram._entries[tenant_suffix(tb.tenant)].loaded  # pyright: ignore[reportPrivateUsage]
        await b.search(tb, "anything", k=1)
        return loaded is not None and loaded.seq >= seq

    await eventually(b_caught_up, "b applies the change naming it")
    for mode in ("bm25", "vector", "hybrid"):
        hits = await b.search(tb, "secret launch codes shared words", k=50, mode=mode, include_untrusted=True)
        assert {h.item.text.split()[0] for h in hits} == {"tenant-b"}, mode
        assert "secret" not in {h.item.id for h in hits}
        assert "x0" in {h.item.id for h in hits} or mode == "vector"  # b's x0 was not superseded


async def test_a_worker_warms_its_memory_store_at_start(pg_url: str, tmp_path: Path) -> None:
    from bastion.runtime import SqlRunStore, Worker

    writer = open_pg(pg_url)
    try:
        await writer.put_many(Namespace("acme"), [MemoryItem(t) for t in sentences(50)])
    finally:
        await writer.close()
    memory, runs = open_pg(pg_url), SqlRunStore.sqlite(tmp_path / "runs.db")
    worker = Worker(runs, {}, poll_interval=0.05)
    worker.memory = memory
    task = asyncio.create_task(worker.run())
    try:

        async def warmed() -> bool:
            return memory.ram_index_loads == 1

        await eventually(warmed, "the worker warms the store")
        await ids(memory, Namespace("acme"), "alpha")
        assert memory.ram_index_loads == 1  # the search used the warmed index
    finally:
        worker.stop()
        await asyncio.wait_for(task, WAIT)
        await runs.close()
        await memory.close()


async def test_a_database_from_before_the_change_log_is_migrated(pg_url: str) -> None:
    """A database written before issue 13 (no rid column, no change counter) gains them at the
    next open; its items are searchable through the RAM index."""
    old = PostgresMemoryStore(pg_url, HashingEmbedder(64), search_index="postgres")
    ns = Namespace("acme")
    try:
        await old.put_many(ns, [MemoryItem(t, id=f"o{n}") for n, t in enumerate(sentences(20))])
    finally:
        await old.close()
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        await admin.execute("ALTER TABLE bastion_memory_items DROP COLUMN rid")
        await admin.execute("ALTER TABLE bastion_memory_tenants DROP COLUMN seq, DROP COLUMN log_floor")
        await admin.execute("DROP TABLE bastion_memory_changes")
    store = open_pg(pg_url)
    try:
        assert len(await ids(store, ns, "alpha beta gamma delta", mode="bm25", k=50)) > 5
        item = await store.put(ns, MemoryItem("a narwhal", id="new"))
        assert await ids(store, ns, "narwhal", mode="bm25") == [item.id]
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
            cur = await admin.execute("SELECT count(DISTINCT rid) FROM bastion_memory_items")
            assert (await cur.fetchone()) == (21,)
    finally:
        await store.close()
