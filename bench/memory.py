"""Memory benchmark: per-tenant hybrid query latency at 10k and 100k items, recall of the vector
index against exact search, ingestion throughput with the default (MiniLM) embedder, and
retrieval quality (BM25 vs vectors vs hybrid, and whether the top hit depends on k) on a
generated multi-session conversational-memory dataset.

    .venv/bin/python bench/memory.py            # full run (~3-5 min on 2 cores)
    .venv/bin/python bench/memory.py --quick    # small sizes, for a smoke test
    .venv/bin/python bench/memory.py --postgres # also PostgreSQL + pgvector (HNSW)

Writes bench/results/memory.json and prints a table.

Latency corpora: sentence-like synthetic text (stopwords plus Zipf-distributed content words)
embedded by `ClusteredEmbedder`, dense clustered 384-d vectors (MiniLM's dimension, so the
vector scan costs the same) computed in ~0.05 ms, because embedding 100k texts with MiniLM on
2 shared cores would take ~40 min. Query latency is the store's whole `search()` call (query
embedding included: ~0.05 ms here); MiniLM's own query-embedding time is reported separately.
The quality dataset uses the real MiniLM embedder. Machine load is recorded: on a shared
machine the tail latencies mostly measure the neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _util import ROOT, ensure_bench_venv

from bastion.memory import MemoryItem, MiniLMEmbedder, Namespace, SQLiteMemoryStore
from bastion.memory._store import MemoryStore

RESULTS = Path(__file__).parent / "results" / "memory.json"
TENANTS = 4

# --- synthetic corpus for latency --------------------------------------------------------------

_SYLLABLES = "ka lo mi ne ru sa te vo zi pa qu ba do fe gi hu ja ke li mo nu po ri su ta ve wu xo yi ze".split()


def vocabulary(n: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


_FUNCTION_WORDS = "the a of and to in is it that for on with as was at by be this from or".split()


class Corpus:
    """Sentence-like texts: ~40% function words (which queries drop as stopwords) and content
    words from a Zipf-Mandelbrot distribution (rank offset 30, exponent 1.1) over 50k pseudo-words,
    so no content word is in more than a few percent of texts, as in natural text."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.vocab = vocabulary(50_000, rng)
        self.weights = list(itertools.accumulate(1.0 / (i + 31) ** 1.1 for i in range(len(self.vocab))))

    def words(self, n: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.weights, k=n)

    def sentence(self) -> str:
        content = self.words(self.rng.randint(6, 14))
        out: list[str] = []
        for w in content:
            if self.rng.random() < 0.7:
                out.append(self.rng.choice(_FUNCTION_WORDS))
            out.append(w)
        return " ".join(out)

    def query(self) -> str:
        return " ".join(self.words(self.rng.randint(2, 5)))


class ClusteredEmbedder:
    """Dense, clustered 384-d unit vectors, deterministic per text (a stand-in with the shape of
    sentence-embedding data, for latency and index-recall runs where MiniLM would be too slow)."""

    def __init__(self, dim: int = 384, clusters: int = 256, spread: float = 0.7) -> None:
        gen = np.random.default_rng(0)
        self._centers = gen.standard_normal((clusters, dim)).astype(np.float32)
        self._dim = dim
        self._spread = spread

    @property
    def name(self) -> str:
        return f"clustered-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed_sync(texts)

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for text in texts:
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            gen = np.random.default_rng(seed)
            v = self._centers[seed % len(self._centers)] + self._spread * gen.standard_normal(self._dim)
            out.append((v / np.linalg.norm(v)).astype(np.float32).tolist())
        return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def ingest(total: int, rng: random.Random, store: MemoryStore, tenants: int) -> dict[str, Any]:
    """Fill `tenants` namespaces (one per tenant) with `total` items; returns the run's facts."""
    corpus = Corpus(rng)
    per_tenant = total // tenants
    namespaces = [Namespace(f"tenant-{t}", agent="bench", user=f"user-{t}") for t in range(tenants)]
    started = time.perf_counter()
    texts: dict[str, list[str]] = {}
    for ns in namespaces:
        for start in range(0, per_tenant, 2000):
            batch = [MemoryItem(corpus.sentence()) for _ in range(min(2000, per_tenant - start))]
            await store.put_many(ns, batch)
            texts.setdefault(ns.key, []).extend(item.text for item in batch)
    await store.flush()
    ingest_s = time.perf_counter() - started
    if hasattr(store, "analyze"):
        await store.analyze()  # type: ignore[attr-defined]
    return {"items": total, "tenants": tenants, "items_per_tenant": per_tenant,
            "ingest_items_per_s": round(total / ingest_s), "namespaces": namespaces, "texts": texts}  # fmt: skip


