from __future__ import annotations

from typing import Literal

import pytest

from bastion.errors import ConfigError
from bastion.tools import ToolRegistry, compare_schemas, tool


def v1():
    @tool(name="send")
    def send(to: str, body: str, cc: str | None = None) -> str:
        return ""

    return send


def test_new_optional_field_is_compatible() -> None:
    @tool(name="send")
    def send(to: str, body: str, cc: str | None = None, urgent: bool = False) -> str:
        return ""

    reg = ToolRegistry([v1()])
    diff = reg.register(send)
    assert diff is not None and not diff.is_breaking
    assert any("urgent" in c for c in diff.compatible)
    assert len(reg.versions("send")) == 2 and reg["send"] is send


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("renamed", "renamed to 'recipient'"),
        ("type", "changed type"),
        ("new_required", "new required field 'subject'"),
        ("removed", "required field 'body' removed"),
    ],
)
def test_breaking_changes_detected(variant: str, expected: str) -> None:
    if variant == "renamed":

        @tool(name="send")
        def send(recipient: str, body: str, cc: str | None = None) -> str:
            return ""
    elif variant == "type":

        @tool(name="send")
        def send(to: list[str], body: str, cc: str | None = None) -> str:
            return ""
    elif variant == "new_required":

        @tool(name="send")
        def send(to: str, body: str, subject: str, cc: str | None = None) -> str:
            return ""
    else:

        @tool(name="send")
        def send(to: str, cc: str | None = None) -> str:
            return ""

    diff = compare_schemas("send", v1(), send)
    assert diff.is_breaking and any(expected in b for b in diff.breaking), diff.breaking
    reg = ToolRegistry([v1()])
    with pytest.raises(ConfigError, match="changed incompatibly"):
        reg.register(send)
    assert reg["send"].version == v1().version  # the old version stays in force
    assert reg.register(send, allow_breaking=True) is not None


def test_enum_narrowing_breaks_widening_does_not() -> None:
    @tool(name="p")
    def p1(level: Literal["a", "b"]) -> str:
        return ""

    @tool(name="p")
    def p2(level: Literal["a", "b", "c"]) -> str:
        return ""

    assert not compare_schemas("p", p1, p2).is_breaking
    assert compare_schemas("p", p2, p1).is_breaking
