"""Bastion: a production runtime for AI agents.

The public API is re-exported here lazily so `import bastion` stays fast; see `__all__`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bastion.errors import *  # noqa: F403  (exceptions are cheap and always exported)
from bastion.errors import __all__ as _errors_all
from bastion.types import (
    Message,
    ModelRequest,
    ModelResponse,
    RunContext,
    TextPart,
    ToolCall,
    ToolResult,
    Usage,
)

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access.
_LAZY: dict[str, str] = {
    "tool": "bastion.tools",
    "Tool": "bastion.tools",
    "Model": "bastion.gateway",
    "get_settings": "bastion.config",
}

if TYPE_CHECKING:
    from bastion.config import get_settings
    from bastion.gateway import Model
    from bastion.tools import Tool, tool

__all__ = [  # noqa: RUF022  (grouped: core types, then lazy, then errors)
    "Message",
    "ModelRequest",
    "ModelResponse",
    "RunContext",
    "TextPart",
    "ToolCall",
    "ToolResult",
    "Usage",
    "__version__",
    *sorted(_LAZY),
    *_errors_all,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bastion' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
