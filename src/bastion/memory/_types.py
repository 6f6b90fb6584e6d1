"""The data long-term memory holds: namespaces, items (facts and document chunks), episodes,
skills, and search hits. Plain dataclasses; times are POSIX seconds (floats)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias

from bastion.errors import UserError
from bastion.types import RunContext, Trust, new_id

ItemKind = Literal["fact", "document", "note", "core"]
SearchMode = Literal["hybrid", "bm25", "vector"]
Timestamp: TypeAlias = float | datetime

_SEP = "\x1f"


def to_ts(value: Timestamp | None) -> float | None:
    """POSIX seconds from a float or a datetime (naive datetimes are taken as local time)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def now() -> float:
    return time.time()


@dataclass(frozen=True, slots=True)
class Namespace:
    """Where a memory lives. `tenant` is the isolation boundary: every backend keeps each
    tenant in its own partition (its own tables), so a query can never see another tenant's
    rows. Inside a tenant, `agent`, `user` and `scope` select one exact namespace; an empty
    string means "shared at this level" (e.g. `user=""` is memory shared by all users).

    Namespaces nest as a path tenant > agent > user > scope: a search from a namespace covers
    it and its `lineage()`, the shared levels above it, found by emptying the set fields from
    the most specific upward (scope, then user, then agent). A search from
    `(acme, support, ada, tickets)` covers `(acme, support, ada, tickets)`,
    `(acme, support, ada, "")`, `(acme, support, "", "")` and `(acme, "", "", "")`: never another
    user's namespace, since emptying `user` yields memory shared by all users. Writes, `get`,
    `history` and `forget` address one exact namespace."""

    tenant: str
    agent: str = ""
    user: str = ""
    scope: str = ""

    def __post_init__(self) -> None:
        if not self.tenant:
            raise UserError("Namespace.tenant must be a non-empty string (use 'default' for one tenant)")
        for name in ("tenant", "agent", "user", "scope"):
            value: Any = getattr(self, name)
            if not isinstance(value, str):
                raise UserError(f"Namespace.{name} must be a string, got {type(value).__name__}")
            if _SEP in value:
                raise UserError(f"Namespace.{name} may not contain the control character \\x1f")

    def lineage(self) -> list[Namespace]:
        """This namespace, then each shared level above it, most specific first (see above)."""
        out: list[Namespace] = [self]
        agent, user, scope = self.agent, self.user, self.scope
        for level in ("scope", "user", "agent"):
            if level == "scope" and scope:
                scope = ""
            elif level == "user" and user:
                user = ""
            elif level == "agent" and agent:
                agent = ""
            else:
                continue
            out.append(Namespace(self.tenant, agent, user, scope))
        return out

    @property
    def key(self) -> str:
        """The within-tenant key of this namespace (agent, user, scope joined)."""
        return _SEP.join((self.agent, self.user, self.scope))

    @classmethod
    def from_context(cls, ctx: RunContext, *, scope: str = "", per_user: bool = True) -> Namespace:
        """The namespace of a run: its tenant and agent, and its user unless `per_user=False`."""
        return cls(ctx.tenant, ctx.agent or "", (ctx.user or "") if per_user else "", scope)


@dataclass(slots=True)
class MemoryItem:
    """A semantic memory: a fact (optionally `subject`/`predicate` keyed, so a newer fact
    about the same thing invalidates the older one) or a chunk of an ingested document.

    Validity is bi-temporal light: `valid_from`/`valid_to` say when the fact held in the world,
    `recorded_at` when the store learned it. Invalidated facts are kept (with `valid_to` set),
    never deleted, so `as_of` queries can see the past. `trust` and `provenance` label where
    the memory came from: writes derived from untrusted content are `trust="untrusted"` and
    excluded from retrieval unless asked for."""

    text: str
    kind: ItemKind = "fact"
    subject: str | None = None
    predicate: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    trust: Trust = "trusted"
    provenance: dict[str, Any] = field(default_factory=dict)
    doc_id: str | None = None
    chunk_index: int | None = None
    content_hash: str | None = None
    valid_from: float | None = None
    valid_to: float | None = None
    recorded_at: float | None = None
    supersedes: str | None = None
    superseded_by: str | None = None
    id: str = field(default_factory=lambda: new_id("mem_"))

    def is_valid_at(self, t: float) -> bool:
        start = self.valid_from if self.valid_from is not None else float("-inf")
        end = self.valid_to if self.valid_to is not None else float("inf")
        return start <= t < end


@dataclass(slots=True)
class SearchHit:
    """One retrieved item. `score` is the fused score in hybrid mode (reciprocal rank fusion),
    else the backend's own; `ranks` records the 1-based rank in each contributing list."""

    item: MemoryItem
    score: float
    ranks: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Episode:
    """An episodic memory: the record of (part of) a past run, queried by session and time."""

    session: str
    summary: str
    data: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    outcome: str | None = None
    occurred_at: float | None = None
    id: str = field(default_factory=lambda: new_id("ep_"))


@dataclass(slots=True)
class Skill:
    """A procedural memory: a named skill (instructions plus the tools it uses). Saving a skill
    under an existing name adds a new version; older versions stay readable."""

    name: str
    instructions: str
    tools: list[str] = field(default_factory=list)
    description: str = ""
    version: int = 0  # assigned by the store
    created_at: float | None = None
    trust: Trust = "trusted"


__all__ = [
    "Episode",
    "ItemKind",
    "MemoryItem",
    "Namespace",
    "SearchHit",
    "SearchMode",
    "Skill",
    "Timestamp",
    "now",
    "to_ts",
]
