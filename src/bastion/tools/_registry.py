"""A tool registry that remembers schema versions (`Tool.version`) and tells a breaking change
from a compatible one when a tool is re-registered.

Breaking (an old caller's arguments may now be rejected, or mean something else): a removed
field (schemas forbid extra fields, so even an optional one breaks old callers), a renamed
field, a type change, a narrowed enum, a new required field, an optional field made required.
Compatible: a new optional field, a required field made optional, a widened enum, new
descriptions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bastion.errors import ConfigError
from bastion.tools._tool import Tool, canonical_json


@dataclass(slots=True)
class SchemaDiff:
    tool: str
    old_version: str
    new_version: str
    breaking: list[str] = field(default_factory=list)
    compatible: list[str] = field(default_factory=list)

    @property
    def is_breaking(self) -> bool:
        return bool(self.breaking)


def _type_of(prop: Mapping[str, Any]) -> str:
    """A comparable description of a property's type, ignoring docs."""
    keep = {k: v for k, v in prop.items() if k in ("type", "anyOf", "oneOf", "allOf", "$ref", "items", "format")}
    return canonical_json(keep)


def compare_schemas(tool: str, old: Tool | Mapping[str, Any], new: Tool | Mapping[str, Any]) -> SchemaDiff:
    """Classify the differences between two versions of a tool's parameter schema."""
    old_params = old.parameters if isinstance(old, Tool) else old
    new_params = new.parameters if isinstance(new, Tool) else new
    diff = SchemaDiff(
        tool,
        old.version if isinstance(old, Tool) else "",
        new.version if isinstance(new, Tool) else "",
    )
    old_props: Mapping[str, Any] = old_params.get("properties", {})
    new_props: Mapping[str, Any] = new_params.get("properties", {})
    old_req = set(old_params.get("required", []))
    new_req = set(new_params.get("required", []))
    removed = [n for n in old_props if n not in new_props]
    added = [n for n in new_props if n not in old_props]
    renamed: set[str] = set()
    for r in removed:
        twin = next((a for a in added if a not in renamed and _type_of(new_props[a]) == _type_of(old_props[r])), None)
        if twin is not None and r in old_req:
            renamed.add(twin)
            diff.breaking.append(f"required field {r!r} renamed to {twin!r}")
        else:
            kind = "required" if r in old_req else "optional"
            diff.breaking.append(f"{kind} field {r!r} removed")
    for a in added:
        if a in renamed:
            continue
        if a in new_req:
            diff.breaking.append(f"new required field {a!r}")
        else:
            diff.compatible.append(f"new optional field {a!r}")
    for name in old_props.keys() & new_props.keys():
        o, n = old_props[name], new_props[name]
        if _type_of(o) != _type_of(n):
            diff.breaking.append(f"field {name!r} changed type from {_type_of(o)} to {_type_of(n)}")
        if "enum" in o or "enum" in n:
            o_enum = set(map(canonical_json, o.get("enum", []))) if "enum" in o else None
            n_enum = set(map(canonical_json, n.get("enum", []))) if "enum" in n else None
            if n_enum is not None and (o_enum is None or not o_enum <= n_enum):
                diff.breaking.append(f"field {name!r} accepts fewer values")
            elif o_enum != n_enum:
                diff.compatible.append(f"field {name!r} accepts more values")
        if name not in old_req and name in new_req:
            diff.breaking.append(f"optional field {name!r} became required")
        elif name in old_req and name not in new_req:
            diff.compatible.append(f"required field {name!r} became optional")
        if o.get("description") != n.get("description"):
            diff.compatible.append(f"field {name!r} description changed")
    return diff


class ToolRegistry(Mapping[str, Tool]):
    """Tools by name, with every schema version seen. A mapping, so it can be handed to a
    `ToolExecutor` directly."""

    def __init__(self, tools: list[Tool] | None = None, *, allow_breaking: bool = False) -> None:
        self.allow_breaking = allow_breaking
        self._tools: dict[str, Tool] = {}
        self._history: dict[str, list[Tool]] = {}
        for t in tools or []:
            self.register(t)

    def register(self, tool: Tool, *, allow_breaking: bool | None = None) -> SchemaDiff | None:
        """Add or replace a tool. Returns the diff against the previous version (None when new
        or unchanged); raises `ConfigError` on a breaking change unless allowed."""
        current = self._tools.get(tool.name)
        if current is None:
            self._tools[tool.name] = tool
            self._history[tool.name] = [tool]
            return None
        if current.version == tool.version:
            self._tools[tool.name] = tool
            return None
        diff = compare_schemas(tool.name, current, tool)
        allowed = self.allow_breaking if allow_breaking is None else allow_breaking
        if diff.is_breaking and not allowed:
            raise ConfigError(
                f"tool {tool.name!r} changed incompatibly ({current.version} -> {tool.version}): "
                + "; ".join(diff.breaking)
                + ". Register it under a new name, make the change backward compatible, or pass "
                "allow_breaking=True after migrating stored runs that call it."
            )
        self._tools[tool.name] = tool
        self._history[tool.name].append(tool)
        return diff

    def resolve(self, name: str) -> Tool:
        """The tool called `name`, or offered to providers as `name` (a model answering with the
        provider-legal form such as `files__read` for `files.read`)."""
        found = self._tools.get(name)
        if found is not None:
            return found
        from bastion.gateway import ToolNames

        canonical = ToolNames(self._tools).canonical(name)
        if canonical in self._tools:
            return self._tools[canonical]
        raise KeyError(f"no tool named {name!r}; registered: {sorted(self._tools)}")

    def versions(self, name: str) -> list[str]:
        return [t.version for t in self._history.get(name, [])]

    def version(self, name: str, version: str) -> Tool | None:
        return next((t for t in self._history.get(name, []) if t.version == version), None)

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)


__all__ = ["SchemaDiff", "ToolRegistry", "compare_schemas"]
