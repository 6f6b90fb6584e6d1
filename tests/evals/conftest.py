from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.tracing import TraceStore, TracingHandle, configure_tracing


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TraceStore]:
    s = TraceStore(tmp_path / "traces.db")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def traced(store: TraceStore) -> Iterator[TracingHandle]:
    handle = configure_tracing(otlp_endpoint="", store=store, capture_content="span_attributes", metrics=False)
    try:
        yield handle
    finally:
        handle.shutdown()
