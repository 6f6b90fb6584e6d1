from __future__ import annotations

import bastion.policy as policy
import bastion.tools as tools


def test_policy_public_surface_is_pinned() -> None:
    assert sorted(policy.__all__) == sorted(
        [
            "REDACTED", "ApprovalDecision", "ArgProvenance", "Decision", "Declassify", "ApprovalRequest",
            "Approver", "ArgAllowlist", "ArgLimit",
            "AuditAnchor", "AuditEntry", "AuditLog", "CallbackApprover", "CedarAuthorizer", "CedarDecision",
            "ChainSecretProvider", "ClassifierDetector", "Effect", "EnvSecretProvider", "FileSecretProvider",
            "HeuristicDetector", "HostAllowlist", "InjectionDetector", "InjectionFinding", "InterruptApprover",
            "Policy", "PolicyDecision", "RateLimit", "Redactor", "RiskSummary", "Rule",
            "SecretProvider", "StaticSecretProvider", "TaintReport", "TaintedValue", "ToolGateway", "Violation",
            "VerifyResult", "audit_key", "default_policy_text", "default_schema_text", "describe_argument",
            "load_onnx_classifier", "parse_resume", "scrub_spotlight", "spotlight", "strip_invisible",
            "verify_audit_log", "verify_export",
        ]
    )  # fmt: skip
    for name in policy.__all__:
        assert getattr(policy, name) is not None


def test_tools_exports_resolve() -> None:
    for name in tools.__all__:
        assert getattr(tools, name) is not None
    assert {"ToolRunner", "ToolRegistry", "SqliteJournal", "MemoryJournal", "CircuitBreaker"} <= set(tools.__all__)