async def measure(store: MemoryStore, queries: list[tuple[Namespace, str]]) -> dict[str, Any]:
    """p50/p95 wall and CPU time of `search()` per mode; the first query of each tenant (which
    loads a RAM index) is timed separately as `first_query_ms`."""
    out: dict[str, Any] = {}
    firsts: list[float] = []
    for ns in dict.fromkeys(ns for ns, _ in queries):
        t0 = time.perf_counter()
        await store.search(ns, "warm up", k=10)
        firsts.append((time.perf_counter() - t0) * 1000)
    out["first_query_ms"] = round(max(firsts), 1)
    for mode in ("hybrid", "bm25", "vector"):
        for ns, q in queries[:20]:  # warm caches
            await store.search(ns, q, k=10, mode=mode)
        times: list[float] = []
        cpu: list[float] = []
        gc.collect()
        gc.disable()  # a collection pause is the process's, not the query's
        try:
            for ns, q in queries:
                t0, c0 = time.perf_counter(), time.thread_time()
                hits = await store.search(ns, q, k=10, mode=mode)
                cpu.append((time.thread_time() - c0) * 1000)
                times.append((time.perf_counter() - t0) * 1000)
                assert all(h.item.text for h in hits)
        finally:
            gc.enable()
        # Wall time includes waiting for a core on a shared machine; CPU time (this thread's,
        # which is where SQLite runs) is what the query itself costs.
        out[mode] = {
            "p50_ms": round(percentile(times, 0.5), 3),
            "p95_ms": round(percentile(times, 0.95), 3),
            "cpu_p50_ms": round(percentile(cpu, 0.5), 3),
            "cpu_p95_ms": round(percentile(cpu, 0.95), 3),
        }
    return out


async def latency_run(
    total: int, queries: int, rng: random.Random, store: MemoryStore, tenants: int = TENANTS
) -> dict[str, Any]:
    row = await ingest(total, rng, store, tenants)
    namespaces = row.pop("namespaces")
    row.pop("texts")
    corpus = Corpus(rng)
    qs = [(rng.choice(namespaces), corpus.query()) for _ in range(queries)]
    row.update(await measure(store, qs))
    return row


def tenant_vectors(store: SQLiteMemoryStore, ns: Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(rowids, float vectors) of one tenant's vector partition, read back from the index."""
    from bastion.memory._store import tenant_suffix

    s = tenant_suffix(ns.tenant)
    rows = store._db.execute(f"SELECT rowid, emb FROM vec_{s} WHERE ns = ?", (ns.key,)).fetchall()
    ids = np.array([r[0] for r in rows])
    mat = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
    return ids, mat / np.linalg.norm(mat, axis=1, keepdims=True)


def index_recall(store: SQLiteMemoryStore, ns: Namespace, queries: list[list[float]], k: int = 10) -> float:
    """recall@k of the store's vector search (RAM index or sqlite-vec) against exact cosine."""
    from bastion.memory._index import Filter
    from bastion.memory._store import search_scope

    ids, mat = tenant_vectors(store, ns)
    found = 0
    t = time.time() + 1e6
    for q in queries:
        qv = np.asarray(q, dtype=np.float32)
        exact = set(ids[np.argsort(-(mat @ qv))[:k]].tolist())
        s = tenant_suffix_of(ns)
        if store.search_index == "ram":
            hits = store._ram_index(s).knn(ns.key, q, k, Filter(t))
        else:
            scope = search_scope(ns, k=k, at=t, include_untrusted=False, kind=None, where=None, source=None,
                                 since=None, until=None, inherit=False)  # fmt: skip
            hits = store._knn(s, scope, q)[:k]
        found += len(exact & {r for r, _ in hits})
    return found / (k * len(queries))


def tenant_suffix_of(ns: Namespace) -> str:
    from bastion.memory._store import tenant_suffix

    return tenant_suffix(ns.tenant)


# --- conversational memory dataset -------------------------------------------------------------

PETS = [("dog", "puppy", "her"), ("cat", "kitten", "him"), ("rabbit", "bunny", "her"), ("parrot", "bird", "him")]
PET_NAMES = "Biscuit Miso Pepper Noodle Waffles Juniper Tofu Ziggy Mochi Pickles Olive Bean Sprout Clementine".split()
CITIES = ("Lisbon Bergen Porto Galway Trieste Aarhus Split Bilbao Gdansk Tallinn Valletta Cadiz Brest Hull "
          "Kiel Nantes Malmo Riga").split()  # fmt: skip
FOODS = "peanuts shellfish sesame kiwi strawberries almonds mustard celery lupin walnuts".split()
SPORTS = [("bouldering", "at the climbing gym"), ("rowing", "on the river"), ("fencing", "at the club"),
          ("judo", "at the dojo"), ("swimming", "at the lido"), ("cycling", "in the hills")]  # fmt: skip
SURNAMES = ("Okafor Lindqvist Haddad Moreau Tanaka Novak Brennan Castillo Ivanova Mensah Kowalski Ferreira "
            "Achebe Varga Sorensen Quispe").split()  # fmt: skip
DAYS = "Monday Tuesday Wednesday Thursday Friday".split()
BODY = "knee shoulder back wrist ankle eyes teeth hip".split()
CODES = "Falcon Orchid Basalt Quill Harbor Juniper Nimbus Tundra Cobalt Saffron Ember Atlas Lynx Meridian Sable".split()
MONTHS = "March April May June July September October November".split()
COUSINS = "Ana Bruno Carla Dmitri Elena Farid Greta Hugo Ines Jonas Kaia Luca Marta Nils Oona Pavel".split()
ENTITY_DISTRACTORS = 16
HOURS = "9am 10:30 noon 2pm 3:15 4pm 5:30".split()
PROFESSIONS = "dentist physiotherapist optician hairdresser vet GP accountant".split()
GADGETS = "phone tablet console headset smartwatch camera".split()
PLACES = ["near the station", "in the old town", "by the canal", "above a bakery", "next to the park"]
APPOINTMENT_DISTRACTORS = [
    "I have an appointment with the {prof} on {day}.",
    "My appointment with the {prof} got cancelled again.",
    "When is the appointment for the {thing} repair?",
    "The {prof} said my next appointment is in {month}.",
    "I keep forgetting when my {prof} appointment is.",
    "Dr. {other} retired last year, sadly.",
    "Can you book me an appointment with a {prof} for {day}?",
]
LAUNCH_DISTRACTORS = [
    "When does the new {gadget} launch?",
    "The {gadget} launch event is in {month}.",
    "Our product launch party got moved to {day}.",
    "Did you see the rocket launch on the news on {day}?",
    "The launch of the new {gadget} was delayed to {month}.",
    "The {other} team celebrated their launch on {day}.",
]
LIVE_DISTRACTORS = [
    "My cousin lives {place} now.",
    "Where do my cousins live these days? I always forget.",
    "My friend now lives {place} in {city}.",
    "We now live closer to the park than before.",
    "My other cousin moved to {city} last year.",
    "{other} from work lives {place}.",
]


def pseudo_names(n: int, seed: int) -> list[str]:
    """Rare proper names (as real surnames and project code names mostly are)."""
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize())
    return sorted(names)


