"""`ModelResponse.parse(T)`: the answer's JSON validated as a type, fenced or not."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bastion.errors import ModelError, OutputValidationError
from bastion.types import Message, ModelResponse


@dataclass
class Point:
    x: int
    y: int


def answer(text: str) -> ModelResponse:
    return ModelResponse(Message.assistant(text), model="test:m")


def test_parse_validates_plain_and_fenced_json() -> None:
    assert answer('{"x": 1, "y": 2}').parse(Point) == Point(1, 2)
    assert answer('```json\n{"x": 3, "y": "4"}\n```').parse(Point) == Point(3, 4)  # lax mode, like the agent
    assert answer("[1, 2, 3]").parse(list[int]) == [1, 2, 3]


def test_parse_names_every_failing_field_and_the_model() -> None:
    with pytest.raises(OutputValidationError) as caught:
        answer('{"x": "one"}').parse(Point)
    message = str(caught.value)
    assert "test:m" in message and "x: Input should be a valid integer" in message and "y: Field required" in message
    assert isinstance(caught.value, ModelError) and caught.value.model == "test:m"
    with pytest.raises(OutputValidationError, match="<root>: Invalid JSON"):
        answer("Sure! Here it is: {").parse(Point)
