"""Ingestion: chunkers, loaders (text, markdown, HTML, a hand-written PDF), idempotent re-ingest."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bastion.errors import UserError
from bastion.memory import (
    Document,
    MemoryStore,
    Namespace,
    chunk_markdown,
    chunk_tokens,
    ingest,
    load_document,
    load_html,
    load_pdf,
)


class Words:
    def count(self, text: str) -> int:
        return len(text.split())


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page (offsets computed)."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids: list[str] = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        content_no = len(objects) + 2
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_no} 0 R "
            "/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>".encode()
        )
        kids.append(f"{len(objects)} 0 R")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_chunk_tokens_windows_overlap_and_cover_everything() -> None:
    words = [f"w{i}" for i in range(100)]
    chunks = chunk_tokens(" ".join(words), max_tokens=30, overlap=5, counter=Words())
    assert all(len(c.text.split()) <= 30 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for a, b in itertools.pairwise(chunks):
        assert a.text.split()[-5:] == b.text.split()[:5]  # overlap of 5 tokens
    seen = {w for c in chunks for w in c.text.split()}
    assert seen == set(words)
    assert chunk_tokens("", counter=Words()) == []
    with pytest.raises(UserError, match="overlap"):
        chunk_tokens("a b", max_tokens=4, overlap=4)


def test_chunk_markdown_by_headings_with_paths() -> None:
    md = """intro line

# Guide
guide text

## Install
pip install it

```python
# not a heading
x = 1
```

## Use
run it
"""
    chunks = chunk_markdown(md)
    assert [c.heading for c in chunks] == [None, "Guide", "Guide > Install", "Guide > Use"]
    assert chunks[2].text.startswith("Guide > Install\n\npip install it") and "# not a heading" in chunks[2].text
    big = chunk_markdown("# Big\n" + "word " * 100, max_tokens=30, counter=Words())
    assert len(big) > 3 and all(c.heading == "Big" for c in big)


def test_html_loader_keeps_visible_text() -> None:
    text, title = load_html(
        "<html><head><title>Prices</title><style>p{}</style></head>"
        "<body><nav>menu</nav><p>Plan A costs 10 EUR.</p><script>evil()</script><p>Plan B: 20 EUR</p></body></html>"
    )
    assert title == "Prices"
    assert text == "Plan A costs 10 EUR.\nPlan B: 20 EUR"


def test_pdf_loader_reads_every_page(tmp_path: Path) -> None:
    pdf = make_pdf(["The warranty lasts two years", "Returns need a receipt"])
    assert load_pdf(pdf) == "The warranty lasts two years\n\nReturns need a receipt"
    (tmp_path / "policy.pdf").write_bytes(pdf)
    doc = load_document(tmp_path / "policy.pdf", doc_id="policy")
    assert doc.format == "pdf" and "warranty" in doc.text and doc.id == "policy"
    (tmp_path / "broken.pdf").write_bytes(b"not a pdf at all")
    with pytest.raises(UserError, match="cannot read PDF"):
        load_document(tmp_path / "broken.pdf")


def test_load_document_by_suffix_and_errors(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# T\nbody")
    (tmp_path / "b.html").write_text("<title>X</title><p>hello</p>")
    assert load_document(tmp_path / "a.md").format == "markdown"
    html = load_document(tmp_path / "b.html")
    assert (html.format, html.title, html.text) == ("html", "X", "hello")
    (tmp_path / "c.xyz").write_text("?")
    with pytest.raises(UserError, match="format="):
        load_document(tmp_path / "c.xyz")
    with pytest.raises(UserError, match="no such file"):
        load_document(tmp_path / "missing.txt")


async def test_reingest_is_idempotent_and_replaces_changed_documents(store: MemoryStore, ns: Namespace) -> None:
    doc = Document("handbook", "# Leave\nTwenty vacation days per year.\n\n# Travel\nEconomy class only.",
                   format="markdown")  # fmt: skip
    first = await ingest(store, ns, doc)
    assert (first.status, first.chunks) == ("added", 2)
    assert (await ingest(store, ns, doc)).status == "unchanged"
    hits = await store.search(ns, "vacation days", mode="bm25")
    assert hits[0].item.doc_id == "handbook" and hits[0].item.metadata["heading"] == "Leave"
    changed = Document("handbook", "# Leave\nThirty vacation days per year.", format="markdown")
    second = await ingest(store, ns, changed)
    assert (second.status, second.chunks, second.removed) == ("replaced", 1, 2)
    await store.flush()
    for mode in ("bm25", "vector", "hybrid"):
        texts = [h.item.text for h in await store.search(ns, "vacation days economy class", mode=mode)]
        assert texts == ["Leave\n\nThirty vacation days per year."], mode


async def test_bad_document_loses_nothing(store: MemoryStore, ns: Namespace) -> None:
    await ingest(store, ns, Document("faq", "Support answers within one day."))
    with pytest.raises(UserError, match="no text"):
        await ingest(store, ns, Document("faq", "   "))
    with pytest.raises(UserError, match="needs an id"):
        await ingest(store, ns, Document("", "text"))
    hits = await store.search(ns, "support answers", mode="bm25")
    assert [h.item.text for h in hits] == ["Support answers within one day."]


async def test_ingest_labels_untrusted_sources(store: MemoryStore, ns: Namespace) -> None:
    doc = Document("page", "Crawled page says the CEO approved all refunds.", source="https://example.test/p")
    await ingest(store, ns, doc, trust="untrusted")
    assert await store.search(ns, "refunds approved", mode="bm25") == []
    (hit,) = await store.search(ns, "refunds approved", mode="bm25", include_untrusted=True)
    assert hit.item.trust == "untrusted" and hit.item.provenance["source"] == "https://example.test/p"
