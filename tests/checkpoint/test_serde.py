from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest
from pydantic import BaseModel

from bastion.checkpoint import dumps, loads, register_type
from bastion.errors import SerializationError
from bastion.types import Message, ModelResponse, ToolCall, ToolResult, Usage


@dataclasses.dataclass
class Order:
    sku: str
    qty: int = 1
    when: dt.datetime | None = None


class Profile(BaseModel):
    name: str
    age: int


register_type(Order, "tests.Order")
register_type(Profile, "tests.Profile")


@dataclasses.dataclass
class Unregistered:
    x: int


def test_round_trips_core_standard_and_registered_types() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    value = {
        "msgs": [
            Message.user("hi"),
            Message.assistant("", [ToolCall("f", {"a": [1, 2]}, id="c1")]),
            Message.tool(ToolResult("c1", "f", {"ok": True})),
        ],
        "resp": ModelResponse(Message.assistant("x"), Usage(3, 4), model="m:1"),
        "when": when,
        "day": dt.date(2026, 1, 2),
        "gap": dt.timedelta(seconds=1.5),
        "blob": b"\x00\xff",
        "pair": (1, "a"),
        "tags": {"b", "a"},
        "id": uuid.UUID(int=7),
        "money": Decimal("1.10"),
        "order": Order("sku-1", 2, when),
        "profile": Profile(name="ann", age=3),
        "tricky": {"__t": "not a tag", "n": None},
        "nested": [[{"x": 1.5}]],
    }
    back = loads(dumps(value))
    assert back == value
    assert isinstance(back["order"], Order) and isinstance(back["profile"], Profile)
    assert isinstance(back["pair"], tuple) and back["tricky"] == {"__t": "not a tag", "n": None}


def test_defaults_are_omitted_to_keep_payloads_small() -> None:
    text = dumps(Message.user("hi"))
    assert '"kind"' not in text and '"metadata"' not in text and '"name"' not in text
    assert loads(text) == Message.user("hi").__class__("user", Message.user("hi").parts, id=json.loads(text)["id"])


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"items": [1, 2, 3, {"when": object()}]}, "state.items[3].when"),
        ({"order": Unregistered(1)}, "state.order"),
        ({"o": Order("a", when=dt.time(1))}, "state.o.when"),  # type: ignore[arg-type]
        ({1: "int key"}, "state"),
    ],
)
def test_unsupported_values_name_their_path(value: object, path: str) -> None:
    with pytest.raises(SerializationError) as info:
        dumps(value)
    assert info.value.path == path
    assert "register_type" in str(info.value) or "persist" in str(info.value)


def test_unknown_tags_and_garbage_are_refused() -> None:
    with pytest.raises(SerializationError, match="unknown type tag"):
        loads('{"__t": "os.system", "d": "rm -rf"}')
    with pytest.raises(SerializationError, match="not valid JSON"):
        loads("{nope")
    with pytest.raises(SerializationError, match="does not match the current class"):
        loads('{"__t": "tests.Order", "sku": "a", "colour": "red"}')


def test_pydantic_payloads_are_validated_on_load() -> None:
    with pytest.raises(Exception, match="age"):
        loads('{"__t": "tests.Profile", "d": {"name": "x", "age": "not a number"}}')


def test_registration_conflicts_are_errors() -> None:
    @dataclasses.dataclass
    class Other:
        a: int

    with pytest.raises(SerializationError, match="already registered"):
        register_type(Other, "tests.Order")
    with pytest.raises(SerializationError, match="dataclasses and pydantic"):
        register_type(int)
