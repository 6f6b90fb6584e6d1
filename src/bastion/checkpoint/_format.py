"""The persisted format: how graph state becomes versioned checkpoint payloads and back.

A checkpoint payload (current version `FORMAT_VERSION`):

```
{"v": 2,
 "values": {channel: value},          # channels replaced in this step (all of them in a keyframe)
 "logs":   {channel: [item, ...]},    # items appended to append-only channels in this step
 "next":   [[node], [node, arg], ...],# tasks of the following step ([node, arg] for Send)
 "src":    "input" | "loop" | "update" | "fork",
 "meta":   {...}}
```

A message list that gains one message in a turn costs one message in storage, not the list.
Older payloads are upgraded on read by `MIGRATIONS` (position = version: `MIGRATIONS[i]`
turns version `i + 1` into `i + 2`); stored data is never rewritten in place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from bastion.checkpoint._base import CheckpointRecord
from bastion.checkpoint._serde import encode, loads
from bastion.errors import CheckpointError, SerializationError

Payload: TypeAlias = dict[str, Any]
Migration: TypeAlias = Callable[[Payload], Payload]


def _v1_to_v2(p: Payload) -> Payload:
    """v1 stored every channel in full under `channel_values` and next nodes as bare names."""
    return {
        "v": 2,
        "values": p.get("channel_values", {}),
        "logs": {},
        "next": [[n] for n in p.get("next", [])],
        "src": p.get("source", "loop"),
        "meta": p.get("metadata", {}),
    }


MIGRATIONS: list[Migration] = [_v1_to_v2]
FORMAT_VERSION = len(MIGRATIONS) + 1


def upgrade(p: Any, what: str = "checkpoint") -> Payload:
    """Validate a payload's envelope and migrate it to the current version."""
    if not isinstance(p, dict) or not isinstance(p.get("v"), int):
        raise CheckpointError(f"stored {what} payload has no integer format version 'v'; it is corrupt")
    payload: Payload = p  # type: ignore[assignment]
    v: int = payload["v"]
    if v > FORMAT_VERSION:
        raise CheckpointError(
            f"stored {what} has format version {v}, newer than this Bastion understands "
            f"({FORMAT_VERSION}); upgrade bastion"
        )
    if v < 1:
        raise CheckpointError(f"stored {what} has invalid format version {v}")
    while v < FORMAT_VERSION:
        payload = MIGRATIONS[v - 1](payload)
        v = payload["v"]
    if what == "checkpoint":
        _check_checkpoint(payload)
    return payload


def _check_checkpoint(p: Payload) -> None:
    """The envelope's schema: refuse a damaged payload here, not deep inside the engine."""
    ok = (
        isinstance(p.get("values"), dict)
        and isinstance(p.get("logs"), dict)
        and all(isinstance(items, list) for items in p["logs"].values())
        and isinstance(p.get("next"), list)
        and all(isinstance(t, list) and 1 <= len(t) <= 2 and isinstance(t[0], str) for t in p["next"])
        and isinstance(p.get("meta", {}), dict)
    )
    if not ok:
        raise CheckpointError(
            "stored checkpoint payload does not match the checkpoint schema (values, logs, next); "
            "it is corrupt or was written by something else. Fork or delete the thread"
        )


# One encoder for every payload: `json.dumps(..., separators=...)` would build a new one per call.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode


NO_ARG: Any = object()
"""Marks a task triggered by an edge (no `Send` argument)."""


@dataclass(slots=True)
class Decoded:
    """A checkpoint reconstructed from its chain."""

    values: dict[str, Any]
    next: list[tuple[str, Any]]  # (node, arg or NO_ARG)
    source: str
    meta: dict[str, Any]
    depth: int  # checkpoints since the keyframe
    record: CheckpointRecord
    delta_bytes: int = 0  # payload bytes of the chain after its keyframe
    keyframe_bytes: int = 0


def encode_checkpoint(
    values: dict[str, Any],
    logs: dict[str, list[Any]],
    next_tasks: Sequence[tuple[str, Any]],
    source: str,
    meta: dict[str, Any],
) -> str:
    enc_values = {ch: encode(v, f"state.{ch}") for ch, v in values.items()}
    enc_logs = {ch: encode(items, f"state.{ch}") for ch, items in logs.items()}
    nxt: list[list[Any]] = []
    for i, (node, arg) in enumerate(next_tasks):
        nxt.append([node] if arg is NO_ARG else [node, encode(arg, f"send[{i}]({node}).arg")])
    return _dumps(
        {
            "v": FORMAT_VERSION,
            "values": enc_values,
            "logs": enc_logs,
            "next": nxt,
            "src": source,
            "meta": meta,  # the engine's own plain-JSON bookkeeping
        }
    )


