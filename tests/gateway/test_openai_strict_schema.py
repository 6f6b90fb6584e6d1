"""Structured output on the OpenAI wire: pydantic schemas are closed for strict mode, and a
schema strict mode cannot take (optional fields, open maps) is sent non-strict instead of
drawing a 400 "Invalid schema" from OpenAI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from bastion.gateway.formats.openai_chat import build_payload
from bastion.testing import FakeOpenAIServer
from bastion.tools import output_schema_for
from bastion.types import Message, ModelRequest, OutputSchema


class City(BaseModel):
    name: str


class Trip(BaseModel):
    days: int
    stops: list[City]


class Draft(BaseModel):
    title: str
    note: str | None = None  # optional: strict mode would need it in `required`


def sent(schema: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    request = ModelRequest([Message.user("plan")], output=OutputSchema("Out", schema, strict=strict))
    return build_payload(request, "gpt-4o-mini")["response_format"]["json_schema"]


def test_a_pydantic_schema_is_closed_at_every_level_and_sent_strict() -> None:
    schema = output_schema_for(Trip)
    body = sent(schema)
    assert body["strict"] is True
    assert body["schema"]["additionalProperties"] is False
    assert body["schema"]["$defs"]["City"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the caller's schema is not changed


def test_schemas_strict_mode_cannot_take_are_sent_non_strict_and_unchanged() -> None:
    for schema in (output_schema_for(Draft), output_schema_for(dict[str, int])):
        assert sent(schema) == {"name": "Out", "schema": schema, "strict": False}
    assert sent(output_schema_for(Trip), strict=False)["strict"] is False  # asked non-strict


def test_a_schema_already_strict_passes_through_unchanged() -> None:
    schema = {
        "type": "object",
        "properties": {"properties": {"type": "string"}},  # a property named like the keyword
        "required": ["properties"],
        "additionalProperties": False,
    }
    assert sent(schema) == {"name": "Out", "schema": schema, "strict": True}


async def test_the_request_on_the_wire_carries_the_strict_schema() -> None:
    async with FakeOpenAIServer() as srv:
        srv.reply('{"days": 2, "stops": [{"name": "Porto"}]}')
        request = ModelRequest([Message.user("plan")], output=OutputSchema("Trip", output_schema_for(Trip)))
        response = await srv.model().request(request)
        assert response.parse(Trip) == Trip(days=2, stops=[City(name="Porto")])
        wire = srv.requests[-1].body["response_format"]["json_schema"]
        assert wire["strict"] is True and wire["schema"]["additionalProperties"] is False
