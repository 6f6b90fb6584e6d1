"""Grounded argument decoding: arguments marked `Grounded()` can only take values that appear in
the user's messages or tool results when the local model fills them (issue 15, item 18)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import Field

from bastion.gateway._resolve import resolve_model
from bastion.gateway.formats.llamacpp import ground_schema, grounded_candidates, grounding_texts
from bastion.tools import GROUNDED_KEY, Grounded, tool
from bastion.types import Message, ModelRequest, ModelSettings, ToolCall, ToolResult

IBAN = r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$"


@tool(side_effect="irreversible")
def refund(
    order_id: Annotated[int, Grounded()],
    amount: Annotated[float, Grounded()],
    iban: Annotated[str, Field(pattern=IBAN), Grounded()] | None = None,
    note: str = "",
) -> str:
    """Refund an order.

    Args:
        order_id: the order to refund.
        amount: the amount in EUR.
        iban: optional bank account to send the money to.
        note: free text.
    """
    return f"refunded {amount} for {order_id}"


def test_grounded_marks_the_schema_and_validation_is_unchanged() -> None:
    props = refund.parameters["properties"]
    assert props["order_id"] == {"type": "integer", GROUNDED_KEY: True, "description": "the order to refund."}
    assert props["amount"][GROUNDED_KEY] is True
    assert props["iban"]["anyOf"][0][GROUNDED_KEY] is True
    assert GROUNDED_KEY not in props["note"]
    assert refund.validate({"order_id": 1044, "amount": "34.50"}) == {
        "order_id": 1044,
        "amount": 34.5,
        "iban": None,
        "note": "",
    }


def test_candidates_become_an_alternation() -> None:
    texts = ["Please refund order 1044 (34.50 EUR) to GB33 BUKB 2020 1555 5555 55, thanks"]
    schema = ground_schema(refund.parameters, texts)
    props = schema["properties"]
    assert props["order_id"] == {"enum": [1044]}  # 34.50 is no integer; the IBAN's digit groups are no ids
    assert props["amount"] == {"enum": [1044, 34.5]}
    assert props["iban"]["anyOf"][0] == {"enum": ["GB33BUKB20201555555555"]}
    assert props["note"] == {"default": "", "description": "free text.", "type": "string"}  # not grounded
    resolve_model("local:gemma-3-270m")  # imports llama_cpp the way the gateway does (closing it at exit)
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    gbnf = json_schema_to_gbnf(json.dumps(schema))
    assert 'order-id ::= "1044"\n' in gbnf
    assert 'amount ::= "1044" | "34.5"\n' in gbnf
    assert '"\\"GB33BUKB20201555555555\\""' in gbnf


def test_no_candidates_leaves_the_argument_unrestricted_and_drops_optional_ones() -> None:
    schema = ground_schema(refund.parameters, ["hello, I want my money back"])
    props = schema["properties"]
    assert props["order_id"] == {"type": "integer", "description": "the order to refund."}
    assert props["amount"] == {"type": "number", "description": "the amount in EUR."}
    assert "iban" not in props  # optional and nobody wrote one: the model cannot fill it
    assert schema["required"] == ["order_id", "amount"]


def test_candidates_respect_type_pattern_bounds_and_format() -> None:
    texts = ["order ORD-77, 1,234.5 or 3,50 EUR; mail Bob@Example.com; IBAN DE89370400440532013000; -5"]
    assert grounded_candidates({"type": "number", "minimum": 0}, texts) == [1234.5, 3.5]
    assert grounded_candidates({"type": "integer"}, texts) == [-5]
    assert grounded_candidates({"type": "string", "format": "email"}, texts) == ["bob@example.com"]
    assert grounded_candidates({"type": "string", "pattern": IBAN}, texts) == ["DE89370400440532013000"]
    assert "ORD-77" in grounded_candidates({"type": "string", "maxLength": 8}, texts)


def test_grounds_are_user_words_and_tool_results_only() -> None:
    call = ToolCall("get_order", {"order_id": 1044})
    request = ModelRequest(
        [
            Message.system("Example: refund order 7 (25 EUR)."),
            Message.user("Refund order 1044 please."),
            Message.assistant("Refunding 99.99 now", [call]),
            Message.tool(ToolResult(call.id, "get_order", {"order_id": 1044, "amount": 34.5})),
        ],
        tools=[refund.spec],
    )
    texts = grounding_texts(request)
    assert grounded_candidates({"type": "number"}, texts) == [1044, 34.5]  # not 7, 25 or 99.99


REFUND_INSTRUCTIONS = (
    "You refund orders with the refund tool (order number, amount, and the IBAN only if the customer gave one), "
    "then confirm in one sentence."
)


@pytest.mark.local_model
async def test_real_local_model_refunds_exactly_the_requested_order_and_amount() -> None:
    model = resolve_model("local:gemma-3-270m")
    asks = {  # without grounding this model answered 35.78692, 35.78 and 9.857636e-16 (measured)
        "Please refund order 1044, it was 34.50 EUR.": (1044, 34.5),
        "I want my 34.50 EUR back for order 1044.": (1044, 34.5),
        "Refund 19.99 EUR for order 1042 please.": (1042, 19.99),
    }
    arguments: list[dict[str, Any]] = []
    for ask in asks:
        response = await model.request(
            ModelRequest(
                [Message.system(REFUND_INSTRUCTIONS), Message.user(ask)],
                tools=[refund.spec],
                tool_choice="required",
                settings=ModelSettings(temperature=0.0, max_tokens=60, timeout=120),
            )
        )
        assert response.finish_reason == "tool_calls", response.text
        call = response.tool_calls[0]
        assert call.name == "refund"
        arguments.append(call.arguments)
    for args, expected in zip(arguments, asks.values(), strict=True):
        assert (args["order_id"], args["amount"]) == expected, arguments
        assert "iban" not in args  # no IBAN was given: the optional argument is not offered at all


SUPPORT = Path(__file__).resolve().parents[2] / "examples" / "support"


@pytest.mark.local_model
async def test_demo_refund_tool_is_grounded_on_the_real_model(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("support_orders", SUPPORT / "orders.py")
    assert spec is not None and spec.loader is not None
    orders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(orders)
    get_order, demo_refund = orders.order_tools(tmp_path / "orders.db")
    assert get_order.parameters["properties"]["order_id"][GROUNDED_KEY] is True
    assert {"order_id", "amount", "iban"} == {
        name for name, prop in demo_refund.parameters["properties"].items() if GROUNDED_KEY in json.dumps(prop)
    }
    ask = "Please refund order 1044 (34.50 EUR) to my IBAN DE89370400440532013000."  # the demo's request
    response = await resolve_model("local:gemma-3-270m").request(
        ModelRequest(
            [Message.system(REFUND_INSTRUCTIONS), Message.user(ask)],
            tools=[demo_refund.spec],
            tool_choice="required",
            settings=ModelSettings(temperature=0.0, max_tokens=60, timeout=120),
        )
    )
    args = response.tool_calls[0].arguments
    assert (args["order_id"], args["amount"]) == (1044, 34.5), args
    assert args.get("iban") in (None, "DE89370400440532013000")  # the customer's IBAN or none, never invented
