"""The model doubles keep a bounded window of requests, so a load test cannot grow them without end."""

from __future__ import annotations

import pytest

from bastion.errors import UserError
from bastion.testing import FunctionModel, ScriptedModel
from bastion.testing._models import KEEP_REQUESTS
from bastion.types import Message, ModelRequest


def req(text: str) -> ModelRequest:
    return ModelRequest(messages=[Message.user(text)])


async def test_function_model_keeps_the_newest_requests_only() -> None:
    model = FunctionModel(lambda r: "ok", keep_requests=3)
    for i in range(10):
        await model.request(req(str(i)))
    assert [r.messages[0].text for r in model.requests] == ["7", "8", "9"]


async def test_default_window_is_bounded_and_none_keeps_everything() -> None:
    bounded = FunctionModel(lambda r: "ok")
    unbounded = FunctionModel(lambda r: "ok", keep_requests=None)
    for i in range(1_500):
        await bounded.request(req(str(i)))
        await unbounded.request(req(str(i)))
    assert len(bounded.requests) == KEEP_REQUESTS == 100 and bounded.requests[-1].messages[0].text == "1499"
    assert len(unbounded.requests) == 1_500


async def test_scripted_model_counts_calls_beyond_the_window() -> None:
    model = ScriptedModel(["a", "b", "c"], keep_requests=1)
    for text in "abc":
        assert (await model.request(req(text))).message.text == text
    with pytest.raises(UserError, match="after 3 calls"):
        await model.request(req("d"))
    assert len(model.requests) == 1