SURNAMES += pseudo_names(40, 1)
CODES += pseudo_names(40, 2)
COUSINS += pseudo_names(40, 3)
FILLER_USER = [
    "The weather has been {adj} all week, I barely left the house.",
    "I tried a new {dish} recipe last night and it turned out {adj}.",
    "Work was {adj} today, too many meetings about the {thing}.",
    "We watched a documentary about {thing} yesterday, it was {adj}.",
    "My commute took forever because of the {thing} on the motorway.",
    "I'm thinking of repainting the {room} a {color} shade.",
    "The {room} still smells of {dish} from the weekend.",
    "Do you have any tips for keeping the {room} tidy?",
    "I finished the book about {thing}, the ending was {adj}.",
    "I need to buy a new {thing} before the holidays.",
]
FILLER_ASSISTANT = [
    "That sounds {adj}! Tell me more if you like.",
    "Good to hear. Anything I can help you plan for the {room}?",
    "I can suggest a few ideas about {thing} if that helps.",
    "Noted. Would you like a reminder about the {thing}?",
    "Sounds like a {adj} day. Rest well.",
]
FILL = {
    "adj": "grey lovely exhausting strange wonderful dull hectic calm surprising bland".split(),
    "dish": "lentil soup risotto curry lasagne tacos dumplings ramen paella".split(),
    "thing": "budget roadworks garden printer volcanoes bees quarterly report umbrella sofa laptop".split(),
    "room": "kitchen hallway bedroom study bathroom attic".split(),
    "color": "green blue yellow terracotta white".split(),
}


@dataclass
class Question:
    conv: int
    text: str
    evidence: str  # id of the evidence turn
    kind: str  # "paraphrase" (semantic) or "entity" (lexical)


def fill(template: str, rng: random.Random) -> str:
    return template.format(**{k: rng.choice(v) for k, v in FILL.items()})


def others(pool: list[str], value: str, rng: random.Random, n: int) -> list[str]:
    return rng.sample([p for p in pool if p != value], n)


def fact_block(rng: random.Random) -> list[tuple[str, list[str], str, str]]:
    """(evidence, distractors, question, kind) for one conversation. "paraphrase" questions
    share at most one word with their evidence, and have distractors sharing the question's
    words; "entity" questions name a rare entity, and have many near-identical distractors
    about other entities (hard for vectors)."""
    facts: list[tuple[str, list[str], str, str]] = []
    pet, syn, pron = rng.choice(PETS)
    name = rng.choice(PET_NAMES)
    facts.append((
        rng.choice([f"We adopted a {pet} last spring and named {pron} {name}.",
                    f"{name}, our new {pet}, keeps chewing the sofa cushions."]),
        ["Who was that on the phone earlier? I forgot the caller's name.",
         f"That {syn} clip you sent me was so funny, I watched it twice.",
         f"My neighbour's {pet} {rng.choice(others(PET_NAMES, name, rng, 1))} barks at the postman."],
        rng.choice([f"What is my {syn} called?", f"What name did I give my {syn}?"]),
        "paraphrase",
    ))  # fmt: skip
    city = rng.choice(CITIES)
    facts.append((
        rng.choice([f"I grew up in {city}, a small town right by the harbour.",
                    f"My childhood was spent in {city}; I still miss the sea air."]),
        ["Originally I wanted to take the train, but driving was faster.",
         "The town council finally fixed the potholes on our street.",
         f"We spent a lovely holiday in {rng.choice(others(CITIES, city, rng, 1))} two summers ago."],
        rng.choice(["Where am I originally from?", "What town am I from?"]),
        "paraphrase",
    ))  # fmt: skip
    food = rng.choice(FOODS)
    facts.append((
        rng.choice([f"I break out in hives whenever I eat {food}.",
                    f"Last time I had {food} my throat swelled up; it's the one food I can't touch."]),
        ["What food are we bringing to the picnic on Sunday?",
         "My colleague is allergic to cats, poor thing.",
         f"I bought {rng.choice(others(FOODS, food, rng, 1))} at the market, they looked fresh."],
        rng.choice(["Which food am I allergic to?", "What should I never eat?"]),
        "paraphrase",
    ))  # fmt: skip
    sport, place = rng.choice(SPORTS)
    facts.append((
        rng.choice([f"Every Saturday morning I go {sport} {place}.",
                    f"I've been doing {sport} {place} for years, it clears my head."]),
        ["Did you catch the sport highlights at the weekend?",
         "On Saturday morning the market was packed with tourists.",
         f"My brother tried {rng.choice([s for s, _ in SPORTS if s != sport])} once and hated it."],
        rng.choice(["What sport do I practise at the weekend?", "What do I do on Saturday mornings for exercise?"]),
        "paraphrase",
    ))  # fmt: skip

    def variants(templates: list[str], n: int, **pools: list[str]) -> list[str]:
        out: set[str] = set()
        while len(out) < n:
            out.add(rng.choice(templates).format(**{k: rng.choice(v) for k, v in pools.items()}))
        return sorted(out)

    doc, day, hour = rng.choice(SURNAMES), rng.choice(DAYS), rng.choice(HOURS)
    facts.append((
        rng.choice([f"Dr. {doc}'s office moved my slot to {day} at {hour}.",
                    f"Got a call from Dr. {doc}: {day} at {hour} it is."]),
        variants(APPOINTMENT_DISTRACTORS, ENTITY_DISTRACTORS, prof=PROFESSIONS, day=DAYS, month=MONTHS,
                 other=others(SURNAMES, doc, rng, 5), thing=FILL["thing"]),
        f"When is my appointment with Dr. {doc}?",
        "entity",
    ))  # fmt: skip
    code, month = rng.choice(CODES), rng.choice(MONTHS)
    facts.append((
        rng.choice([f"{code} slipped to {month} because of the audit.",
                    f"Bad news: {code} won't ship before {month}."]),
        variants(LAUNCH_DISTRACTORS, ENTITY_DISTRACTORS, gadget=GADGETS, month=MONTHS, day=DAYS,
                 other=others(CODES, code, rng, 5)),
        f"When does {code} launch now?",
        "entity",
    ))  # fmt: skip
    cousin, ccity = rng.choice(COUSINS), rng.choice(CITIES)
    facts.append((
        rng.choice([f"{cousin} finally found a flat in {ccity}.",
                    f"{cousin} says the rent in {ccity} is outrageous."]),
        variants(LIVE_DISTRACTORS, ENTITY_DISTRACTORS, city=CITIES, place=PLACES,
                 other=others(COUSINS, cousin, rng, 5)),
        f"Where does my cousin {cousin} live now?",
        "entity",
    ))  # fmt: skip
    return facts


