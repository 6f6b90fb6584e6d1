"""Ingestion: load a document (text, markdown, HTML, PDF), cut it into chunks (by tokens with
overlap, or by markdown headings), and store the chunks as `kind="document"` memories.

Re-ingesting is idempotent: a document is identified by its id and its content hash; the
same content again is a no-op, changed content replaces all of the document's old chunks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bastion.errors import MissingExtraError, UserError
from bastion.memory._store import MemoryStore, check_item
from bastion.memory._tokens import EstimateCounter, TokenCounter
from bastion.memory._types import MemoryItem, Namespace
from bastion.types import Trust

Format = Literal["text", "markdown", "html", "pdf"]


@dataclass(slots=True)
class Document:
    id: str
    text: str
    format: Format = "text"
    title: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(slots=True)
class Chunk:
    text: str
    index: int
    heading: str | None = None  # the markdown heading path ("Guide > Install") it sits under


@dataclass(slots=True)
class IngestResult:
    doc_id: str
    status: Literal["added", "replaced", "unchanged"]
    chunks: int
    removed: int = 0


Chunker = Callable[[str], list[Chunk]]

# --- chunkers ---------------------------------------------------------------------------------

_WORDS = re.compile(r"\S+\s*")


def chunk_tokens(
    text: str, max_tokens: int = 256, overlap: int = 32, *, counter: TokenCounter | None = None
) -> list[Chunk]:
    """Consecutive windows of at most `max_tokens` tokens (whole words), each starting
    `overlap` tokens before the previous one ended, so a sentence cut at a border is whole in
    one of the two chunks."""
    if max_tokens < 1 or overlap < 0 or overlap >= max_tokens:
        raise UserError(f"need max_tokens >= 1 and 0 <= overlap < max_tokens (got {max_tokens}, {overlap})")
    counter = counter or EstimateCounter(margin=0.0)
    words = _WORDS.findall(text)
    sizes = [max(1, counter.count(w)) for w in words]
    chunks: list[Chunk] = []
    start = 0
    while start < len(words):
        end, used = start, 0
        while end < len(words) and (used + sizes[end] <= max_tokens or end == start):
            used += sizes[end]
            end += 1
        chunk = "".join(words[start:end]).strip()
        if chunk:
            chunks.append(Chunk(chunk, len(chunks)))
        if end >= len(words):
            break
        back, back_tokens = end, 0
        while back > start + 1 and back_tokens + sizes[back - 1] <= overlap:
            back -= 1
            back_tokens += sizes[back]
        start = back
    return chunks


_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def chunk_markdown(text: str, max_tokens: int = 512, *, counter: TokenCounter | None = None) -> list[Chunk]:
    """One chunk per section under a markdown heading, prefixed by its heading path; sections
    longer than `max_tokens` are split further by tokens. Fenced code is never read as headings."""
    sections: list[tuple[list[str], list[str]]] = []
    path: list[str] = []
    lines: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            sections.append((list(path), lines))
            level = len(match.group(1))
            path = [*path[: level - 1], match.group(2)]
            lines = []
        else:
            lines.append(line)
    sections.append((path, lines))
    chunks: list[Chunk] = []
    for heading_path, body in sections:
        content = "\n".join(body).strip()
        if not content:
            continue
        heading = " > ".join(heading_path) or None
        prefix = f"{heading}\n\n" if heading else ""
        for piece in chunk_tokens(content, max_tokens, min(32, max_tokens // 4), counter=counter):
            chunks.append(Chunk(prefix + piece.text, len(chunks), heading))
    return chunks


# --- loaders ----------------------------------------------------------------------------------


def load_html(html: str) -> tuple[str, str | None]:
    """Visible text and title of an HTML page (scripts, styles and navigation dropped)."""
    try:
        from bs4 import BeautifulSoup
    except ImportError as e:
        raise MissingExtraError("ingest", "beautifulsoup4", "Loading HTML") from e
    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else None
    for tag in soup(["script", "style", "noscript", "template", "nav", "head", "title"]):
        tag.decompose()
    lines = [line.strip() for line in soup.get_text("\n").splitlines()]
    return "\n".join(line for line in lines if line), title


def load_pdf(source: str | Path | bytes) -> str:
    """The text of every page of a PDF, pages separated by blank lines."""
    try:
        from pypdf import PdfReader
    except ImportError as e:
        raise MissingExtraError("ingest", "pypdf", "Loading PDF") from e
    import io

    from pypdf.errors import PdfReadError

    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    try:
        reader = PdfReader(stream)
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
    except PdfReadError as e:
        raise UserError(f"cannot read PDF {source if not isinstance(source, bytes) else '<bytes>'}: {e}") from e
    finally:
        stream.close()


_SUFFIX_FORMAT: dict[str, Format] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}


def load_document(path: str | Path, *, doc_id: str | None = None, format: Format | None = None) -> Document:
    """Load a file as a `Document` (format from the suffix unless given; id defaults to the path)."""
    p = Path(path)
    fmt = format or _SUFFIX_FORMAT.get(p.suffix.lower())
    if fmt is None:
        raise UserError(
            f"cannot tell the format of {p.name!r}; pass format= one of {sorted(set(_SUFFIX_FORMAT.values()))}"
        )
    if not p.is_file():
        raise UserError(f"no such file: {p}")
    title: str | None = None
    if fmt == "pdf":
        text = load_pdf(p)
    else:
        raw = p.read_text(encoding="utf-8", errors="replace")
        text, title = load_html(raw) if fmt == "html" else (raw, None)
    return Document(doc_id or str(p), text, fmt, title=title or p.stem, source=str(p))


# --- ingestion --------------------------------------------------------------------------------


def _default_chunker(doc: Document) -> list[Chunk]:
    return chunk_markdown(doc.text) if doc.format == "markdown" else chunk_tokens(doc.text)


async def ingest(
    store: MemoryStore,
    ns: Namespace,
    document: Document,
    *,
    chunker: Chunker | None = None,
    trust: Trust = "trusted",
    provenance: dict[str, Any] | None = None,
) -> IngestResult:
    """Store `document` as chunks. Unchanged content is a no-op; changed content replaces the
    old chunks (all of them, so no stale chunk of an old version survives)."""
    if not document.id:
        raise UserError("a document needs an id (re-ingesting uses it to replace old chunks)")
    digest = document.content_hash
    previous = await store.document_hash(ns, document.id)
    if previous == digest:
        return IngestResult(document.id, "unchanged", 0)
    chunks = chunker(document.text) if chunker else _default_chunker(document)
    source = {"source": document.source or document.id, **(provenance or {})}
    items: Sequence[MemoryItem] = [
        MemoryItem(
            c.text,
            kind="document",
            metadata={**document.metadata, "title": document.title, "heading": c.heading},
            trust=trust,
            provenance=source,
            doc_id=document.id,
            chunk_index=c.index,
            content_hash=digest,
        )
        for c in chunks
    ]
    if not items:
        raise UserError(
            f"document {document.id!r} has no text to store (an empty file or a scanned PDF without a "
            "text layer?); to remove an ingested document use store.delete_document()"
        )
    for item in items:  # validate before removing anything, so a bad document loses nothing
        check_item(item)
    removed = await store.delete_document(ns, document.id) if previous is not None else 0
    await store.put_many(ns, items)
    return IngestResult(document.id, "replaced" if previous is not None else "added", len(items), removed)


__all__ = [
    "Chunk",
    "Chunker",
    "Document",
    "IngestResult",
    "chunk_markdown",
    "chunk_tokens",
    "ingest",
    "load_document",
    "load_html",
    "load_pdf",
]
