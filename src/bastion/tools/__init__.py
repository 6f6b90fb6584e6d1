"""Tools: typed functions with JSON schemas and safety metadata, executed only through the
tool gateway."""

from bastion.tools._executor import ToolCallContext, ToolExecutor
from bastion.tools._tool import Tool, canonical_json, output_schema_for, schema_version, tool

__all__ = [
    "Tool",
    "ToolCallContext",
    "ToolExecutor",
    "canonical_json",
    "output_schema_for",
    "schema_version",
    "tool",
]
