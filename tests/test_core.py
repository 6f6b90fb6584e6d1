from __future__ import annotations

import subprocess
import sys

import pytest

import bastion
from bastion import errors
from bastion.testing import FunctionModel, ScriptedModel
from bastion.types import Message, ModelRequest, ToolCall, ToolResult, Usage

EXPECTED_PUBLIC = {
    "Agent", "Gateway", "Graph", "Message", "Model", "ModelRequest", "ModelResponse", "Policy", "Project",
    "RunContext", "Runtime", "TextPart", "Tool", "ToolCall", "ToolGateway", "ToolResult", "Usage", "__version__",
    "get_settings", "resolve_model", "tool",
}  # fmt: skip


def test_all_is_pinned_and_resolves() -> None:
    exceptions = {n for n in bastion.__all__ if n.endswith("Error") or n in {"ControlFlowSignal", "GraphInterrupt"}}
    assert set(bastion.__all__) - exceptions == EXPECTED_PUBLIC
    assert len(bastion.__all__) == len(set(bastion.__all__))
    for name in bastion.__all__:
        assert getattr(bastion, name) is not None, name


def test_every_exception_is_exported() -> None:
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__:
            assert name in bastion.__all__, f"{name} is not exported from bastion"
            assert issubclass(obj, errors.BastionError)


def test_import_does_not_pull_heavy_modules() -> None:
    code = (
        "import sys, bastion; heavy = [m for m in ('pydantic', 'aiohttp', 'opentelemetry', 'fastapi', "
        "'llama_cpp', 'numpy') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_message_round_trip() -> None:
    msg = Message(
        "assistant",
        [*Message.assistant("hi").parts, ToolCall("f", {"a": 1}, id="c1")],
        metadata={"k": "v"},
    )
    assert Message.from_dict(msg.to_dict()) == msg
    tool_msg = Message.tool(ToolResult("c1", "f", {"x": [1, 2]}, trust="trusted"))
    assert Message.from_dict(tool_msg.to_dict()) == tool_msg
    assert tool_msg.text == '{"x": [1, 2]}'


def test_unknown_part_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown message part kind 'video'"):
        Message.from_dict({"role": "user", "parts": [{"kind": "video"}]})


def test_usage_adds() -> None:
    total = Usage(1, 2, 3, 4, 5, 1) + Usage(10, 20, 30, 40, 50, 1)
    assert total == Usage(11, 22, 33, 44, 55, 2)
    assert Usage.from_dict(total.to_dict()) == total


async def test_scripted_model_replays_and_records() -> None:
    model = ScriptedModel(["hello", ToolCall("f", {"a": 1}), errors.RateLimitError(429, "slow down")])
    req = ModelRequest([Message.user("hi")])
    first = await model.request(req)
    assert first.text == "hello" and first.finish_reason == "stop"
    second = await model.request(req)
    assert second.tool_calls[0].name == "f" and second.finish_reason == "tool_calls"
    with pytest.raises(errors.RateLimitError):
        await model.request(req)
    with pytest.raises(errors.UserError, match="ran out of replies"):
        await model.request(req)
    assert len(model.requests) == 4


async def test_function_model_streams() -> None:
    from bastion.gateway import collect

    model = FunctionModel(lambda r: f"echo {r.messages[-1].text}")
    events = [e async for e in model.stream(ModelRequest([Message.user("a b")]))]
    assert "".join(getattr(e, "text", "") for e in events) == "echo a b"
    assert (await collect(model.stream(ModelRequest([Message.user("x")])))).text == "echo x"


def test_run_sync_refuses_inside_loop() -> None:
    import asyncio

    from bastion._sync import run_sync

    async def inner() -> None:
        async def noop() -> int:
            return 1

        with pytest.raises(errors.UserError, match="await the async variant"):
            run_sync(noop())

    asyncio.run(inner())

    async def one() -> int:
        return 1

    assert run_sync(one()) == 1


def test_missing_extra_names_the_extra() -> None:
    err = errors.MissingExtraError("local", "llama-cpp-python", "the local model")
    assert "pip install 'bastion[local]'" in str(err)
