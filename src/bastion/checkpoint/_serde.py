"""Tagged JSON for everything Bastion persists: an explicit allowlist of types, never pickle.

Plain JSON values pass through unchanged. Other values become objects tagged with `"__t"`:
Bastion's core dataclasses (`Message`, its parts, `Usage`, ...), dataclasses and pydantic models
the application registers with `register_type`, and a few standard types (datetime, date,
timedelta, bytes as base64, tuple, set, UUID, Decimal). Anything else raises
`SerializationError` naming where it sits (`state.items[3].when`), so a bad value is refused
when it is written, not discovered when a thread cannot be resumed.

Decoding only ever constructs registered types; unknown tags are refused. Registered pydantic
models are validated against their schema on the way back in.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from bastion.errors import SerializationError

_TAG = "__t"
T = TypeVar("T")


class _Unsupported(Exception):
    """Raised deep inside encoding; collects the path on its way out (cheap when nothing fails)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.parts: list[str] = []


@dataclasses.dataclass(slots=True)
class _Entry:
    name: str
    cls: type[Any]
    pydantic: bool
    fields: tuple[str, ...] = ()
    # Field values equal to these defaults are omitted: checkpoints of long message lists stay small.
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict[str, Any])


_BY_NAME: dict[str, _Entry] = {}
_BY_CLS: dict[type[Any], _Entry] = {}
_BUILTIN_TAGS = frozenset({"dict", "tuple", "set", "bytes", "dt", "date", "td", "uuid", "dec"})


def register_type(cls: type[T], name: str | None = None) -> type[T]:
    """Allow a dataclass or pydantic model in persisted state (usable as a class decorator).

    `name` is what is written to storage (default: the class's qualified name); keep it stable
    across refactors, or old checkpoints will not decode.
    """
    tag = name or cls.__qualname__
    if tag in _BUILTIN_TAGS:
        raise SerializationError(f"{tag!r} is reserved; pass another name= to register_type")
    existing = _BY_NAME.get(tag)
    if existing is not None and existing.cls is not cls:
        raise SerializationError(
            f"type name {tag!r} is already registered for {existing.cls!r}; "
            f"pass a distinct name= to register_type({cls.__name__})"
        )
    if dataclasses.is_dataclass(cls):
        fields = tuple(f.name for f in dataclasses.fields(cls) if f.init)
        if _TAG in fields:
            raise SerializationError(f"dataclass {cls.__name__} has a field named {_TAG!r}, which is reserved")
        defaults: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING and isinstance(f.default, str | int | float | bool | None):
                defaults[f.name] = f.default
            elif f.default_factory in (dict, list):  # type: ignore[comparison-overlap]
                defaults[f.name] = f.default_factory()  # type: ignore[misc]
        entry = _Entry(tag, cls, False, fields, defaults)
    elif hasattr(cls, "model_validate") and hasattr(cls, "model_dump"):
        entry = _Entry(tag, cls, True)
    else:
        raise SerializationError(
            f"register_type accepts dataclasses and pydantic models, not {cls!r}; "
            "convert the value to one of those (or to plain JSON) before putting it in state"
        )
    _BY_NAME[tag] = entry
    _BY_CLS[cls] = entry
    return cls


def _register_core() -> None:
    from bastion import types as t

    for cls in (
        t.Message,
        t.TextPart,
        t.ImagePart,
        t.ToolCall,
        t.ToolResult,
        t.Usage,
        t.RunContext,
        t.ToolSpec,
        t.OutputSchema,
        t.ModelSettings,
        t.ModelRequest,
        t.ModelResponse,
    ):
        register_type(cls, cls.__name__)


# --- encoding --------------------------------------------------------------------------------


def _enc(v: Any) -> Any:
    t = type(v)
    if t is str or t is int or t is float or t is bool or v is None:
        return v
    if t is list:
        out: list[Any] = []
        for i, x in enumerate(v):
            try:
                out.append(_enc(x))
            except _Unsupported as e:
                e.parts.append(f"[{i}]")
                raise
        return out
    if t is dict:
        return _enc_dict(v)
    entry = _BY_CLS.get(t)
    if entry is not None:
        if entry.pydantic:
            return {_TAG: entry.name, "d": v.model_dump(mode="json")}
        d: dict[str, Any] = {_TAG: entry.name}
        defaults = entry.defaults
        for name in entry.fields:
            x = getattr(v, name)
            if name in defaults and x == defaults[name]:
                continue
            try:
                d[name] = _enc(x)
            except _Unsupported as e:
                e.parts.append(f".{name}")
                raise
        return d
    return _enc_other(v, t)


