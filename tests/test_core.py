from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import bastion
from bastion import errors
from bastion.testing import FunctionModel, ScriptedModel
from bastion.types import Message, ModelRequest, ToolCall, ToolResult, Usage, new_id, new_sortable_id

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


def test_sortable_ids_sort_by_creation_and_stay_unique() -> None:
    import time

    first = new_sortable_id("run_")
    deadline = time.monotonic() + 5
    nxt = first
    while nxt[4:15] == first[4:15] and time.monotonic() < deadline:  # the next millisecond
        nxt = new_sortable_id("run_")
    later = [nxt, *(new_sortable_id("run_") for _ in range(10_000))]
    assert all(first < x for x in later)  # (the order within one millisecond is random)
    assert len(set(later)) == len(later)
    assert len(first) == len(new_id("run_")) == len("run_") + 24 and first[4:].isalnum()
    # the prefix is Unix milliseconds: a reader can tell when an id was made
    assert abs(int(first[4:15], 16) / 1000 - time.time()) < 5


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


# Imports of another package's private modules (issue 15.6: there were 38). The set stays
# empty: export what is needed from the package's `__init__` (with `__all__`) and import it from there.
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str]] = set()


def private_cross_package_imports(root: Path | None = None) -> set[tuple[str, str]]:
    """(file under src/bastion, module) for every import of a `_private` module of another
    top-level package (`bastion.graph.agent` may use `bastion.graph._types`; `bastion.memory`
    may not use `bastion.graph.agent._runtime`)."""
    import ast

    root = root or Path(bastion.__file__).parent
    found: set[tuple[str, str]] = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        own = rel.parts[0] if len(rel.parts) > 1 else ""
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            for module in modules:
                parts = module.split(".")
                if parts[0] == "bastion" and len(parts) > 2 and parts[1] != own:
                    if any(p.startswith("_") for p in parts[2:]):
                        found.add((rel.as_posix(), module))
    return found


def test_no_new_private_imports_across_packages() -> None:
    new = private_cross_package_imports() - KNOWN_PRIVATE_IMPORTS
    assert not new, (
        f"{sorted(new)}: import these through the other package's public __init__ (add the names "
        "to its __all__), never its _private modules"
    )


def test_the_private_import_guard_sees_a_violation(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "graph" / "agent").mkdir(parents=True)
    (tmp_path / "memory" / "_tools.py").write_text(
        "from bastion.graph.agent._runtime import _RUNTIME\nfrom bastion.tools import Tool\n"
    )
    (tmp_path / "graph" / "agent" / "_loop.py").write_text(
        "from bastion.graph._types import Send\nimport bastion.tracing._state\n"
    )
    assert private_cross_package_imports(tmp_path) == {
        ("memory/_tools.py", "bastion.graph.agent._runtime"),
        ("graph/agent/_loop.py", "bastion.tracing._state"),
    }
    # fixed by issue 15: memory no longer reaches into the graph, policy uses tools' public API
    found = private_cross_package_imports()
    assert not any(f.startswith("memory/") and m.startswith("bastion.graph.") for f, m in found)
    assert not any(f.startswith("policy/") and m.startswith("bastion.tools.") for f, m in found)