def conversational_dataset(conversations: int, sessions: int, turns: int, seed: int = 7):
    """Multi-session dialogues; each fact is stated once (its evidence turn), with distractor
    turns that share the question's words (beating BM25) or its meaning (beating vectors)."""
    rng = random.Random(seed)
    items: dict[int, list[MemoryItem]] = {}
    questions: list[Question] = []
    for c in range(conversations):
        facts = fact_block(rng)
        lines: list[tuple[str, str, str | None]] = []  # (role, text, fact key)
        for f, (evidence, distractors, question, kind) in enumerate(facts):
            lines.append(("user", evidence, f"c{c}f{f}"))
            lines.extend(("user", d, None) for d in distractors)
            questions.append(Question(c, question, f"c{c}f{f}", kind))
        while len(lines) < sessions * turns:
            role = rng.choice(["user", "assistant"])
            lines.append((role, fill(rng.choice(FILLER_USER if role == "user" else FILLER_ASSISTANT), rng), None))
        rng.shuffle(lines)
        conv_items = []
        for i, (role, text, key) in enumerate(lines):
            session = i // turns
            item = MemoryItem(text, metadata={"role": role, "session": session},
                              valid_from=1_700_000_000.0 + session * 86_400 + i)  # fmt: skip
            if key:
                item.id = key
            conv_items.append(item)
        items[c] = conv_items
    return items, questions


async def quality_run(conversations: int, sessions: int, turns: int) -> dict[str, Any]:
    items, questions = conversational_dataset(conversations, sessions, turns)
    embedder = MiniLMEmbedder()
    t0 = time.perf_counter()
    (probe,) = await embedder.embed(["warm up"])
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteMemoryStore(Path(tmp) / "quality.db", embedder, batch_size=64)
        try:
            for c, conv in items.items():
                await store.put_many(Namespace("bench", user=f"conv-{c}"), conv)
            await store.flush()
            embed_s = time.perf_counter() - t0
            total = sum(len(v) for v in items.values())
            ks = (1, 5, 10)
            result: dict[str, Any] = {"conversations": conversations, "turns": total, "questions": len(questions),
                                      "minilm_texts_per_s": round(total / embed_s, 1)}  # fmt: skip
            unstable = 0
            for q in questions:
                conv_ns = Namespace("bench", user=f"conv-{q.conv}")
                top1 = await store.search(conv_ns, q.text, k=1)
                top10 = await store.search(conv_ns, q.text, k=10)
                unstable += [h.item.id for h in top1] != [h.item.id for h in top10[:1]]
            result["hybrid_k1_differs_from_k10_top1"] = round(unstable / len(questions), 3)
            for mode in ("bm25", "vector", "hybrid"):
                hits_at = {k: 0 for k in ks}
                by_kind: dict[str, list[bool]] = {}
                for q in questions:
                    hits = await store.search(Namespace("bench", user=f"conv-{q.conv}"), q.text, k=10, mode=mode)
                    ids = [h.item.id for h in hits]
                    rank = ids.index(q.evidence) + 1 if q.evidence in ids else 99
                    for k in ks:
                        hits_at[k] += rank <= k
                    by_kind.setdefault(q.kind, []).append(rank <= 10)
                result[mode] = {f"recall@{k}": round(hits_at[k] / len(questions), 3) for k in ks}
                for kind, flags in by_kind.items():
                    result[mode][f"recall@10_{kind}"] = round(sum(flags) / len(flags), 3)
            # recall@10 of the binary-quantised index vs exact cosine, on the MiniLM vectors
            qvecs = embedder.embed_sync([q.text for q in questions])
            qtimes = []
            for q in questions[:50]:
                s = time.perf_counter()
                embedder.embed_sync([q.text])
                qtimes.append((time.perf_counter() - s) * 1000)
            result["minilm_query_embed_p50_ms"] = round(statistics.median(qtimes), 2)
            recall_hits = 0
            for c in items:
                ns = Namespace("bench", user=f"conv-{c}")
                conv_q = [v for q, v in zip(questions, qvecs, strict=True) if q.conv == c]
                recall_hits += index_recall(store, ns, conv_q) * len(conv_q)
            result["index_recall@10_minilm"] = round(recall_hits / len(questions), 4)
            assert len(probe) == 384
        finally:
            await store.close()
    return result


