from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.testing import DirectToolExecutor


class Rendezvous:
    """Proves concurrency without timing: each of `n` parties waits (bounded) until all have
    arrived, which only completes if they run at the same time."""

    def __init__(self, n: int, timeout: float = 5.0) -> None:
        self.n = n
        self.timeout = timeout
        self.arrived = 0
        self._all = asyncio.Event()

    async def meet(self) -> None:
        self.arrived += 1
        if self.arrived >= self.n:
            self._all.set()
        await asyncio.wait_for(self._all.wait(), self.timeout)


@pytest.fixture
def rendezvous() -> Callable[[int], Rendezvous]:
    return Rendezvous


@pytest.fixture
def executor() -> DirectToolExecutor:
    return DirectToolExecutor()


class Counter:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def hit(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]

    def __getitem__(self, name: str) -> int:
        return self.calls.get(name, 0)


@pytest.fixture
def counter() -> Counter:
    return Counter()


def texts(messages: Any) -> list[str]:
    return [m.text for m in messages]


class Traced:
    """Spans of the code under test, through `configure_tracing` and an in-memory exporter."""

    def __init__(self, exporter: InMemorySpanExporter, handle: Any) -> None:
        self.exporter = exporter
        self.handle = handle

    def spans(self) -> list[Any]:
        assert self.handle.force_flush(5.0)  # exporters are batched
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def traced() -> Iterator[Traced]:
    from bastion.tracing import configure_tracing

    exporter = InMemorySpanExporter()
    handle = configure_tracing(otlp_endpoint="", exporters=[exporter], capture_content="off", metrics=False)
    try:
        yield Traced(exporter, handle)
    finally:
        handle.shutdown()
