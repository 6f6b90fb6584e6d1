"""Bastion: a production runtime for AI agents.

The public API is re-exported here lazily so `import bastion` stays fast: the core types and
the exceptions are imported eagerly (they are small), everything else on first attribute
access. Layer packages (`bastion.gateway`, `bastion.graph`, `bastion.memory`, ...) hold the
rest of each layer's API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion._lazy import lazy_getattr
from bastion.errors import (
    AllModelsFailedError,
    BastionError,
    BudgetExceededError,
    CheckpointError,
    CircuitOpenError,
    ConfigError,
    ContextWindowExceededError,
    ControlFlowSignal,
    GraphInterrupt,
    GraphRecursionError,
    InvalidGraphError,
    InvalidResponseError,
    InvalidUpdateError,
    MaxTurnsExceededError,
    MissingExtraError,
    ModelError,
    ModelHTTPError,
    ModelTimeoutError,
    NodeTimeoutError,
    OutputValidationError,
    PolicyDeniedError,
    PolicyError,
    ProviderUnavailableError,
    RateLimitError,
    SandboxUnavailableError,
    SerializationError,
    ToolArgumentsError,
    ToolError,
    UnknownModelError,
    UserError,
)
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
    "Agent": "bastion.graph.agent",
    "Gateway": "bastion.gateway",
    "Graph": "bastion.graph",
    "Model": "bastion.gateway",
    "Policy": "bastion.policy",
    "Project": "bastion.server",
    "Runtime": "bastion.runtime",
    "Tool": "bastion.tools",
    "ToolGateway": "bastion.policy",
    "get_settings": "bastion.config",
    "resolve_model": "bastion.gateway",
    "tool": "bastion.tools",
}

if TYPE_CHECKING:
    from bastion.config import get_settings as get_settings
    from bastion.gateway import Gateway as Gateway
    from bastion.gateway import Model as Model
    from bastion.gateway import resolve_model as resolve_model
    from bastion.graph import Graph as Graph
    from bastion.graph.agent import Agent as Agent
    from bastion.policy import Policy as Policy
    from bastion.policy import ToolGateway as ToolGateway
    from bastion.runtime import Runtime as Runtime
    from bastion.server import Project as Project
    from bastion.tools import Tool as Tool
    from bastion.tools import tool as tool

__all__ = [
    "Agent",
    "AllModelsFailedError",
    "BastionError",
    "BudgetExceededError",
    "CheckpointError",
    "CircuitOpenError",
    "ConfigError",
    "ContextWindowExceededError",
    "ControlFlowSignal",
    "Gateway",
    "Graph",
    "GraphInterrupt",
    "GraphRecursionError",
    "InvalidGraphError",
    "InvalidResponseError",
    "InvalidUpdateError",
    "MaxTurnsExceededError",
    "Message",
    "MissingExtraError",
    "Model",
    "ModelError",
    "ModelHTTPError",
    "ModelRequest",
    "ModelResponse",
    "ModelTimeoutError",
    "NodeTimeoutError",
    "OutputValidationError",
    "Policy",
    "PolicyDeniedError",
    "PolicyError",
    "Project",
    "ProviderUnavailableError",
    "RateLimitError",
    "RunContext",
    "Runtime",
    "SandboxUnavailableError",
    "SerializationError",
    "TextPart",
    "Tool",
    "ToolArgumentsError",
    "ToolCall",
    "ToolError",
    "ToolGateway",
    "ToolResult",
    "UnknownModelError",
    "Usage",
    "UserError",
    "__version__",
    "get_settings",
    "resolve_model",
    "tool",
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