async def ingestion_run(items: int, repeats: int, baseline_items: int) -> dict[str, Any]:
    """Ingestion throughput with the default embedder (MiniLM, as `SQLiteMemoryStore()` uses it):
    `put_many` + `flush()` of short conversational turns into a fresh SQLite file, timed from the
    first write until every vector is stored (`items_per_cpu_s`: per second of this process's
    CPU time, all threads; on a shared machine the wall-clock rate mostly measures the
    neighbours, the CPU rate times the cores is what an idle machine gives if threads scale
    perfectly); the model is loaded (and its int8 copy built)
    before the clock starts. `baseline` is the same with `MiniLMEmbedder(quantize=False)`
    (float32 matrix products, as the packaged model runs)."""
    convs, _ = conversational_dataset(max(1, items // 150 + 1), sessions=5, turns=30, seed=13)
    texts = [it.text for conv in convs.values() for it in conv][:items]
    from tokenizers import Tokenizer

    from bastion.memory._embedders import _find_minilm_files  # pyright: ignore[reportPrivateUsage]

    tokenizer = Tokenizer.from_file(str(_find_minilm_files()[1]))
    tokenizer.no_padding()  # the file pads to 128
    tokens = statistics.mean(len(e.ids) for e in tokenizer.encode_batch(texts))

    cpu: list[float] = []

    async def once(embedder: Any, n: int) -> float:
        await embedder.embed(["warm up"])
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteMemoryStore(Path(tmp) / "ingest.db", embedder, batch_size=256)
            try:
                t0, c0 = time.perf_counter(), time.process_time()
                for start in range(0, n, 500):
                    await store.put_many(
                        Namespace("bench", user="u"), [MemoryItem(t) for t in texts[start : start + 500]]
                    )
                await store.flush()
                cpu.append(n / (time.process_time() - c0))
                return n / (time.perf_counter() - t0)
            finally:
                await store.close()

    embedder = MiniLMEmbedder()
    rates = [round(await once(embedder, len(texts))) for _ in range(repeats)]
    per_cpu_s = round(max(cpu))
    baseline = round(await once(MiniLMEmbedder(quantize=False), baseline_items)) if baseline_items else None
    return {"items": len(texts), "avg_chars": round(statistics.mean(map(len, texts)), 1),
            "avg_tokens": round(tokens, 1), "items_per_s": rates, "best_items_per_s": max(rates),
            "threads": embedder.threads,
            "baseline_items_per_s": baseline, "items_per_cpu_s": per_cpu_s,
            "load": round(os.getloadavg()[0], 1)}  # fmt: skip


async def pg_index_recall(store: Any, ns: Namespace, queries: list[list[float]], k: int = 10) -> float:
    """recall@k of pgvector's HNSW index against the same query with index scans disabled."""
    from bastion._pg import vector_literal
    from bastion.memory._store import tenant_suffix

    part = f"bastion_memory_items_{tenant_suffix(ns.tenant)}"
    sql = f"SELECT id FROM {part} WHERE embedding IS NOT NULL AND ns = %s ORDER BY embedding <=> %s::vector LIMIT %s"
    found = 0
    pool = await store._conn_pool()
    async with pool.connection() as conn:
        for q in queries:
            approx = {r[0] for r in await (await conn.execute(sql, (ns.key, vector_literal(q), k))).fetchall()}
            async with conn.transaction():
                await conn.execute("SET LOCAL enable_indexscan = off")
                exact = {r[0] for r in await (await conn.execute(sql, (ns.key, vector_literal(q), k))).fetchall()}
            found += len(approx & exact)
    return found / (k * len(queries))


async def postgres_run(
    rng: random.Random, total: int, queries: int, tenants: int = TENANTS, ef_search: int = 64
) -> dict[str, Any]:
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="bastion-xdg-"))
    from bastion.memory import PostgresMemoryStore
    from bastion.testing._postgres import postgres_server

    with postgres_server() as url:
        # Big embedding batches: one UPDATE per batch (the HNSW insertions are the rest).
        store = PostgresMemoryStore(url, ClusteredEmbedder(), max_size=2, ef_search=ef_search, batch_size=500,
                                    search_index="postgres")  # fmt: skip
        try:
            row = await latency_run(total, queries, rng, store, tenants)
            row["ef_search"] = ef_search
            corpus = Corpus(rng)
            qv = await store.embedder.embed([corpus.query() for _ in range(100)])
            ns = Namespace("tenant-0", agent="bench", user="user-0")
            row["index_recall@10_clustered"] = round(await pg_index_recall(store, ns, qv), 4)
            return row
        finally:
            await store.close()