def decode_chain(chain: Sequence[CheckpointRecord], log_channels: frozenset[str] | set[str]) -> Decoded:
    """Rebuild the state at `chain[0]` from it and its ancestors (newest first, keyframe last)."""
    if not chain:
        raise CheckpointError("empty checkpoint chain")
    values: dict[str, Any] = {}
    newest: Payload = {}
    for rec in reversed(chain):
        p = upgrade(loads(rec.payload))
        for ch, v in p["values"].items():
            values[ch] = list(v) if ch in log_channels and isinstance(v, list) else v
        for ch, items in p["logs"].items():
            cur = values.get(ch)
            if cur is None:
                values[ch] = list(items)
            else:
                cur.extend(items)
        newest = p
    nxt: list[tuple[str, Any]] = [(t[0], t[1] if len(t) > 1 else NO_ARG) for t in newest["next"]]
    return Decoded(
        values=values,
        next=nxt,
        source=newest.get("src", "loop"),
        meta=newest.get("meta", {}),
        depth=len(chain) - 1,
        record=chain[0],
        delta_bytes=sum(len(r.payload) for r in chain[:-1]),
        keyframe_bytes=len(chain[-1].payload),
    )


def decode_history(records: Sequence[CheckpointRecord], log_channels: frozenset[str] | set[str]) -> dict[str, Decoded]:
    """Rebuild every checkpoint of a thread in one forward pass (each payload parsed once).

    `records` may come in any order and must include every ancestor back to a keyframe.
    """
    out: dict[str, Decoded] = {}
    ordered = sorted(records, key=lambda r: r.checkpoint_id)
    by_id = {r.checkpoint_id: r for r in ordered}
    for rec in ordered:
        parent = out.get(rec.parent_id or "") if not rec.is_keyframe else None
        if not rec.is_keyframe and parent is None:
            if rec.parent_id not in by_id:
                raise CheckpointError(f"checkpoint {rec.checkpoint_id} lost its ancestor {rec.parent_id}")
            continue  # pragma: no cover - ids are time-ordered, so parents come first
        p = upgrade(loads(rec.payload))
        values: dict[str, Any] = dict(parent.values) if parent is not None else {}
        for ch, v in p["values"].items():
            values[ch] = v
        for ch, items in p["logs"].items():
            cur = values.get(ch)
            values[ch] = [*cur, *items] if isinstance(cur, list) else list(items)
        out[rec.checkpoint_id] = Decoded(
            values=values,
            next=[(t[0], t[1] if len(t) > 1 else NO_ARG) for t in p["next"]],
            source=p.get("src", "loop"),
            meta=p.get("meta", {}),
            depth=0 if parent is None else parent.depth + 1,
            record=rec,
            delta_bytes=0 if parent is None else parent.delta_bytes + len(rec.payload),
            keyframe_bytes=len(rec.payload) if parent is None else parent.keyframe_bytes,
        )
    return out


# --- writes and journal ----------------------------------------------------------------------


def encode_done(updates: Sequence[tuple[str, Any]], goto: Sequence[tuple[str, Any]], node: str) -> str:
    return _dumps(
        {
            "v": FORMAT_VERSION,
            "u": [[ch, encode(v, f"state.{ch}")] for ch, v in updates],
            "g": [[n] if a is NO_ARG else [n, encode(a, f"send({n}).arg")] for n, a in goto],
        }
    )


def decode_done(payload: str) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    p = upgrade(loads(payload), "write")
    return [(ch, v) for ch, v in p["u"]], [(g[0], g[1] if len(g) > 1 else NO_ARG) for g in p["g"]]


def encode_interrupt(interrupt_id: str, value: Any, node: str, ns: str) -> str:
    return _dumps(
        {
            "v": FORMAT_VERSION,
            "id": interrupt_id,
            "value": encode(value, f"interrupt({node})"),
            "node": node,
            "ns": ns,
        }
    )


def encode_resume(values: dict[str, Any]) -> str:
    return _dumps({"v": FORMAT_VERSION, "values": encode(values, "resume")})


def encode_value(value: Any, what: str) -> str:
    return _dumps({"v": FORMAT_VERSION, "value": encode(value, what)})


def decode_payload(payload: str, what: str = "write") -> Payload:
    return upgrade(loads(payload), what)


__all__ = [
    "FORMAT_VERSION",
    "MIGRATIONS",
    "NO_ARG",
    "Decoded",
    "Migration",
    "SerializationError",
    "decode_chain",
    "decode_done",
    "decode_history",
    "decode_payload",
    "encode_checkpoint",
    "encode_done",
    "encode_interrupt",
    "encode_resume",
    "encode_value",
    "upgrade",
]
