"""The demo's refund approvals: the payload carries per-argument provenance, an amount the
model invented is shown as "not in the conversation", and the demo's scripted approver
rejects it (and approves a refund whose values are all the customer's)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.cli._demo import scripted_approval
from bastion.policy import ApprovalRequest, ArgLimit, AuditLog, CallbackApprover, Policy, ToolGateway
from bastion.tools import ToolCallContext
from bastion.types import Message, RunContext, ToolCall

SUPPORT = Path(__file__).resolve().parents[2] / "examples" / "support"


@pytest.fixture
def refund_tools(tmp_path: Path) -> Iterator[tuple[Any, Any, Path]]:
    sys.path.insert(0, str(SUPPORT))
    try:
        import orders  # pyright: ignore[reportMissingImports]
    finally:
        sys.path.remove(str(SUPPORT))
    db = tmp_path / "orders.db"
    orders.seed(db)
    get_order, refund = orders.order_tools(db)
    yield {"get_order": get_order, "refund": refund}, orders, db


def gateway(asked: list[ApprovalRequest]) -> ToolGateway:
    def decide(request: ApprovalRequest) -> dict[str, Any]:
        asked.append(request)
        decision, _ = scripted_approval(request.to_payload())
        return decision

    policy = Policy(  # the demo's policy for the refunds agent
        {"refunds": ["refund"]},
        rules=[
            ArgLimit("refund", "amount", max=1000),
            ArgLimit("refund", "amount", max=30, effect="require_approval", id="refund-over-30-eur"),
        ],
        on_taint="deny",
    )
    return ToolGateway(policy, approver=CallbackApprover(decide), audit=AuditLog())


def ctx(text: str) -> ToolCallContext:
    return ToolCallContext(run=RunContext(tenant="acme"), messages=[Message.user(text)], agent="refunds")


async def test_an_invented_refund_amount_is_shown_and_rejected(refund_tools: Any) -> None:
    tools, orders, db = refund_tools
    asked: list[ApprovalRequest] = []
    gw = gateway(asked)
    request = "Please refund order 1044 (34.50 EUR) to my IBAN DE89370400440532013000."
    call = ToolCall("refund", {"order_id": 1044, "amount": 9.86, "iban": "DE89370400440532013000"})
    result = await gw.execute(call, tools, ctx(request))
    assert result.content["type"] == "approval_rejected"
    risk = asked[0].to_payload()["risk"]
    amount = next(a for a in risk["arguments"] if a["argument"] == "amount")
    assert amount["origin"] == "invented" and amount["note"] == "not in the conversation"
    assert risk["level"] == "flagged" and "9.86" in risk["text"] and "NOT IN THE CONVERSATION" in risk["text"]
    assert "amount = 9.86 is not in the conversation" in result.content["error"]
    assert orders.refunds(db) == []


async def test_a_refund_in_the_customers_words_is_approved_or_runs(refund_tools: Any) -> None:
    tools, orders, db = refund_tools
    asked: list[ApprovalRequest] = []
    gw = gateway(asked)
    # over 30 EUR: a routine approval, every value from the customer, so the demo approves it
    over = ToolCall("refund", {"order_id": 1044, "amount": 34.5, "iban": "DE89370400440532013000"})
    ok = await gw.execute(over, tools, ctx("Please refund order 1044 (34.50 EUR) to my IBAN DE89370400440532013000."))
    assert not ok.is_error and asked[0].risk.level == "routine"
    assert {a["origin"] for a in asked[0].risk.arguments} == {"user"}
    # under 30 EUR and all in the customer's words: irreversible, yet no human needed
    small = ToolCall("refund", {"order_id": 1042, "amount": 19.99})
    assert not (await gw.execute(small, tools, ctx("I want a refund for order 1042 (19.99 EUR), please."))).is_error
    assert len(asked) == 1
    assert orders.refunds(db) == [(1044, 34.5, "DE89370400440532013000"), (1042, 19.99, "original payment")]
