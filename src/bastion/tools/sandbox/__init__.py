"""Sandboxed code execution with bubblewrap: one fresh sandbox per call, refuse if unavailable."""

from bastion.tools.sandbox._bwrap import Sandbox, SandboxLimits, SandboxResult
from bastion.tools.sandbox._tools import sandbox_tools

__all__ = ["Sandbox", "SandboxLimits", "SandboxResult", "sandbox_tools"]
