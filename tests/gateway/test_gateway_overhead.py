"""Benchmark (slow, prints a table; no timing assertions): what the gateway adds per call.

1. In process, against an instant model: `model.request()` vs `gateway.request(model)`, so
   the number is the gateway's own cost (routing, breaker, retry loop, pricing, span).
2. Over HTTP against `FakeOpenAIServer` in a separate process: a bare aiohttp POST + JSON parse,
   the OpenAI wire format alone, and the gateway over that wire format.

Run: `.venv/bin/python -m pytest tests/gateway/test_gateway_overhead.py -m slow -s`
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bastion.gateway import Budget, BudgetLimits, Gateway, ResponseCache
from bastion.types import Message, ModelRequest, ModelResponse, ModelSettings, RunContext, Usage

pytestmark = pytest.mark.slow


class InstantModel:
    name = "openai:gpt-4o-mini"  # priced from the bundled table: the realistic path

    async def request(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse(Message.assistant("ok"), usage=Usage(50, 10, requests=1), model=self.name)

    async def stream(self, request: ModelRequest):  # pragma: no cover - not measured
        raise NotImplementedError


async def measure(fn: Callable[[], Awaitable[object]], n: int) -> tuple[float, float]:
    for _ in range(min(200, n // 5)):
        await fn()
    samples: list[float] = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t)
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6


async def measure_interleaved(fns: list[Callable[[], Awaitable[object]]], n: int) -> list[tuple[float, float]]:
    """Rounds that call every path once, in rotating order, so load from other processes on a
    shared machine hits all paths alike."""
    for fn in fns:
        for _ in range(100):
            await fn()
    samples: list[list[float]] = [[] for _ in fns]
    for i in range(n):
        for k in range(len(fns)):
            j = (i + k) % len(fns)
            t = time.perf_counter()
            await fns[j]()
            samples[j].append(time.perf_counter() - t)
    out: list[tuple[float, float]] = []
    for column in samples:
        column.sort()
        out.append((statistics.median(column) * 1e6, column[int(len(column) * 0.99)] * 1e6))
    return out


def table(rows: list[tuple[str, float, float]], base: float) -> str:
    out = [f"{'path':<48} {'p50 µs':>9} {'p99 µs':>9} {'added p50':>10}"]
    out += [f"{name:<48} {p50:>9.1f} {p99:>9.1f} {p50 - base:>+10.1f}" for name, p50, p99 in rows]
    return "\n".join(out)


async def test_gateway_overhead_in_process(tmp_path: Path) -> None:
    model = InstantModel()
    request = ModelRequest([Message.user("hello")])
    cached_req = ModelRequest([Message.user("hello")], settings=ModelSettings(temperature=0))
    budget_req = ModelRequest([Message.user("hello")], context=RunContext(tenant="t", run_id="r"))
    plain = Gateway(models=[model], cache=False)
    cached = Gateway(models=[model], cache=ResponseCache.in_memory())
    on_disk = Gateway(models=[model], cache=ResponseCache(path=tmp_path / "cache.db"))
    budgeted = Gateway(models=[model], cache=False, budgets=Budget(tenant=BudgetLimits(usd=1e9, tokens=10**15)))
    n = 20_000
    base = await measure(lambda: model.request(request), n)
    rows = [
        ("model.request() (no gateway)", *base),
        ("gateway.request() fast path", *await measure(lambda: plain.request(request, "openai:gpt-4o-mini"), n)),
        (
            "gateway.request() exact-cache hit (memory)",
            *await measure(lambda: cached.request(cached_req, "openai:gpt-4o-mini"), n),
        ),
        (
            "gateway.request() exact-cache hit (SQLite file)",
            *await measure(lambda: on_disk.request(cached_req, "openai:gpt-4o-mini"), n),
        ),
        (
            "gateway.request() with tenant budget (memory)",
            *await measure(lambda: budgeted.request(budget_req, "openai:gpt-4o-mini"), n),
        ),
    ]
    print("\n" + table(rows, base[0]))
    await plain.aclose()
    await cached.aclose()
    await on_disk.aclose()
    await budgeted.aclose()


async def test_gateway_overhead_over_http() -> None:
    import aiohttp

    from bastion.gateway import resolve_model
    from bastion.gateway._http import aclose_http_sessions

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bastion.testing._fake_server", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        base_url = line.strip().split()[-1].rstrip("/")
        assert base_url.startswith("http://"), line
        name = f"openai-compat:{base_url}#fake-model"
        model = resolve_model(name)
        gw = Gateway(cache=False, pricing={"openai-compat:*": {"input": 0.15, "output": 0.6}})
        request = ModelRequest([Message.user("hello")])
        body = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]})
        async with aiohttp.ClientSession() as session:

            async def bare() -> object:
                async with session.post(
                    f"{base_url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    return json.loads(await resp.read())

            n = 3000
            (base, wire, full) = await measure_interleaved(
                [bare, lambda: model.request(request), lambda: gw.request(request, name)], n
            )
            rows = [
                ("bare aiohttp POST + json.loads", *base),
                ("OpenAI wire format (resolve_model) alone", *wire),
                ("gateway.request() over the wire format", *full),
            ]
        print("\n" + table(rows, base[0]))
        await gw.aclose()
        await aclose_http_sessions()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
