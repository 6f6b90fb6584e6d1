"""Lazy package attributes (PEP 562): names imported from their module on first use, so that
importing a package stays cheap and pulls in no optional dependency."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, names: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `names` maps each lazy name to the module holding
    it (absolute, or relative to `package`); the value is cached in `namespace` (the package's
    `globals()`), so each name is imported once."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__


__all__ = ["lazy_getattr"]
