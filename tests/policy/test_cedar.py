"""Policies in Cedar: validated at load, custom policy files, tenant scoping, context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bastion.errors import ConfigError
from bastion.policy import CedarAuthorizer, Policy, default_policy_text
from bastion.types import ToolCall


def test_invalid_policy_is_a_config_error_naming_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"attribute `amount`"):
        Policy(policies=["permit (principal, action, resource) when { resource.amount < 100 };"])
    with pytest.raises(ConfigError):
        Policy(policies=["permit (principal action resource"])  # syntax error


def test_missing_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Policy(policies=[tmp_path / "nope.cedar"])
    with pytest.raises(ConfigError, match=r"no \.cedar files"):
        Policy(policies=[tmp_path])


async def test_policy_directory_with_forbid_on_context(
    tmp_path: Path, tools: dict[str, Any], make_gateway: Any, ctx: Any, bank: Any
) -> None:
    (tmp_path / "00-default.cedar").write_text(default_policy_text())
    (tmp_path / "10-limits.cedar").write_text(
        """
        @id("no-big-transfers")
        forbid (principal, action, resource)
        when { resource.name == "transfer" && context.max_amount > 1000 };

        @id("acme-only-email")
        forbid (principal, action, resource)
        when { resource.name == "send_email" && context.tenant != "acme" };
        """
    )
    policy = Policy({"assistant": ["transfer", "send_email"]}, policies=[tmp_path])
    gw, asked = make_gateway(policy, answers=["approve"])
    big = await gw.execute(ToolCall("transfer", {"iban": "DE89370400440532013000", "amount": 1000.5}), tools, ctx([]))
    assert big.content["type"] == "policy_denied"
    small = await gw.execute(ToolCall("transfer", {"iban": "DE89370400440532013000", "amount": 1000}), tools, ctx([]))
    assert not small.is_error and len(asked) == 1
    assert bank.transfers == [("DE89370400440532013000", 1000.0)]


def test_grants_scoped_by_tenant(tools: dict[str, Any]) -> None:
    from bastion.types import RunContext

    policy = Policy({"acme/assistant": ["fetch"]})
    tool = tools["fetch"]
    args = {"url": "https://api.example.com/"}
    assert policy.decide(tool, args, agent="assistant", run=RunContext(tenant="acme")).effect == "allow"
    assert policy.decide(tool, args, agent="assistant", run=RunContext(tenant="globex")).effect == "deny"


def test_decision_ids_come_from_annotations(tools: dict[str, Any]) -> None:
    from bastion.types import RunContext

    auth = CedarAuthorizer()
    policy = Policy({"assistant": ["send_email", "transfer"]})
    d = policy.decide(
        tools["send_email"], {"to": "a@b.co", "subject": "", "body": ""}, agent="assistant", run=RunContext()
    )
    assert d.effect == "allow" and d.reasons == ["cedar:grant-reversible"]
    d = policy.decide(tools["transfer"], {"iban": "x", "amount": 1}, agent="assistant", run=RunContext())
    assert d.effect == "require_approval" and d.reasons == ["cedar:grant-irreversible-with-approval"]
    assert auth.policy_text == default_policy_text()