async def exact_recall(store: MemoryStore, ns: Namespace, texts: list[str], queries: list[str], k: int = 10) -> float:
    """recall@k of `store.search(mode="vector")` against exact cosine over the namespace's items
    (the texts' own vectors: the embedder is deterministic), through the public API."""
    embedder = ClusteredEmbedder()
    mat = np.asarray(embedder.embed_sync(texts), np.float32)
    found = 0
    for q in queries:
        (qv,) = embedder.embed_sync([q])
        exact = {texts[i] for i in np.argsort(-(mat @ np.asarray(qv, np.float32)))[:k]}
        found += len(exact & {h.item.text for h in await store.search(ns, q, k=k, mode="vector")})
    return found / (k * len(queries))


async def postgres_ram_run(total: int, tenants: int, queries: int, seed: int = 1234) -> dict[str, Any]:
    """PostgreSQL searched through its RAM index (the default), next to the SQLite store's RAM
    index on the same items and queries: latency, vector recall@10 against exact cosine (both
    stores), and how often the two backends return the same hybrid top 10."""
    import dataclasses

    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="bastion-xdg-"))
    from bastion.memory import PostgresMemoryStore
    from bastion.testing._postgres import postgres_server

    rng = random.Random(seed)
    corpus = Corpus(rng)
    per_tenant = total // tenants
    namespaces = [Namespace(f"tenant-{t}", agent="bench", user=f"user-{t}") for t in range(tenants)]
    items = {ns: [MemoryItem(corpus.sentence(), id=f"m{t}-{i}") for i in range(per_tenant)]
             for t, ns in enumerate(namespaces)}  # fmt: skip
    qs = [(rng.choice(namespaces), corpus.query()) for _ in range(queries)]
    recall_qs = [corpus.query() for _ in range(100)]
    row: dict[str, Any] = {"items": total, "tenants": tenants, "items_per_tenant": per_tenant, "search": "ram"}
    with postgres_server() as url, tempfile.TemporaryDirectory() as tmp:
        store = PostgresMemoryStore(url, ClusteredEmbedder(), max_size=2, batch_size=2000)
        lite = SQLiteMemoryStore(Path(tmp) / "same.db", ClusteredEmbedder())
        try:
            # The RAM index never reads pgvector's HNSW or the GIN index: such a store does not build them.
            started = time.perf_counter()
            for ns, batch in items.items():
                for lo in range(0, len(batch), 2000):
                    await store.put_many(ns, [dataclasses.replace(it) for it in batch[lo : lo + 2000]])
            await store.flush()
            row["ingest_items_per_s"] = round(total / (time.perf_counter() - started))
            await store.analyze()
            for ns, batch in items.items():
                for lo in range(0, len(batch), 2000):
                    await lite.put_many(ns, [dataclasses.replace(it) for it in batch[lo : lo + 2000]])
            await lite.flush()
            # A fresh store, as a worker starting up: warm() loads every tenant in a thread.
            await store.close()
            store = PostgresMemoryStore(url, ClusteredEmbedder(), max_size=2)
            stall, warming = 0.0, True

            async def ticker() -> None:  # how long the event loop goes unserved while warm() loads
                nonlocal stall
                while warming:
                    t = time.perf_counter()
                    await asyncio.sleep(0.001)
                    stall = max(stall, time.perf_counter() - t - 0.001)

            tick = asyncio.create_task(ticker())
            t0 = time.perf_counter()
            await store.warm()
            row["warm_s"] = round(time.perf_counter() - t0, 2)
            warming = False
            await tick
            row["warm_max_loop_stall_ms"] = round(stall * 1000, 1)
            row["load"] = round(os.getloadavg()[0], 1)
            row.update(await measure(store, qs))
            row["sqlite_same_data"] = await measure(lite, qs)
            texts0 = [it.text for it in items[namespaces[0]]]
            row["recall@10_vs_exact"] = round(await exact_recall(store, namespaces[0], texts0, recall_qs), 4)
            row["sqlite_recall@10_vs_exact"] = round(await exact_recall(lite, namespaces[0], texts0, recall_qs), 4)
            same = 0
            for ns, q in qs[:200]:
                a = [h.item.id for h in await store.search(ns, q, k=10)]
                b = [h.item.id for h in await lite.search(ns, q, k=10)]
                same += a == b
            row["hybrid_top10_same_as_sqlite"] = round(same / min(200, len(qs)), 3)
        finally:
            await store.close()
            await lite.close()
    return row


# --- the peer: LangGraph's long-term memory store ----------------------------------------------

PEER_QUERY_BUDGET_S = 60.0
"""Stop timing the peer's queries after this long (at 100k items one query takes seconds)."""


def langgraph_peer(
    python: Path, facts: dict[str, Any], texts: dict[str, list[str]], queries: list[tuple[Namespace, str]]
) -> dict[str, Any]:
    """Run the same corpus and queries through LangGraph's `InMemoryStore` with its vector
    index (LangGraph's stores have no full-text search), in `.bench-venv`, where LangGraph is."""
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data.json", Path(tmp) / "out.json"
        data.write_text(json.dumps({"texts": texts, "queries": [[ns.key, q] for ns, q in queries]}))
        subprocess.run([str(python), __file__, "--langgraph-peer", str(data), str(out)], check=True, timeout=1800)
        return {**facts, **json.loads(out.read_text())}


