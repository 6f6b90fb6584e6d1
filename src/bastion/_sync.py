"""Thin sync wrappers over the async core (one copy of the logic, never two)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from bastion.errors import UserError

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a fresh event loop.

    Refuses inside a running loop: blocking it would deadlock; `await` the async method instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise UserError(
        "a sync Bastion method was called inside a running event loop; "
        "await the async variant (e.g. `await agent.run(...)` instead of `agent.run_sync(...)`)"
    )
