"""Validated arguments may hold rich values (nested pydantic models, dates, enums). Hashing,
policy analysis, audit rows and approval payloads need their JSON form."""

from __future__ import annotations

from typing import Any

from pydantic_core import to_jsonable_python


def to_plain(value: Any) -> Any:
    """The JSON-compatible form of `value` (unknown objects become their `str`)."""
    return to_jsonable_python(value, fallback=str)


__all__ = ["to_plain"]
