"""The SQLite backend's RAM search index: same answers as FTS5 and sqlite-vec, kept current with
writes from other connections (other processes), bounded in size."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

import bastion.memory._sqlite as sqlite_module
from bastion.errors import UserError
from bastion.memory import HashingEmbedder, MemoryItem, Namespace, SQLiteMemoryStore
from bastion.memory._index import Filter, RowState, TenantIndex
from bastion.memory._store import tenant_suffix

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega running runner runs ran deploy deploys deployed key keys").split()  # fmt: skip


def sentences(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 30))) for _ in range(n)]


def open_store(path: Path, search_index: str = "ram", **kw) -> SQLiteMemoryStore:
    return SQLiteMemoryStore(path, HashingEmbedder(64), search_index=search_index, **kw)  # type: ignore[arg-type]


async def test_bm25_scores_equal_fts5_bm25(tmp_path: Path) -> None:
    ns = Namespace("acme", user="u")
    ram, disk = open_store(tmp_path / "m.db"), open_store(tmp_path / "m.db", "sqlite")
    try:
        # one namespace in the tenant: its statistics are the FTS5 table's (see the next test)
        await ram.put_many(ns, [MemoryItem(t) for t in sentences(600)])
        rng = random.Random(3)
        compared = 0
        for _ in range(60):
            query = " ".join(rng.sample(WORDS, rng.randint(1, 4)))
            a = await ram.search(ns, query, k=15, mode="bm25")
            b = await disk.search(ns, query, k=15, mode="bm25")
            sa = {h.item.id: round(h.score, 9) for h in a}
            sb = {h.item.id: round(h.score, 9) for h in b}
            assert sorted(sa.values()) == sorted(sb.values()), query
            if sa:  # rows tied at the cut-off may differ; everything above it is the same rows
                cutoff = min(sa.values())
                assert {i: v for i, v in sa.items() if v > cutoff} == {i: v for i, v in sb.items() if v > cutoff}
            compared += len(a)
        assert compared > 300
    finally:
        await ram.close()
        await disk.close()


async def test_bm25_statistics_are_those_of_the_namespaces_searched(tmp_path: Path) -> None:
    """One user's BM25 scores do not move when another user of the tenant writes (FTS5's own
    statistics span the tenant; the RAM index scopes them to the namespaces searched)."""
    ada, bob = Namespace("acme", user="ada"), Namespace("acme", user="bob")
    store = open_store(tmp_path / "m.db")
    try:
        await store.put_many(ada, [MemoryItem(t) for t in sentences(300)])
        queries = ["deploy key", "alpha omega", "running runner", "sigma tau upsilon"]
        before = [[(h.item.id, h.score) for h in await store.search(ada, q, k=10, mode="bm25")] for q in queries]
        # bob writes many rows full of the query words: tenant-wide statistics would shift
        await store.put_many(bob, [MemoryItem("deploy key alpha omega running sigma " * 3) for _ in range(500)])
        after = [[(h.item.id, h.score) for h in await store.search(ada, q, k=10, mode="bm25")] for q in queries]
        assert before == after and sum(map(len, before)) > 20
        # the shared level above ada is part of ada's statistics: her scores do move with it
        await store.put_many(Namespace("acme"), [MemoryItem("deploy key deploy key") for _ in range(50)])
        shared = [[(h.item.id, h.score) for h in await store.search(ada, q, k=10, mode="bm25")] for q in queries]
        assert shared[0] != before[0]
    finally:
        await store.close()


@pytest.mark.parametrize("index", ["binary", "exact"])
async def test_writes_from_another_connection_are_seen_by_the_next_search(tmp_path: Path, index: str) -> None:
    ns = Namespace("acme", user="u")
    reader, writer = open_store(tmp_path / "m.db", index=index), open_store(tmp_path / "m.db", index=index)
    try:
        first = await writer.put(ns, MemoryItem("the boiler is serviced every autumn"))
        await writer.flush()
        assert [h.item.id for h in await reader.search(ns, "boiler serviced")] == [first.id]  # loads the index
        second = await writer.put(ns, MemoryItem("the boiler pressure should read 1.5 bar"))
        assert second.id in [h.item.id for h in await reader.search(ns, "boiler pressure", mode="bm25")]
        assert second.id not in [h.item.id for h in await reader.search(ns, "boiler pressure", mode="vector")]
        await writer.flush()  # its vector arrives
        assert (await reader.search(ns, "boiler pressure", mode="vector", k=1))[0].item.id == second.id
        await writer.forget(ns, first.id)
        assert first.id not in [h.item.id for h in await reader.search(ns, "boiler serviced")]
        assert first.id in [h.item.id for h in await reader.search(ns, "boiler serviced", as_of=first.recorded_at)]
        await writer.forget(ns, second.id, hard=True)
        assert await reader.search(ns, "boiler pressure bar") == []
        batch = await writer.put_many(ns, [MemoryItem(f"radiator {i} in room {i} needs bleeding") for i in range(50)])
        await writer.flush()
        for mode in ("bm25", "vector"):
            hits = await reader.search(ns, "radiator 37 in room 37 needs bleeding", mode=mode, k=1)  # type: ignore[arg-type]
            assert [h.item.id for h in hits] == [batch[37].id], mode
    finally:
        await reader.close()
        await writer.close()


async def test_an_index_behind_a_pruned_change_log_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = Namespace("acme", user="u")
    monkeypatch.setattr(sqlite_module, "LOG_KEEP", 10)
    reader, writer = open_store(tmp_path / "m.db"), open_store(tmp_path / "m.db")
    try:
        await writer.put(ns, MemoryItem("seed row"))
        await reader.search(ns, "seed")
        s = tenant_suffix(ns.tenant)
        before = reader._loaded[s].index
        # enough changes that the writer prunes the log past the reader's position
        for start in range(0, 4200, 600):
            await writer.put_many(ns, [MemoryItem(f"note {i} about the garden") for i in range(start, start + 600)])
        (oldest,) = writer._db.execute(f"SELECT min(seq) FROM log_{s}").fetchone()
        assert oldest > reader._loaded[s].seq + 1
        hits = await reader.search(ns, "note 4199 garden", mode="bm25", k=1)
        assert reader._loaded[s].index is not before  # reloaded, not patched
        assert hits and hits[0].item.text == "note 4199 about the garden"
        assert len(reader._loaded[s].index) == 4201
    finally:
        await reader.close()
        await writer.close()


async def test_ram_budget_drops_least_recently_searched_tenants(tmp_path: Path) -> None:
    store = open_store(tmp_path / "m.db", ram_index_items=250)
    try:
        tenants = [Namespace(f"t{i}", user="u") for i in range(4)]
        for i, ns in enumerate(tenants):
            await store.put_many(ns, [MemoryItem(f"tenant {i} fact {j}") for j in range(100)])
        for i, ns in enumerate(tenants):
            hits = await store.search(ns, f"tenant {i} fact 7", mode="bm25", k=1)
            assert hits[0].item.text == f"tenant {i} fact 7"
        assert list(store._loaded) == [tenant_suffix("t2"), tenant_suffix("t3")]
        assert (await store.search(tenants[0], "fact 9", mode="bm25", k=1))[0].item.text == "tenant 0 fact 9"
        assert list(store._loaded) == [tenant_suffix("t3"), tenant_suffix("t0")]
    finally:
        await store.close()


def test_unknown_search_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown search index 'disk'; use 'ram' or 'sqlite'"):
        open_store(tmp_path / "m.db", "disk")
    assert not (tmp_path / "m.db").exists()


def test_vector_search_recall_against_exact_cosine() -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((32, 64)).astype(np.float32)
    vectors = centers[rng.integers(0, 32, 5000)] + 0.8 * rng.standard_normal((5000, 64)).astype(np.float32)
    index = TenantIndex(64, candidates=200)
    index.add_many((i + 1, RowState("ns", "semantic", True, 0.0, None), ["x"]) for i in range(len(vectors)))
    index.set_vectors((i + 1, v) for i, v in enumerate(vectors))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    found = 0
    for q in centers[rng.integers(0, 32, 50)] + 0.8 * rng.standard_normal((50, 64)).astype(np.float32):
        exact = set((np.argsort(-(unit @ q))[:10] + 1).tolist())
        found += len(exact & {r for r, _ in index.knn("ns", q, 10, Filter(1.0))})
    assert found / 500 >= 0.9


def test_filters_apply_before_ranking() -> None:
    """The nearest rows are all filtered out: the k returned are the best of the visible ones."""
    index = TenantIndex(8, candidates=4)
    base = np.eye(8, dtype=np.float32)[0]
    rows = []
    for i in range(1, 41):
        trusted, valid_to = (False, None) if i <= 10 else (True, 5.0) if i <= 20 else (True, None)
        rows.append((i, RowState("ns", "semantic", trusted, 0.0, valid_to), ["tok"]))
    index.add_many(rows)
    # rows 1-20 point straight at the query; rows 21-40 a little further away each
    index.set_vectors((i, base if i <= 20 else base + 0.05 * i * np.eye(8, dtype=np.float32)[1]) for i in range(1, 41))
    got = [r for r, _ in index.knn("ns", base, 5, Filter(10.0))]
    assert got == [21, 22, 23, 24, 25]
    assert {r for r, _ in index.bm25("ns", ["tok"], 40, Filter(10.0))} == set(range(21, 41))
    assert {r for r, _ in index.bm25("ns", ["tok"], 40, Filter(1.0, include_untrusted=True))} == set(range(1, 41))


def test_removed_rows_leave_the_statistics() -> None:
    index = TenantIndex(4)
    index.add_many([(1, RowState("a", "semantic", True, 0.0, None), ["x", "y"]),
                    (2, RowState("a", "semantic", True, 0.0, None), ["x"]),
                    (3, RowState("b", "semantic", True, 0.0, None), ["z"])])  # fmt: skip
    before = index.bm25("a", ["x"], 5, Filter(1.0))
    index.remove(2)
    after = index.bm25("a", ["x"], 5, Filter(1.0))
    assert [r for r, _ in after] == [1] and len(index) == 2
    assert after[0][1] != before[0][1]  # fewer rows, other frequencies: another score
    with pytest.raises(ValueError, match="already indexed"):
        index.add_many([(1, RowState("a", "semantic", True, 0.0, None), ["x"])])
    with pytest.raises(ValueError, match="dimensions"):
        index.set_vectors([(1, [1.0, 2.0])])
