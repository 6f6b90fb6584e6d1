"""Serve an ASGI app for real on 127.0.0.1 inside the current event loop (tests, demos)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncGenerator
from typing import Any, Literal


@contextlib.asynccontextmanager
async def serve_app(app: Any, *, lifespan: Literal["on", "off"] = "on", port: int = 0) -> AsyncGenerator[str]:
    """Run `app` under uvicorn on 127.0.0.1 (a free port unless given); yield its base URL.

    Readiness is awaited with a bounded poll (10 s); shutdown is bounded too.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)  # readiness poll interval
        if not server.started:
            if task.done():
                task.result()
            raise RuntimeError("uvicorn did not start within 10 s")
        yield f"http://127.0.0.1:{bound}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)
        sock.close()
