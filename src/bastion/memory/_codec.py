"""Row <-> dataclass mapping shared by the SQL backends (same column names in both)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bastion.memory._types import Episode, MemoryItem, Skill

ITEM_COLUMNS = (
    "id",
    "kind",
    "text",
    "subject",
    "predicate",
    "metadata",
    "trust",
    "provenance",
    "doc_id",
    "chunk_index",
    "content_hash",
    "valid_from",
    "valid_to",
    "recorded_at",
    "supersedes",
    "superseded_by",
)
EPISODE_COLUMNS = ("id", "session", "summary", "data", "run_id", "outcome", "occurred_at")
SKILL_COLUMNS = ("name", "version", "instructions", "tools", "description", "created_at", "trust")


def norm_key(value: str | None) -> str | None:
    """Subjects and predicates compare case- and space-insensitively."""
    return " ".join(value.lower().split()) if value is not None else None


def item_values(item: MemoryItem) -> tuple[Any, ...]:
    return (
        item.id,
        item.kind,
        item.text,
        item.subject,
        item.predicate,
        json.dumps(item.metadata, ensure_ascii=False, default=str),
        item.trust,
        json.dumps(item.provenance, ensure_ascii=False, default=str),
        item.doc_id,
        item.chunk_index,
        item.content_hash,
        item.valid_from,
        item.valid_to,
        item.recorded_at,
        item.supersedes,
        item.superseded_by,
    )


def item_from_row(row: Sequence[Any]) -> MemoryItem:
    (id_, kind, text, subject, predicate, metadata, trust, provenance, doc_id, chunk_index, content_hash,
     valid_from, valid_to, recorded_at, supersedes, superseded_by) = row  # fmt: skip
    return MemoryItem(
        text=text,
        kind=kind,
        subject=subject,
        predicate=predicate,
        metadata=json.loads(metadata) if metadata else {},
        trust=trust,
        provenance=json.loads(provenance) if provenance else {},
        doc_id=doc_id,
        chunk_index=chunk_index,
        content_hash=content_hash,
        valid_from=valid_from,
        valid_to=valid_to,
        recorded_at=recorded_at,
        supersedes=supersedes,
        superseded_by=superseded_by,
        id=id_,
    )


def episode_values(ep: Episode) -> tuple[Any, ...]:
    data = json.dumps(ep.data, ensure_ascii=False, default=str)
    return (ep.id, ep.session, ep.summary, data, ep.run_id, ep.outcome, ep.occurred_at)


def episode_from_row(row: Sequence[Any]) -> Episode:
    id_, session, summary, data, run_id, outcome, occurred_at = row
    return Episode(
        session=session,
        summary=summary,
        data=json.loads(data) if data else {},
        run_id=run_id,
        outcome=outcome,
        occurred_at=occurred_at,
        id=id_,
    )


def skill_from_row(row: Sequence[Any]) -> Skill:
    name, version, instructions, tools, description, created_at, trust = row
    return Skill(
        name=name,
        instructions=instructions,
        tools=json.loads(tools) if tools else [],
        description=description or "",
        version=int(version),
        created_at=created_at,
        trust=trust,
    )


def cols(names: Sequence[str], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{n}" for n in names)
