"""Structured output: ask the model for JSON matching `output_type`, validate its answer, and
turn a validation failure into feedback the model can act on."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from bastion.types import Message, OutputSchema

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


class OutputInvalid(Exception):
    """The final answer did not validate; `problems` is the text fed back to the model."""

    def __init__(self, problems: str) -> None:
        self.problems = problems
        super().__init__(problems)


@dataclass(slots=True)
class OutputSpec:
    """How one agent's final answer is requested, validated and stored."""

    type: Any
    adapter: Any  # pydantic TypeAdapter, typed loosely to keep pydantic out of signatures
    schema: OutputSchema

    @classmethod
    def for_type(cls, output_type: Any) -> OutputSpec:
        from pydantic import TypeAdapter

        from bastion.tools import output_schema_for

        name = getattr(output_type, "__name__", "output")
        return cls(output_type, TypeAdapter(output_type), OutputSchema(name, output_schema_for(output_type)))

    def parse(self, text: str) -> Any:
        """Validate the model's text; return the JSON form stored in the graph state."""
        from pydantic import ValidationError

        match = _FENCE.match(text)
        raw = match.group(1) if match else text
        try:
            value = self.adapter.validate_json(raw)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()
            )
            raise OutputInvalid(problems) from None
        return self.adapter.dump_python(value, mode="json")

    def load(self, stored: Any) -> Any:
        """Rebuild the typed value from its stored JSON form."""
        return self.adapter.validate_python(stored)

    def feedback(self, problems: str) -> Message:
        schema = json.dumps(self.schema.schema, separators=(",", ":"))
        return Message.user(
            f"Your final answer is not valid {self.schema.name}: {problems}. "
            f"Reply with only a JSON object matching this schema: {schema}",
            name="output_validator",
        )
