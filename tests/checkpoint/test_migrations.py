from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, TypedDict

import pytest

from bastion.checkpoint import FORMAT_VERSION, MIGRATIONS, Checkpointer, CheckpointRecord
from bastion.checkpoint._format import upgrade
from bastion.errors import CheckpointError
from bastion.graph import START, Graph, append
from bastion.types import Message

CORPUS = Path(__file__).parent / "corpus"


class State(TypedDict, total=False):
    messages: Annotated[list[Message], append]
    count: int


def _graph() -> Graph:
    g = Graph(State)
    g.add_node("a", lambda s: {"count": 1})
    g.add_node("b", lambda s: {"messages": [Message.assistant("hi back")], "count": s["count"] + 1})
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    return g


def test_migrations_are_an_ordered_list_ending_at_the_current_version() -> None:
    assert len(MIGRATIONS) + 1 == FORMAT_VERSION
    assert upgrade({"v": 1, "channel_values": {"x": 1}, "next": ["n"]}) == {
        "v": FORMAT_VERSION,
        "values": {"x": 1},
        "logs": {},
        "next": [["n"]],
        "src": "loop",
        "meta": {},
    }


async def test_frozen_v1_thread_is_read_and_resumed(backend: Checkpointer) -> None:
    corpus = json.loads((CORPUS / "v1_thread.json").read_text())
    for r in corpus["records"]:
        await backend.put(CheckpointRecord(**r))
    app = _graph().compile(checkpointer=backend)

    snap = await app.aget_state("legacy")
    assert snap.next == ("b",)
    assert [m.text for m in snap.values["messages"]] == ["hello"] and snap.values["count"] == 1

    out = await app.ainvoke(None, thread_id="legacy")  # continue the old run with the new engine
    assert [m.text for m in out["messages"]] == ["hello", "hi back"] and out["count"] == 2
    latest = (await backend.get_chain("legacy"))[0]
    assert json.loads(latest.payload)["v"] == FORMAT_VERSION, "new checkpoints use the current format"
    assert latest.parent_id == "0000000000000001aaaa", "and chain onto the old one (read through migration)"
    assert corpus["records"][0]["payload"] == (await backend.get_chain("legacy", "", latest.parent_id))[0].payload


@pytest.mark.parametrize(
    ("payload", "message"),
    [({"v": 99}, "newer than this Bastion"), ({"values": {}}, "no integer format version"), ({"v": 0}, "invalid")],
)
def test_unreadable_versions_are_refused_clearly(payload: dict[str, object], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        upgrade(payload)


@pytest.mark.parametrize(
    "payload",
    [
        '{"v":2,"values":[],"logs":{},"next":[]}',
        '{"v":2,"values":{},"logs":{"m":"not a list"},"next":[]}',
        '{"v":2,"values":{},"logs":{},"next":[[1]]}',
    ],
)
async def test_a_damaged_checkpoint_is_refused_with_advice(backend: Checkpointer, payload: str) -> None:
    await backend.put(CheckpointRecord("bad", "", "01", None, "01", 0, 1.0, payload))
    app = _graph().compile(checkpointer=backend)
    with pytest.raises(CheckpointError, match=r"does not match the checkpoint schema.*Fork or delete"):
        await app.aget_state("bad")
