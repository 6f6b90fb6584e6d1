"""Batch benchmark: what 1,000 requests cost through the providers' batch APIs against the same
1,000 requests sent synchronously, measured in one run on the fake server.

    python bench/batch.py [--quick]

Upstream: `FakeOpenAIServer` (OpenAI Batch API and Anthropic Message Batches, plus the
synchronous routes); it answers every request alike (it echoes the prompt), so both paths see
the same token counts and the difference is the price. Prices come from genai-prices' bundled
table (its `processing: batch` variants for the batch path). Also reported: wall time on the
fake and HTTP requests made to the provider. `--quick` sends 200 requests instead of 1,000.
Writes bench/results/batch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import fmt, machine_note, table, write_results

from bastion.gateway import Gateway, MemoryBatchStore, Model, resolve_model
from bastion.testing import FakeOpenAIServer
from bastion.types import Message, ModelRequest, ModelSettings

MODELS = ("openai:gpt-4o-mini", "anthropic:claude-haiku-4-5")
CONCURRENCY = 50


def requests(n: int) -> list[ModelRequest]:
    topics = ["invoices", "refunds", "shipping", "returns", "warranty", "billing", "accounts", "orders"]
    return [
        ModelRequest(
            messages=[
                Message.system("You label customer e-mails with one topic and a one-line summary."),
                Message.user(
                    f"Ticket {i}: a customer writes about {topics[i % len(topics)]} and asks for an update on "
                    f"case #{10_000 + i}; they have waited {i % 9 + 1} days and want a reply today."
                ),
            ],
            settings=ModelSettings(max_tokens=128),
        )
        for i in range(n)
    ]


def model_at(srv: FakeOpenAIServer, name: str) -> Model:
    return resolve_model(name, base_url=srv.base_url, api_key="bench-key")


async def synchronous(gw: Gateway, model: Model, batch: list[ModelRequest]) -> tuple[float, float]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(request: ModelRequest) -> float:
        async with gate:
            return (await gw.request(request, model)).cost_usd or 0.0

    started = time.perf_counter()
    costs = await asyncio.gather(*(one(r) for r in batch))
    return sum(costs), time.perf_counter() - started


async def batched(gw: Gateway, model: Model, batch: list[ModelRequest]) -> tuple[float, float, int]:
    started = time.perf_counter()
    result = await gw.batch(batch, model, poll_interval=0)
    if result.failed:
        raise RuntimeError(f"{len(result.failed)} batch requests failed: {result.failed[0].error}")
    return result.cost_usd, time.perf_counter() - started, len(result.items)


async def main_async(n: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    async with FakeOpenAIServer(record=False) as srv:
        for name in MODELS:
            model = model_at(srv, name)
            batch = requests(n)
            async with Gateway(cache=False, batch_store=MemoryBatchStore()) as gw:
                before = srv.count
                sync_usd, sync_s = await synchronous(gw, model, batch)
                sync_http = srv.count - before
                srv.batches.reset()
                batch_usd, batch_s, answered = await batched(gw, model, batch)
                batch_http = sum(srv.batches.counts.values())
            rows.append(
                {
                    "model": name,
                    "requests": n,
                    "answered": answered,
                    "sync_usd": sync_usd,
                    "batch_usd": batch_usd,
                    "ratio": batch_usd / sync_usd if sync_usd else None,
                    "sync_seconds": sync_s,
                    "batch_seconds": batch_s,
                    "sync_http_requests": sync_http,
                    "batch_http_requests": batch_http,
                }
            )
    return {"machine": machine_note(), "rows": rows}


def report(data: dict[str, Any]) -> None:
    headers = [
        "model",
        "requests",
        "sync cost",
        "batch cost",
        "batch/sync",
        "sync wall (fake)",
        "batch wall (fake)",
        "HTTP sync",
        "HTTP batch",
    ]
    rows = [
        [
            r["model"],
            str(r["requests"]),
            "$" + fmt(r["sync_usd"], 4),
            "$" + fmt(r["batch_usd"], 4),
            fmt(r["ratio"], 3),
            fmt(r["sync_seconds"], 2, " s"),
            fmt(r["batch_seconds"], 2, " s"),
            str(r["sync_http_requests"]),
            str(r["batch_http_requests"]),
        ]
        for r in data["rows"]
    ]
    print(table(headers, rows))
    print(f"\n{data['machine']}; prices from genai-prices' bundled table (batch variants for the batch path).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 requests instead of 1,000")
    args = parser.parse_args(argv)
    data = asyncio.run(main_async(200 if args.quick else 1_000))
    data["quick"] = args.quick
    report(data)
    path = write_results("batch", data)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
