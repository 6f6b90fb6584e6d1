"""Durable facts from finished runs: one model call reads a run's messages and names the facts
worth keeping (subject, predicate, value); each is stored as a long-term memory with its
provenance (run, source messages), `valid_from` = now, superseding the older value of the same
subject and predicate (the store's contradiction rule).

Memory-poisoning defence: a fact whose source messages include untrusted tool output (or, when
the model cites no valid sources, a run that saw any) is stored `trust="untrusted"`, so default
retrieval leaves it out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bastion.errors import BastionError, UserError
from bastion.memory._store import MemoryStore
from bastion.memory._tools import NamespaceFn, taint
from bastion.memory._types import MemoryItem, Namespace, now
from bastion.types import Message, ModelRequest, RunContext, ToolResult, Trust

if TYPE_CHECKING:
    from bastion.gateway import Model

EXTRACT_INSTRUCTIONS = """You extract durable facts from a conversation for long-term memory.
Keep only facts likely to stay true and useful in later sessions (preferences, identities,
settings, decisions), not the task's transient details. Reply with JSON only:
{"facts": [{"subject": "...", "predicate": "...", "value": "...", "sources": ["<message id>", ...]}]}
Use short lower-case subjects and predicates (e.g. "user", "home city"), so a later value of the
same property replaces this one. Cite the ids of the messages each fact comes from.
Reply {"facts": []} if there is nothing worth keeping."""

_log = logging.getLogger("bastion.memory")

MAX_CHARS_PER_MESSAGE = 2000
"""A message's text is cut to this many characters in the extraction prompt."""


def _render(m: Message) -> str:
    parts: list[str] = []
    for p in m.parts:
        if isinstance(p, ToolResult):
            body = p.content if isinstance(p.content, str) else json.dumps(p.content, default=str)
            parts.append(f"(result of tool {p.name}, {p.trust}) {body}")
    text = m.text
    if text:
        parts.insert(0, text)
    return f"[{m.id}] {m.role}: {' '.join(parts)[:MAX_CHARS_PER_MESSAGE]}"


def _parse(text: str) -> list[dict[str, Any]]:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise UserError(f"the fact extraction model did not answer with JSON: {text[:200]!r}")
    try:
        data: Any = json.loads(text[start : end + 1])
    except json.JSONDecodeError as e:
        raise UserError(f"the fact extraction model answered with invalid JSON ({e}): {text[:200]!r}") from None
    facts: Any = data.get("facts", []) if isinstance(data, dict) else []
    if not isinstance(facts, list):
        raise UserError('the fact extraction model must answer {"facts": [...]}')
    return [f for f in facts if isinstance(f, dict)]  # pyright: ignore[reportUnknownVariableType]


async def extract_facts(
    store: MemoryStore,
    messages: Sequence[Message],
    namespace: Namespace,
    *,
    model: Model,
    run_id: str | None = None,
    context: RunContext | None = None,
) -> list[MemoryItem]:
    """Extract durable facts from a finished run's `messages` and store them in `namespace`.
    Returns the stored items (newest values; older values of the same subject and predicate
    are invalidated by the store, and kept for `as_of` queries)."""
    transcript = [m for m in messages if m.role != "system"]
    if not transcript:
        return []
    request = ModelRequest(
        messages=[Message.system(EXTRACT_INSTRUCTIONS), Message.user("\n".join(_render(m) for m in transcript))],
        context=context or RunContext(tenant=namespace.tenant, run_id=run_id),
    )
    response = await model.request(request)
    by_id = {m.id: m for m in transcript}
    run_taint = taint(transcript)
    recorded = now()
    items: list[MemoryItem] = []
    seen: set[tuple[str, str]] = set()
    for fact in _parse(response.message.text):
        subject, predicate, value = (str(fact.get(k, "")).strip() for k in ("subject", "predicate", "value"))
        if not (subject and predicate and value) or (subject, predicate) in seen:
            continue
        seen.add((subject, predicate))
        cited: Any = fact.get("sources") or []
        sources = [str(s) for s in cited if str(s) in by_id] if isinstance(cited, list) else []  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
        # without valid citations the fact may come from anything in the run: judge it by the run
        tainted = taint([by_id[s] for s in sources]) if sources else run_taint
        trust: Trust = "untrusted" if tainted else "trusted"
        if await _unchanged(store, namespace, subject, predicate, value, trust):
            continue  # re-reading a thread must not pile up identical versions
        provenance: dict[str, Any] = {"via": "extract_facts", "message_ids": sources or list(by_id)}
        if run_id:
            provenance["run_id"] = run_id
        if context is not None and context.session:
            provenance["session"] = context.session
        if tainted:
            provenance["tainted_by"] = tainted
            provenance["source"] = f"run {run_id or '?'} with untrusted input"
        items.append(
            MemoryItem(
                f"{subject} {predicate}: {value}",
                subject=subject,
                predicate=predicate,
                metadata={"value": value},
                trust=trust,
                provenance=provenance,
                valid_from=recorded,
            )
        )
    return await store.put_many(namespace, items) if items else []


async def _unchanged(store: MemoryStore, ns: Namespace, subject: str, predicate: str, value: str, trust: Trust) -> bool:
    current = [v for v in await store.history(ns, subject, predicate) if v.valid_to is None]
    return bool(current) and current[-1].metadata.get("value") == value and current[-1].trust == trust


@dataclass(frozen=True)
class FactMemory:
    """`Agent(facts=FactMemory(store))`: after each run that finishes with an answer, extract
    durable facts from the thread into the run's namespace (see `extract_facts`). `model`
    defaults to the agent's own; `namespace_from_context` picks the namespace (its first one
    when it returns several), as for `memory_tools()`. A failed extraction (the model's error or
    an unreadable answer) is logged on `bastion.memory`; the run keeps its answer."""

    store: MemoryStore
    model: Model | None = None
    namespace_from_context: NamespaceFn = Namespace.from_context

    async def after_run(self, model: Model, context: RunContext, messages: Sequence[Message]) -> list[MemoryItem]:
        found = self.namespace_from_context(context)
        ns = found if isinstance(found, Namespace) else next(iter(found))
        try:
            return await extract_facts(
                self.store, messages, ns, model=self.model or model, run_id=context.run_id, context=context
            )
        except BastionError as e:
            # the run already has its answer: a failed extraction must not turn it into an error
            _log.warning("fact extraction after run %s failed: %s", context.run_id or "?", e)
            return []


__all__ = ["EXTRACT_INSTRUCTIONS", "FactMemory", "extract_facts"]
