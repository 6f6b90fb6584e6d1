"""Layer 5, security: the tool gateway and everything it enforces.

`ToolGateway` is the only path from a model's tool call to a tool function: default deny,
authorization in Cedar, argument rules and rate limits, human approvals with a system-written
risk summary, per-argument provenance and control-flow rules against prompt injection, spotlighting of untrusted
results, secret injection and redaction, and a hash-chained audit log.

Not here: the code sandbox (`bastion.tools.sandbox`) and the MCP client (`bastion.tools.mcp`).
"""

from bastion.policy._approval import (
    ApprovalDecision,
    ApprovalRequest,
    Approver,
    CallbackApprover,
    InterruptApprover,
    RiskSummary,
    describe_argument,
    parse_resume,
)
from bastion.policy._audit import (
    AuditAnchor,
    AuditEntry,
    AuditLog,
    VerifyResult,
    audit_key,
    verify_audit_log,
    verify_export,
)
from bastion.policy._cedar import CedarAuthorizer, CedarDecision, default_policy_text, default_schema_text
from bastion.policy._gateway import ToolGateway
from bastion.policy._injection import (
    ClassifierDetector,
    HeuristicDetector,
    InjectionDetector,
    InjectionFinding,
    load_onnx_classifier,
)
from bastion.policy._policy import Decision, Effect, Policy, PolicyDecision
from bastion.policy._provenance import ArgProvenance, Declassify
from bastion.policy._rules import ArgAllowlist, ArgLimit, HostAllowlist, RateLimit, Rule, Violation
from bastion.policy._secrets import (
    REDACTED,
    ChainSecretProvider,
    EnvSecretProvider,
    FileSecretProvider,
    Redactor,
    SecretProvider,
    StaticSecretProvider,
)
from bastion.policy._taint import TaintedValue, TaintReport, scrub_spotlight, spotlight, strip_invisible

__all__ = [
    "REDACTED",
    "ApprovalDecision",
    "ApprovalRequest",
    "Approver",
    "ArgAllowlist",
    "ArgLimit",
    "ArgProvenance",
    "AuditAnchor",
    "AuditEntry",
    "AuditLog",
    "CallbackApprover",
    "CedarAuthorizer",
    "CedarDecision",
    "ChainSecretProvider",
    "ClassifierDetector",
    "Decision",
    "Declassify",
    "Effect",
    "EnvSecretProvider",
    "FileSecretProvider",
    "HeuristicDetector",
    "HostAllowlist",
    "InjectionDetector",
    "InjectionFinding",
    "InterruptApprover",
    "Policy",
    "PolicyDecision",
    "RateLimit",
    "Redactor",
    "RiskSummary",
    "Rule",
    "SecretProvider",
    "StaticSecretProvider",
    "TaintReport",
    "TaintedValue",
    "ToolGateway",
    "VerifyResult",
    "Violation",
    "audit_key",
    "default_policy_text",
    "default_schema_text",
    "describe_argument",
    "load_onnx_classifier",
    "parse_resume",
    "scrub_spotlight",
    "spotlight",
    "strip_invisible",
    "verify_audit_log",
    "verify_export",
]