def run_langgraph_peer(data_path: Path, out_path: Path) -> None:
    from langgraph.store.base import PutOp
    from langgraph.store.memory import InMemoryStore

    data = json.loads(data_path.read_text())
    embedder = ClusteredEmbedder()
    store = InMemoryStore(index={"dims": embedder.dim, "embed": embedder.embed_sync, "fields": ["text"]})
    started = time.perf_counter()
    for ns, texts in data["texts"].items():
        for start in range(0, len(texts), 2000):
            store.batch([PutOp((ns,), f"{start + i}", {"text": t}) for i, t in enumerate(texts[start : start + 2000])])
    ingest_s = time.perf_counter() - started
    times: list[float] = []
    deadline = time.perf_counter() + PEER_QUERY_BUDGET_S
    for ns, q in data["queries"]:
        t0 = time.perf_counter()
        hits = store.search((ns,), query=q, limit=10)
        times.append((time.perf_counter() - t0) * 1000)
        assert len(hits) == 10
        if time.perf_counter() > deadline and len(times) >= 20:
            break
    out_path.write_text(json.dumps({"peer": "langgraph InMemoryStore (vector index)", "queries_timed": len(times),
                                    "ingest_items_per_s": round(sum(map(len, data["texts"].values())) / ingest_s),
                                    "vector": {"p50_ms": round(percentile(times, 0.5), 3),
                                               "p95_ms": round(percentile(times, 0.95), 3)}}))  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--tenant-size",
        type=int,
        default=None,
        help="also run one tenant of this many items (default 100000; 8000 with --quick; 0: skip)",
    )
    parser.add_argument("--ef-search", type=int, default=64, help="pgvector hnsw.ef_search")
    parser.add_argument("--skip-quality", action="store_true", help="skip the MiniLM conversational dataset")
    parser.add_argument("--skip-ingest", action="store_true", help="skip the MiniLM ingestion throughput run")
    parser.add_argument("--no-peer", action="store_true", help="skip LangGraph's store (run from .bench-venv)")
    parser.add_argument("--langgraph-peer", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.langgraph_peer:
        run_langgraph_peer(*args.langgraph_peer)
        return
    peer_python = None if args.no_peer else ensure_bench_venv(ROOT / "bench" / "requirements.txt")
    sizes = [2_000, 8_000] if args.quick else [10_000, 100_000]
    tenant_size = args.tenant_size if args.tenant_size is not None else (8_000 if args.quick else 100_000)
    runs = [(total, TENANTS) for total in sizes] + ([(tenant_size, 1)] if tenant_size else [])
    queries = 100 if args.quick else 400
    rng = random.Random(42)
    report: dict[str, Any] = {"machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
                              "python": sys.version.split()[0], "latency_sqlite": [], "latency_langgraph": [],
                              "notes": []}  # fmt: skip
    for total, tenants in runs:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "lat.db"
            store = SQLiteMemoryStore(path, ClusteredEmbedder(), index="binary")
            try:
                facts = await ingest(total, rng, store, tenants)
                namespaces = facts.pop("namespaces")
                texts = facts.pop("texts")
                corpus = Corpus(rng)
                qs = [(rng.choice(namespaces), corpus.query()) for _ in range(queries)]
                qv = await store.embedder.embed([corpus.query() for _ in range(100)])
                # The same file searched both ways: through the RAM index (the default) and
                # by FTS5 + sqlite-vec directly (a second connection, as another process would).
                for search_index in ("ram", "sqlite"):
                    searcher = store if search_index == "ram" else SQLiteMemoryStore(
                        path, ClusteredEmbedder(), index="binary", search_index="sqlite")  # fmt: skip
                    try:
                        row = {**facts, "search": search_index, **await measure(searcher, qs)}
                        row["index_recall@10_clustered"] = round(index_recall(searcher, namespaces[0], qv), 4)
                    finally:
                        if searcher is not store:
                            await searcher.close()
                    report["latency_sqlite"].append(row)
                    print(f"latency {total} ({search_index}): {row}", flush=True)
                if peer_python is not None:
                    peer = langgraph_peer(peer_python, facts, texts, qs)
                    report["latency_langgraph"].append(peer)
                    print(f"langgraph {total}: {peer}", flush=True)
            finally:
                await store.close()
    if args.postgres:
        # The RAM index (default) at 100k items in one tenant and in 4 x 25k, next to SQLite's on
        # the same data; the SQL path (ts_rank_cd + HNSW) at the small size, for reference.
        ram_size = tenant_size or sizes[-1]
        report["latency_postgres_ram"] = []
        for total, tenants in [(ram_size, 1), (ram_size, TENANTS)]:
            report["latency_postgres_ram"].append(await postgres_ram_run(total, tenants, queries))
            print(f"postgres ram {total} / {tenants}: {report['latency_postgres_ram'][-1]}", flush=True)
        report["latency_postgres"] = [await postgres_run(rng, sizes[0], queries, TENANTS, args.ef_search)]
        print(f"postgres sql {sizes[0]}: {report['latency_postgres'][-1]}", flush=True)
    if not args.skip_ingest:
        report["ingestion"] = await ingestion_run(1000 if args.quick else 3000, 3 if args.quick else 5,
                                                  300 if args.quick else 1000)  # fmt: skip
        print(f"ingestion: {report['ingestion']}", flush=True)
    if not args.skip_quality:
        convs = 6 if args.quick else 20
        report["quality"] = await quality_run(convs, sessions=5, turns=30)
        print(f"quality: {report['quality']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)


def print_table(r: dict[str, Any]) -> None:
    print(f"\nmachine: {r['machine']}")
    print("\n| backend (search) | items (tenants x per tenant) | mode | p50 ms | p95 ms | CPU p50 ms | CPU p95 ms "
          "| vector recall@10 | first query ms | ingest/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for backend in ("sqlite", "postgres"):
        for row in r.get(f"latency_{backend}", []):
            size = f"{row['items']:,} ({row['tenants']} x {row['items_per_tenant']:,})"
            name = f"{backend} ({row['search']})" if "search" in row else f"{backend} (hnsw, ef {row['ef_search']})"
            for mode in ("hybrid", "bm25", "vector"):
                m = row[mode]
                recall = row["index_recall@10_clustered"] if mode == "vector" else ""
                first = row["first_query_ms"] if mode == "hybrid" else ""
                cells = [name, size, mode, m["p50_ms"], m["p95_ms"], m["cpu_p50_ms"], m["cpu_p95_ms"], recall,
                         first, f"{row['ingest_items_per_s']:,}"]  # fmt: skip
                print("| " + " | ".join(str(c) for c in cells) + " |")
    ours = {(row["items"], row["tenants"]): row for row in r.get("latency_sqlite", []) if row["search"] == "ram"}
    for row in r.get("latency_langgraph", []):
        size = f"{row['items']:,} ({row['tenants']} x {row['items_per_tenant']:,})"
        m, mine = row["vector"], ours.get((row["items"], row["tenants"]))
        ratio = f" ({m['p95_ms'] / mine['vector']['p95_ms']:.0f}x Bastion's vector p95)" if mine else ""
        print(f"| langgraph InMemoryStore | {size} | vector | {m['p50_ms']} | {m['p95_ms']}{ratio} | | | 1.0 (exact) "
              f"| | {row['ingest_items_per_s']:,} |")  # fmt: skip
    print("\nvector recall@10: the store's vector search vs exact cosine, clustered synthetic vectors (a hard case "
          "for quantised codes); first query: a tenant's first search (loads its RAM index)")  # fmt: skip
    pg_ram = r.get("latency_postgres_ram", [])
    if pg_ram:
        print("\n| PostgreSQL RAM index vs SQLite RAM index, same items and queries | items (tenants x per tenant) "
              "| hybrid p50 ms | hybrid p95 ms | bm25 p95 ms | vector p95 ms | vector recall@10 vs exact "
              "| hybrid top 10 equal | warm-up s (longest event-loop stall) | ingest/s | load |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in pg_ram:
            size = f"{row['items']:,} ({row['tenants']} x {row['items_per_tenant']:,})"
            lite = row["sqlite_same_data"]
            print(f"| postgres (ram) | {size} | {row['hybrid']['p50_ms']} | **{row['hybrid']['p95_ms']}** | "
                  f"{row['bm25']['p95_ms']} | {row['vector']['p95_ms']} | {row['recall@10_vs_exact']} | "
                  f"{row['hybrid_top10_same_as_sqlite']:.0%} | {row['warm_s']} ({row['warm_max_loop_stall_ms']} ms) | "
                  f"{row['ingest_items_per_s']:,} | "
                  f"{row['load']} |")  # fmt: skip
            print(f"| sqlite (ram) | {size} | {lite['hybrid']['p50_ms']} | {lite['hybrid']['p95_ms']} | "
                  f"{lite['bm25']['p95_ms']} | {lite['vector']['p95_ms']} | {row['sqlite_recall@10_vs_exact']} "
                  "| | | | |")  # fmt: skip
    ing = r.get("ingestion")
    if ing is not None:
        rates = ing["items_per_s"]
        print(f"\n| ingestion, default embedder (MiniLM int8, {ing['threads']} threads) | items | avg chars / tokens "
              "| items/s (each run; best) | items per CPU-second | quantize=False | load |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        print(f"| put_many + flush, SQLite | {ing['items']:,} | {ing['avg_chars']} / {ing['avg_tokens']} | "
              f"{', '.join(f'{x:,}' for x in rates)}; **{max(rates):,}** | "
              f"{ing['items_per_cpu_s']:,} | {ing['baseline_items_per_s']} | "
              f"{ing['load']} |")  # fmt: skip
    q = r.get("quality")
    if q is None:
        return
    print(f"\nconversational memory: {q['conversations']} dialogues, {q['turns']} turns, {q['questions']} questions "
          f"(MiniLM int8, {q['minilm_texts_per_s']} texts/s, query embed p50 {q['minilm_query_embed_p50_ms']} ms; "
          f"RAM index recall@10 vs exact: {q['index_recall@10_minilm']}; hybrid search(k=1) differs from "
          f"search(k=10)[0] for {q['hybrid_k1_differs_from_k10_top1']:.0%} of questions)")  # fmt: skip
    print("\n| retrieval | recall@1 | recall@5 | recall@10 | recall@10 paraphrase qs | recall@10 entity qs |")
    print("|---|---|---|---|---|---|")
    for mode in ("bm25", "vector", "hybrid"):
        m = q[mode]
        print(f"| {mode} | {m['recall@1']} | {m['recall@5']} | {m['recall@10']} | "
              f"{m['recall@10_paraphrase']} | {m['recall@10_entity']} |")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
