"""Prompt-caching benchmark (issue 14): the cost of a 20-turn agent conversation with and
without provider prompt caching, on the fake server, which reports cache usage the way each
provider does (`bastion.testing.PromptCaches`), priced by genai-prices. Both arms run here, in
the same process, on the same script.

    .venv/bin/python bench/caching.py            # ~10 s
    .venv/bin/python bench/caching.py --turns 5

The conversation: one real `Agent` (default context policy), a ~2,000-token system prompt
and two tools, on one thread; each of the 20 user turns makes the model call a tool (a
~250-token result) and then answer, so 40 model calls. "With" is the default; "without" is
`ModelSettings(prompt_cache=False)`. What differs per provider:

- Anthropic (claude-sonnet-4-5): nothing is cached without breakpoints. Writes cost 1.25x
  input, reads 0.1x.
- OpenAI (gpt-4o-mini): OpenAI caches on its own; the fake reads only under the same
  `prompt_cache_key`, modelling a busy fleet where requests that share just the agent's
  system prompt land on different machines. So "without" is the no-hit bound, not what a
  quiet account would see. Reads cost 0.5x input, writes are free.
- Gemini (gemini-2.5-flash): the system prompt + tools become a `cachedContents` resource on
  their second use; the history is left to Gemini's implicit caching, which the fake does
  not model (so "with" understates Gemini's savings). The storage fee (~$1/Mtok/hour) is not
  included: ~2,000 tokens for 5 minutes cost ~$0.0002.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import fmt, machine_note, table, write_results

from bastion import Agent
from bastion.gateway import Gateway
from bastion.gateway._http import aclose_http_sessions
from bastion.gateway._resolve import resolve_model
from bastion.testing import FakeOpenAIServer
from bastion.types import (
    ModelRequest,
    ModelResponse,
    ModelSettings,
    ResponseDone,
    RunContext,
    StreamEvent,
    ToolCall,
    Usage,
)

SYSTEM = (
    "You are the support agent of Acme Cloud. Answer from the documentation you retrieve, cite the "
    "page you used, never invent a setting, and escalate billing disputes to a human. "
) * 45  # ~2,000 tokens, the size of a typical agent's instructions
RESULT = "Setting | Default | Notes\n" + "".join(
    f"option_{i} | {i * 7} | applies to plan tier {i % 4}\n" for i in range(40)
)


class Recorder:
    """A Model that passes calls through and keeps every response (its usage and cost)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.responses: list[ModelResponse] = []

    @property
    def name(self) -> str:
        return str(self.inner.name)

    async def request(self, request: ModelRequest) -> ModelResponse:
        response = await self.inner.request(request)
        self.responses.append(response)
        return response

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        async for event in self.inner.stream(request):
            if isinstance(event, ResponseDone):
                self.responses.append(event.response)
            yield event


def search_docs(query: str) -> str:
    """Search the Acme Cloud documentation."""
    return RESULT


def open_ticket(summary: str) -> str:
    """Open a ticket for a human."""
    return "ticket opened"


def target(srv: FakeOpenAIServer, provider: str) -> Any:
    if provider == "anthropic":
        return srv.anthropic_model("claude-sonnet-4-5")
    if provider == "openai":
        return resolve_model("openai:gpt-4o-mini", base_url=srv.base_url, api_key="bench-key")
    return srv.gemini_model("gemini-2.5-flash")


async def conversation(srv: FakeOpenAIServer, provider: str, turns: int, cache: bool) -> dict[str, Any]:
    srv.reset()
    model = target(srv, provider)
    recorder = Recorder(Gateway(models=[model]).model(model.name))
    agent = Agent(
        recorder,
        name="support",
        instructions=SYSTEM,
        tools=[search_docs, open_ticket],
        model_settings=ModelSettings(max_tokens=512, prompt_cache=cache),
    )
    context = RunContext(tenant="acme", session="thread-1")
    started = time.perf_counter()
    for turn in range(turns):
        srv.reply(
            ToolCall("search_docs", {"query": f"question {turn}"}),
            f"According to the settings page, option_{turn} defaults to {turn * 7}. " * 4,
        )
        await agent.run(
            f"Customer question {turn}: what is the default of option_{turn}?", thread_id="thread-1", context=context
        )
    elapsed = time.perf_counter() - started
    usage = sum((r.usage for r in recorder.responses), Usage())
    costs = [r.cost_usd for r in recorder.responses]
    await aclose_http_sessions()
    return {
        "model": model.name,
        "calls": len(recorder.responses),
        "input_tokens": usage.input_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "cost_usd": None if any(c is None for c in costs) else sum(c for c in costs if c is not None),
        "seconds": elapsed,
    }


async def main(turns: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    async with FakeOpenAIServer(record=False) as srv:
        for provider in ("anthropic", "openai", "gemini"):
            without = await conversation(srv, provider, turns, cache=False)
            with_cache = await conversation(srv, provider, turns, cache=True)
            saving = (
                1 - with_cache["cost_usd"] / without["cost_usd"]
                if with_cache["cost_usd"] is not None and without["cost_usd"]
                else None
            )
            rows.append({"provider": provider, "without": without, "with": with_cache, "saving": saving})
    return {"turns": turns, "machine": machine_note(), "rows": rows}


def render(results: dict[str, Any]) -> str:
    headers = [
        "model",
        "caching",
        "calls",
        "input tok",
        "cache read",
        "cache write",
        "output tok",
        "cost USD",
        "saving",
    ]
    lines: list[list[str]] = []
    for row in results["rows"]:
        for arm in ("without", "with"):
            r = row[arm]
            saving = fmt(row["saving"] * 100, 1, "%") if arm == "with" and row["saving"] is not None else ""
            lines.append(
                [
                    r["model"],
                    "on" if arm == "with" else "off",
                    str(r["calls"]),
                    f"{r['input_tokens']:,}",
                    f"{r['cache_read_tokens']:,}",
                    f"{r['cache_write_tokens']:,}",
                    f"{r['output_tokens']:,}",
                    fmt(r["cost_usd"], 4),
                    saving,
                ]
            )
    return table(headers, lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    results = asyncio.run(main(args.turns))
    print(f"A {results['turns']}-turn agent conversation, prompt caching off vs on ({results['machine']})\n")
    print(render(results))
    if args.turns == 20:
        print("\nwrote", write_results("caching", results))
