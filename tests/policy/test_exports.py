from __future__ import annotations

import bastion.policy as policy
import bastion.tools as tools


def test_policy_public_surface_is_pinned() -> None:
    assert sorted(policy.__all__) == sorted(
        [
            "REDACTED", "ApprovalDecision", "ApprovalRequest", "Approver", "ArgAllowlist", "ArgLimit",
            "AuditEntry", "AuditLog", "CallbackApprover", "CedarAuthorizer", "CedarDecision",
            "ChainSecretProvider", "ClassifierDetector", "Effect", "EnvSecretProvider", "FileSecretProvider",
            "HeuristicDetector", "HostAllowlist", "InjectionDetector", "InjectionFinding", "InterruptApprover",
            "Policy", "PolicyDecision", "Provenance", "RateLimit", "Redactor", "RiskSummary", "Rule",
            "SecretProvider", "StaticSecretProvider", "TaintReport", "TaintedValue", "ToolGateway", "Violation",
            "VerifyResult", "default_policy_text", "default_schema_text", "extract_values",
            "load_onnx_classifier", "parse_resume", "spotlight", "strip_invisible",
        ]
    )  # fmt: skip
    for name in policy.__all__:
        assert getattr(policy, name) is not None


def test_tools_exports_resolve() -> None:
    for name in tools.__all__:
        assert getattr(tools, name) is not None
    assert {"ToolRunner", "ToolRegistry", "SqliteJournal", "MemoryJournal", "CircuitBreaker"} <= set(tools.__all__)
