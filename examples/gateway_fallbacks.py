"""The model gateway: a fallback chain across providers, a hard USD budget, the response cache
and structured output. Both providers are faked at the HTTP edge (real HTTP on 127.0.0.1, no
network, no keys): "Anthropic" is down, "OpenAI" answers.

    python examples/gateway_fallbacks.py
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from bastion.errors import BudgetExceededError
from bastion.gateway import Budget, BudgetLimits, Gateway, ResponseCache, RetryPolicy, aclose_http_sessions
from bastion.testing import FakeOpenAIServer, Fault
from bastion.tools import output_schema_for
from bastion.types import Message, ModelRequest, ModelSettings, OutputSchema, RunContext


class Capital(BaseModel):
    city: str
    country: str


def ask(text: str, output: OutputSchema | None = None) -> ModelRequest:
    ctx = RunContext(tenant="acme", user="ada")  # budgets and cache entries are per tenant/user
    return ModelRequest([Message.user(text)], output=output, settings=ModelSettings(temperature=0), context=ctx)


async def main() -> None:
    async with FakeOpenAIServer() as anthropic_api, FakeOpenAIServer() as openai_api:
        anthropic_api.always(Fault.error(503))  # the primary provider is down
        openai_api.reply({"city": "Paris", "country": "France"})
        primary = anthropic_api.anthropic_model("claude-haiku-4-5")
        backup = openai_api.model("gpt-4o-mini")  # priced as gpt-4o-mini by genai-prices
        budget = Budget(user=BudgetLimits(usd=0.001))  # hard: a call that could overspend is refused
        gw = Gateway(
            tiers={"smart": [primary, backup]},  # a list is a fallback chain
            retry=RetryPolicy(max_attempts=2, base_delay=0.01),
            budgets=budget,
            cache=ResponseCache.in_memory(),  # exact cache for temperature-0 requests
        )
        question = ask("Capital of France?", OutputSchema("Capital", output_schema_for(Capital)))
        first = await gw.request(question, "smart")
        capital = first.parse(Capital)  # validated structured output
        print(f"answer: {capital!r} from {first.model}, ${first.cost_usd:.8f}")
        print(f"primary tried {anthropic_api.count}x (503), fallbacks: {gw.stats.fallbacks}")
        assert capital == Capital(city="Paris", country="France") and first.model == backup.name
        assert anthropic_api.count == 2 and gw.stats.fallbacks == 1

        again = await gw.request(question, "smart")  # same request: served from the cache
        print(f"again: cached={again.cached}, cost ${again.cost_usd}, backup calls: {openai_api.count}")
        assert again.cached and again.parse(Capital) == capital and openai_api.count == 1

        try:  # the worst case of this prompt (1 token per byte, at the chain's dearest price) > $0.001
            await gw.request(ask("Summarise: " + "lorem ipsum " * 150), "smart")
            raise AssertionError("the budget should have refused this call")
        except BudgetExceededError as e:
            print("refused:", str(e).split(" (")[0])
        spent = await budget.spent("user:acme/ada")
        print(f"spent by ada: {spent}")
        assert openai_api.count == 1 and spent.usd == first.cost_usd  # the refusal reached no provider
        await gw.aclose()
    await aclose_http_sessions()


if __name__ == "__main__":
    asyncio.run(main())
