"""How `model=` is resolved: Model instances, gateway tiers, "provider:model" strings."""

from __future__ import annotations

import pytest

from bastion.errors import UnknownModelError, UserError
from bastion.gateway import Gateway
from bastion.graph.agent import Agent, Plan, PlanExecuteVerify, Verdict
from bastion.testing import DirectToolExecutor, ScriptedModel
from bastion.types import RunContext


def gateway(*models: ScriptedModel, **tiers: str) -> Gateway:
    return Gateway(tiers=tiers, models=list(models), cache=False)


async def test_each_agent_uses_its_own_gateway_tier() -> None:
    strong = ScriptedModel(
        [Plan.model_validate({"steps": ["a", "b"]}).model_dump_json(), *[Verdict(ok=True).model_dump_json()] * 2],
        name="test:strong",
    )
    fast = ScriptedModel(["did a", "did b"], name="test:fast")
    gw = gateway(strong, fast, strong="test:strong", fast="test:fast")
    ex = DirectToolExecutor()
    pattern = PlanExecuteVerify(
        planner=Agent("strong", gateway=gw, name="planner", output_type=Plan, tool_executor=ex),
        executor=Agent("fast", gateway=gw, name="worker", tool_executor=ex),
        verifier=Agent("strong", gateway=gw, name="verifier", output_type=Verdict, tool_executor=ex),
    )
    outcome = (await pattern.run("do a and b")).output
    assert outcome is not None and outcome.ok and sorted(outcome.results) == ["did a", "did b"]
    assert len(strong.requests) == 3 and len(fast.requests) == 2  # the planner, and the verifier per step


async def test_a_provider_model_string_resolves_lazily_through_the_gateway() -> None:
    agent = Agent("openai:gpt-4o-mini", name="lazy")  # no key, no network: nothing happens yet
    assert agent.model_name == "openai:gpt-4o-mini"
    assert agent.resolved_model().name  # a gateway-backed Model, still without any request


async def test_an_unknown_tier_fails_at_run_time_with_the_known_tiers() -> None:
    agent = Agent("galaxy-brain", gateway=gateway(strong="test:strong"), tool_executor=DirectToolExecutor())
    with pytest.raises(UnknownModelError, match="galaxy-brain"):
        await agent.run("hi")


def test_a_non_model_is_refused() -> None:
    agent = Agent(42, tool_executor=DirectToolExecutor())  # type: ignore[arg-type]
    with pytest.raises(UserError, match="is not a Model"):
        agent.resolved_model()


async def test_instructions_may_depend_on_the_run_context() -> None:
    model = ScriptedModel(["hi"])
    agent = Agent(model, instructions=lambda ctx: f"The user is {ctx.user}.", tool_executor=DirectToolExecutor())
    await agent.run("hello", context=RunContext(user="ann"))
    assert model.requests[0].messages[0].text == "The user is ann."
