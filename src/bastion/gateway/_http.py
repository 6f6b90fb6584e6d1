"""One pooled aiohttp `ClientSession` per provider and event loop.

Sessions are created lazily on the running loop (a session cannot outlive or cross loops)
and reused for every call to that provider, so connections stay warm. Close them with
`await aclose_http_sessions()`. If nobody does, they still close with their loop: each
session is tied to a small parked async generator, and `asyncio.run()` / `asyncio.Runner`
(hence `run_sync`) finalise every async generator before closing the loop. A session left on
a loop that closed some other way is detached on the next lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

    from bastion.gateway._providers import Provider

_Key = tuple[str, int]  # (provider name, id(loop))

_sessions: dict[_Key, tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession, AsyncGenerator[None, None]]] = {}
_lock = threading.Lock()


def get_session(provider: Provider) -> aiohttp.ClientSession:
    """The pooled session for `provider` on the running loop (created on first use)."""
    loop = asyncio.get_running_loop()
    key = (provider.name, id(loop))
    entry = _sessions.get(key)
    if entry is not None and entry[0] is loop and not entry[1].closed:
        return entry[1]
    return _new_session(provider, loop, key)


def _new_session(provider: Provider, loop: asyncio.AbstractEventLoop, key: _Key) -> aiohttp.ClientSession:
    import aiohttp

    with _lock:
        _drop_dead_sessions()
        entry = _sessions.get(key)
        if entry is not None and entry[0] is loop and not entry[1].closed:
            return entry[1]
        connector = aiohttp.TCPConnector(
            limit=provider.connection_limit, ttl_dns_cache=300, enable_cleanup_closed=False
        )
        session = aiohttp.ClientSession(
            connector=connector,
            # The per-attempt timeout is set on each request from ModelSettings.timeout.
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "bastion"},
        )
        _sessions[key] = (loop, session, _park_closer(session))
        return session


async def _closer(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        if not session.closed:
            await session.close()


def _park_closer(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    # Advancing the generator once registers it with the running loop (asyncgen firstiter
    # hook); the loop's shutdown_asyncgens() then runs its `finally` while the loop still
    # runs. Nothing before the `yield` awaits, so one send() reaches it synchronously.
    gen = _closer(session)
    step = gen.__anext__()
    try:
        step.send(None)
    except StopIteration:
        pass
    return gen


def _drop_dead_sessions() -> None:
    # A session whose loop is gone can no longer be awaited closed; detach it so garbage
    # collection stays quiet, and drop its sockets without the loop.
    for key, (loop, session, _) in list(_sessions.items()):
        if loop.is_closed() or session.closed:
            del _sessions[key]
            if not session.closed:
                connector = session.connector
                session.detach()
                if connector is not None:
                    with contextlib.suppress(Exception):
                        connector._close()  # pyright: ignore[reportPrivateUsage]


async def aclose_http_sessions() -> None:
    """Close every pooled session that belongs to the running loop."""
    loop = asyncio.get_running_loop()
    with _lock:
        mine = [(s, gen) for lp, s, gen in _sessions.values() if lp is loop]
        for k in [k for k, (lp, _, _) in _sessions.items() if lp is loop]:
            del _sessions[k]
        _drop_dead_sessions()
    for session, gen in mine:
        await session.close()
        await gen.aclose()


def open_session_count() -> int:
    """How many pooled sessions are open (for tests and diagnostics)."""
    return sum(1 for _, s, _ in _sessions.values() if not s.closed)


__all__ = ["aclose_http_sessions", "get_session", "open_session_count"]
