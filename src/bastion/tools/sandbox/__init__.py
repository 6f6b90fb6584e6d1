"""Sandboxed code execution with bubblewrap: one fresh sandbox per call, refuse if unavailable."""

from bastion.tools.sandbox._bwrap import Sandbox, SandboxLimits, SandboxResult
from bastion.tools.sandbox._egress import EgressEvent, EgressPolicy, EgressProxy, audit_log_sink
from bastion.tools.sandbox._tools import sandbox_tools

__all__ = [
    "EgressEvent",
    "EgressPolicy",
    "EgressProxy",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "audit_log_sink",
    "sandbox_tools",
]
