"""Secrets are injected at execution and never reach the model, the audit log or approvals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bastion.policy import (
    REDACTED,
    ChainSecretProvider,
    EnvSecretProvider,
    FileSecretProvider,
    Policy,
    Redactor,
    StaticSecretProvider,
    ToolGateway,
)
from bastion.tools import tool
from bastion.types import ToolCall

CANARY = "sk-canary-0123456789abcdefXYZ"


async def test_tool_echoing_its_secret_is_redacted(tools: dict[str, Any], make_gateway: Any, ctx: Any) -> None:
    gw, _ = make_gateway()
    result = await gw.execute(ToolCall("whoami", {}), tools, ctx([]))
    assert not result.is_error
    assert CANARY not in result.content_text()
    assert result.content == f"authenticated with key {REDACTED}"
    redactions = gw.audit.entries(event="redaction")
    assert redactions and redactions[0].reasons == ["injected_secret"]
    # nothing anywhere in the audit log carries the canary
    for e in gw.audit.entries():
        assert CANARY not in repr(e)


async def test_model_cannot_supply_or_see_secret_parameters(tools: dict[str, Any], make_gateway: Any, ctx: Any) -> None:
    assert "api_key" not in tools["whoami"].parameters.get("properties", {})
    gw, _ = make_gateway()
    result = await gw.execute(ToolCall("whoami", {"api_key": "attacker-controlled"}), tools, ctx([]))
    assert result.is_error and result.content["type"] == "invalid_arguments"


async def test_missing_secret_is_a_clear_error(tools: dict[str, Any], make_gateway: Any, ctx: Any) -> None:
    gw, _ = make_gateway(secrets=EnvSecretProvider(environ={}))
    result = await gw.execute(ToolCall("whoami", {}), tools, ctx([]))
    assert result.is_error and result.content["type"] == "secret_missing"
    assert "BASTION_SECRET_API_KEY" in result.content["error"]


async def test_secret_in_a_tool_exception_is_redacted(ctx: Any) -> None:
    @tool(side_effect="read", secrets=["token"])
    def leaky(token: str) -> str:
        raise RuntimeError(f"auth failed for token {token}")

    with ToolGateway(
        Policy({"assistant": ["leaky"]}), secrets=StaticSecretProvider({"token": "tok-secret-canary-42"})
    ) as gw:
        result = await gw.execute(ToolCall("leaky", {}), {"leaky": leaky}, ctx([]))
    assert result.is_error and "tok-secret-canary-42" not in result.content_text()


async def test_env_file_and_chain_providers(tmp_path: Path) -> None:
    (tmp_path / "db_password").write_text("from-file\n")
    env = EnvSecretProvider(environ={"BASTION_SECRET_STRIPE_KEY": "from-env"})
    files = FileSecretProvider(tmp_path)
    chain = ChainSecretProvider(env, files)
    assert await chain.get("stripe-key") == "from-env"
    assert await chain.get("db_password") == "from-file"
    assert await chain.get("missing") is None
    assert await files.get("../etc/passwd") is None


@pytest.mark.parametrize(
    "leak",
    [
        "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 3,
        "sk-ant-api03-" + "x" * 40,
        "sk-" + "Z9" * 24,
        "AKIAIOSFODNN7EXAMPLE",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sgnature-part-xyz",
        "ghp_" + "a" * 36,
        "xoxb-1234567890-1234567890123-abcdefghijklmnopqrstuvwx",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
    ],
)
def test_redactor_catches_credential_shapes(leak: str) -> None:
    redactor = Redactor()
    out, hits = redactor.redact({"log": [f"config dump: {leak} end"]})
    text = out["log"][0]
    assert hits, leak
    assert REDACTED in text and text.startswith("config dump: ") and text.endswith(" end")
    secret_core = leak.split()[-1] if leak.startswith("Authorization") else leak
    assert secret_core not in text


def test_redactor_leaves_ordinary_data_alone() -> None:
    redactor = Redactor()
    text = "Invoice 4411 for 250.00 EUR, IBAN DE89370400440532013000, sha 9f86d081884c7d659a2feaa0c55ad015"
    assert redactor.redact_text(text) == (text, [])