def _enc_dict(v: dict[Any, Any]) -> Any:
    out: dict[str, Any] = {}
    for k, x in v.items():
        if type(k) is not str:
            raise _Unsupported(f"dict key {k!r} is a {type(k).__name__}; persisted dict keys must be str")
        try:
            out[k] = _enc(x)
        except _Unsupported as e:
            e.parts.append(f".{k}" if k.isidentifier() else f"[{k!r}]")
            raise
    if _TAG in out:  # user data that looks like a tag: store as pairs so decoding cannot misread it
        return {_TAG: "dict", "d": [[k, x] for k, x in out.items()]}
    return out


def _enc_other(v: Any, t: type[Any]) -> Any:
    if t is tuple:
        return {_TAG: "tuple", "d": _enc(list(v))}
    if t is set or t is frozenset:
        return {_TAG: "set", "d": _enc(sorted(v, key=repr))}
    if t is bytes:
        return {_TAG: "bytes", "d": base64.b64encode(v).decode("ascii")}
    if t is dt.datetime:
        return {_TAG: "dt", "d": v.isoformat()}
    if t is dt.date:
        return {_TAG: "date", "d": v.isoformat()}
    if t is dt.timedelta:
        return {_TAG: "td", "d": v.total_seconds()}
    if t is uuid.UUID:
        return {_TAG: "uuid", "d": str(v)}
    if t is Decimal:
        return {_TAG: "dec", "d": str(v)}
    if dataclasses.is_dataclass(v) or hasattr(v, "model_dump"):
        raise _Unsupported(
            f"{t.__name__} is not registered for persistence; "
            f"call bastion.checkpoint.register_type({t.__name__}) once at import time"
        )
    raise _Unsupported(
        f"a {t.__name__} cannot be persisted; use JSON types, datetime, bytes, or a registered "
        "dataclass / pydantic model (bastion.checkpoint.register_type)"
    )


def encode(value: Any, path: str = "state") -> Any:
    """Encode `value` into tagged JSON-compatible data (what `loads` turns back into `value`);
    `path` names it in error messages. Not `bastion.runtime.to_jsonable`, which flattens values
    into plain JSON for API output and cannot be decoded back."""
    try:
        return _enc(value)
    except _Unsupported as e:
        raise SerializationError(e.message, path + "".join(reversed(e.parts))) from None
    except RecursionError:
        raise SerializationError("value is nested too deeply (or contains a cycle)", path) from None


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode


def dumps(value: Any, path: str = "state") -> str:
    """`encode` then compact JSON text."""
    return _ENCODER(encode(value, path))


# --- decoding --------------------------------------------------------------------------------


def _hook(d: dict[str, Any]) -> Any:
    tag = d.get(_TAG)
    if tag is None:
        return d
    entry = _BY_NAME.get(tag)
    if entry is not None:
        if entry.pydantic:
            return entry.cls.model_validate(d["d"])
        kwargs = {k: x for k, x in d.items() if k != _TAG}
        try:
            return entry.cls(**kwargs)
        except TypeError as e:
            raise SerializationError(
                f"stored {tag} does not match the current class {entry.cls.__qualname__} ({e}); "
                "add a checkpoint migration for the changed fields"
            ) from None
    x = d.get("d")
    if tag == "dict":
        return {k: v for k, v in x}  # type: ignore[union-attr]
    if tag == "tuple":
        return tuple(x)  # type: ignore[arg-type]
    if tag == "set":
        return set(x)  # type: ignore[arg-type]
    if tag == "bytes":
        return base64.b64decode(x)  # type: ignore[arg-type]
    if tag == "dt":
        return dt.datetime.fromisoformat(x)  # type: ignore[arg-type]
    if tag == "date":
        return dt.date.fromisoformat(x)  # type: ignore[arg-type]
    if tag == "td":
        return dt.timedelta(seconds=x)  # type: ignore[arg-type]
    if tag == "uuid":
        return uuid.UUID(x)  # type: ignore[arg-type]
    if tag == "dec":
        return Decimal(x)  # type: ignore[arg-type]
    raise SerializationError(
        f"stored value has unknown type tag {tag!r}; register the type with "
        "bastion.checkpoint.register_type before loading this checkpoint"
    )


def loads(text: str | bytes) -> Any:
    """Decode tagged JSON text produced by `dumps` (only allowlisted types are constructed)."""
    try:
        return json.loads(text, object_hook=_hook)
    except json.JSONDecodeError as e:
        raise SerializationError(f"stored payload is not valid JSON: {e}") from None


def decode(data: Any) -> Any:
    """Decode already-parsed tagged data (e.g. from a JSONB column): the inverse of `encode`."""
    return loads(json.dumps(data))


Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]

_register_core()

__all__ = ["decode", "dumps", "encode", "loads", "register_type"]
