"""The SSE parser is exact whatever the chunk boundaries (property-based)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.gateway.formats._sse import iter_sse


class _Chunks:
    """Just enough of aiohttp's StreamReader: `iter_any()` over given byte chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


def _parse(chunks: list[bytes]) -> list[tuple[str, str]]:
    async def run() -> list[tuple[str, str]]:
        return [e async for e in iter_sse(_Chunks(chunks))]  # type: ignore[arg-type]

    return asyncio.run(run())


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


events = st.lists(
    st.tuples(
        st.sampled_from(["", "message_start", "content_block_delta"]),
        st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), min_size=1),
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(events=events, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), crlf=st.booleans())
def test_any_chunking_gives_the_same_events(events: list[tuple[str, str]], cuts: list[int], crlf: bool) -> None:
    nl = "\r\n" if crlf else "\n"
    text = ": keep-alive" + nl + nl
    for name, data in events:
        text += (f"event: {name}{nl}" if name else "") + f"data: {data}{nl}{nl}"
    expected = [(name or "message", data) for name, data in events]
    assert _parse(_split(text.encode(), cuts)) == expected


def test_multiline_data_and_missing_final_blank_line() -> None:
    raw = b'data: a\ndata: b\n\nevent: x\ndata: {"k": 1}'
    assert _parse([raw]) == [("message", "a\nb"), ("x", '{"k": 1}')]


def test_long_lines_are_fine() -> None:
    payload = "x" * 300_000  # larger than aiohttp's readline limit
    assert _parse([f"data: {payload}\n\n".encode()]) == [("message", payload)]


def test_only_one_space_after_the_colon_is_dropped() -> None:
    assert _parse([b"data:x\n\ndata:  y\n\n"]) == [("message", "x"), ("message", " y")]
