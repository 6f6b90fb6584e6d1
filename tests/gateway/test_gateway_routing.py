"""Routing: tiers, fallback chains (incl. context-window fallback), the rule hook, deployments
with round-robin / least-in-flight balancing that skips open breakers, and `gw.model()`."""

from __future__ import annotations

import asyncio

import pytest

from bastion.errors import (
    AllModelsFailedError,
    CircuitOpenError,
    ContextWindowExceededError,
    ModelHTTPError,
    ProviderUnavailableError,
    RateLimitError,
    UnknownModelError,
    UserError,
)
from bastion.gateway import CircuitBreakerConfig, Gateway, Model, RetryPolicy
from bastion.testing import FunctionModel, ScriptedModel
from bastion.types import Message, ModelRequest, RunContext


def req(text: str = "hi", **ctx: object) -> ModelRequest:
    return ModelRequest([Message.user(text)], context=RunContext(**ctx))  # type: ignore[arg-type]


def echo(name: str) -> FunctionModel:
    return FunctionModel(lambda r: f"{name} answered", name=name)


def gw_with(*models: Model, **kw: object) -> Gateway:
    kw.setdefault("retry", RetryPolicy.none())
    return Gateway(models=list(models), cache=False, **kw)  # type: ignore[arg-type]


async def test_tier_fallback_chain_on_provider_errors() -> None:
    a = ScriptedModel([ProviderUnavailableError(503, "a down")], name="test:a")
    b = ScriptedModel([RateLimitError(429, "b busy")], name="test:b")
    c = echo("test:c")
    gw = gw_with(a, b, c, tiers={"strong": ["test:a", "test:b", "test:c"]})
    resp = await gw.request(req(), "strong")
    assert resp.text == "test:c answered" and resp.model == "test:c"
    assert gw.stats.fallbacks == 2
    assert gw.plan("strong") == [["test:a"], ["test:b"], ["test:c"]]


async def test_all_models_failed_lists_every_failure_in_order() -> None:
    a = ScriptedModel([ProviderUnavailableError(503, "a down")], name="test:a")
    b = ScriptedModel([RateLimitError(429, "b busy")], name="test:b")
    gw = gw_with(a, b, tiers={"t": ["test:a", "test:b"]})
    with pytest.raises(AllModelsFailedError) as info:
        await gw.request(req(), "t")
    errors = info.value.errors
    assert [type(e) for e in errors] == [ProviderUnavailableError, RateLimitError]
    assert [getattr(e, "model", None) for e in errors] == ["test:a", "test:b"]
    assert "a down" in str(info.value) and "b busy" in str(info.value)


async def test_fallback_on_is_configurable() -> None:
    a = ScriptedModel([ModelHTTPError(401, "bad key")], name="test:a")
    b = echo("test:b")
    gw = gw_with(a, b, tiers={"t": ["test:a", "test:b"]}, fallback_on=(ProviderUnavailableError,))
    with pytest.raises(ModelHTTPError, match="bad key"):
        await gw.request(req(), "t")
    assert b.requests == []


async def test_context_window_error_jumps_to_a_larger_window() -> None:
    small = ScriptedModel([ContextWindowExceededError("too long for 8k")], name="test:small")
    same = echo("test:same")  # same window as small: skipped
    big = echo("test:big")
    gw = gw_with(
        small,
        same,
        big,
        tiers={"t": ["test:small", "test:same", "test:big"]},
        context_windows={"test:small": 8000, "test:same": 8000, "test:big": 128000},
        fallback_on=(ProviderUnavailableError,),  # context-window fallback works regardless
    )
    resp = await gw.request(req("long " * 10), "t")
    assert resp.model == "test:big"
    assert same.requests == []


async def test_context_window_with_no_larger_model_fails_listing_the_skip() -> None:
    small = ScriptedModel([ContextWindowExceededError("too long")], name="test:small")
    other = echo("test:other")
    gw = gw_with(
        small,
        other,
        tiers={"t": ["test:small", "test:other"]},
        context_windows={"test:small": 8000, "test:other": 4000},
    )
    with pytest.raises(AllModelsFailedError) as info:
        await gw.request(req(), "t")
    assert len(info.value.errors) == 2 and "not larger than 8000" in str(info.value.errors[1])
    assert other.requests == []


async def test_single_model_failure_raises_the_original_error() -> None:
    gw = gw_with(ScriptedModel([ProviderUnavailableError(503, "down")], name="test:a"))
    with pytest.raises(ProviderUnavailableError):
        await gw.request(req(), "test:a")


async def test_route_hook_picks_tier_from_context_and_request() -> None:
    cheap, strong = echo("test:cheap"), echo("test:strong")
    seen: list[tuple[str, str | None]] = []

    def route(request: ModelRequest, context: RunContext) -> str | None:
        seen.append((request.messages[-1].text, context.agent))
        if context.tags.get("task") == "plan" or context.agent == "planner":
            return "strong"
        return None  # -> default

    gw = gw_with(cheap, strong, tiers={"cheap": "test:cheap", "strong": "test:strong"}, route=route, default="cheap")
    assert (await gw.request(req(agent="planner"))).model == "test:strong"
    assert (await gw.request(req(tags={"task": "plan"}))).model == "test:strong"
    assert (await gw.request(req(agent="worker"))).model == "test:cheap"
    assert (await gw.request(req(agent="planner"), "cheap")).model == "test:cheap"  # explicit wins
    assert seen == [("hi", "planner"), ("hi", None), ("hi", "worker")]


async def test_route_hook_may_return_a_model_instance() -> None:
    special = echo("test:special")
    gw = gw_with(echo("test:d"), default="test:d", route=lambda r, c: special if c.user == "vip" else None)
    assert (await gw.request(req(user="vip"))).model == "test:special"
    assert (await gw.request(req(user="joe"))).model == "test:d"


async def test_round_robin_across_deployments() -> None:
    a, b, c = echo("test:a"), echo("test:b"), echo("test:c")
    gw = gw_with(a, b, c, deployments={"gpt": ["test:a", "test:b", "test:c"]})
    got = [(await gw.request(req(), "gpt")).model for _ in range(6)]
    assert got == ["test:a", "test:b", "test:c"] * 2


async def test_balancing_skips_deployments_with_open_breakers() -> None:
    bad = ScriptedModel([ProviderUnavailableError(503, "down")] * 10, name="test:bad")
    good = echo("test:good")
    gw = gw_with(
        bad,
        good,
        deployments={"gpt": ["test:bad", "test:good"]},
        breaker=CircuitBreakerConfig(failure_threshold=1, cooldown=60),
        retry=RetryPolicy(max_attempts=2, base_delay=0),
    )
    # First call: bad fails (breaker opens), the retry goes to the next deployment.
    assert (await gw.request(req(), "gpt")).model == "test:good"
    assert gw.breaker_states()["test:bad"] == "open"
    for _ in range(4):
        assert (await gw.request(req(), "gpt")).model == "test:good"
    assert len(bad.requests) == 1


async def test_all_deployments_open_is_circuit_open() -> None:
    bad = ScriptedModel([ProviderUnavailableError(503, "down")] * 10, name="test:bad")
    gw = gw_with(bad, deployments={"gpt": ["test:bad"]}, breaker=CircuitBreakerConfig(failure_threshold=1))
    with pytest.raises(ProviderUnavailableError):
        await gw.request(req(), "gpt")
    with pytest.raises(CircuitOpenError):
        await gw.request(req(), "gpt")


async def test_least_in_flight_prefers_the_idle_deployment() -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def slow(r: ModelRequest) -> str:
        entered.set()
        await gate.wait()
        return "slow"

    a = FunctionModel(slow, name="test:a")
    b = echo("test:b")
    gw = gw_with(a, b, deployments={"m": ["test:a", "test:b"]}, strategy="least_in_flight")
    first = asyncio.create_task(gw.request(req(), "m"))  # goes to a (tie -> first) and stays there
    await asyncio.wait_for(entered.wait(), 5)
    for _ in range(3):
        assert (await gw.request(req(), "m")).model == "test:b"
    gate.set()
    assert (await asyncio.wait_for(first, 5)).model == "test:a"


async def test_tier_may_chain_deployment_aliases() -> None:
    a = ScriptedModel([ProviderUnavailableError(503, "x")], name="test:a")
    b = echo("test:b")
    gw = gw_with(a, b, deployments={"pool": ["test:a"]}, tiers={"strong": ["pool", "test:b"]})
    assert (await gw.request(req(), "strong")).model == "test:b"
    assert gw.plan("strong") == [["test:a"], ["test:b"]]


async def test_gateway_model_is_a_model() -> None:
    gw = gw_with(echo("test:a"), tiers={"cheap": "test:a"})
    m = gw.model("cheap")
    assert isinstance(m, Model) and m.name == "cheap"
    assert (await m.request(req())).text == "test:a answered"
    events = [e async for e in m.stream(req())]
    assert events[-1].kind == "done"


async def test_unknown_targets_say_what_is_known() -> None:
    gw = gw_with(echo("test:a"), tiers={"cheap": "test:a"})
    with pytest.raises(UnknownModelError, match=r"'nope'.*\['cheap'\]"):
        await gw.request(req(), "nope")
    with pytest.raises(UnknownModelError, match="unknown provider"):
        await gw.request(req(), "nosuchprovider:x")


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(UserError, match="both a tier and a deployment"):
        Gateway(tiers={"x": "test:a"}, deployments={"x": ["test:a"]}, cache=False)
    with pytest.raises(UserError, match="strategy"):
        Gateway(strategy="random", cache=False)  # type: ignore[arg-type]


async def test_resolves_provider_strings_through_resolve_model() -> None:
    gw = Gateway(cache=False)
    assert gw.plan("openai-compat:http://127.0.0.1:1/v1#m") == [["openai-compat:http://127.0.0.1:1/v1#m"]]
    await gw.aclose()


async def test_tiers_default_to_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.config import get_settings

    monkeypatch.setenv("BASTION_TIERS", '{"cheap": "test:from-settings"}')
    get_settings.cache_clear()
    try:
        gw = gw_with(echo("test:from-settings"))
        assert (await gw.request(req(), "cheap")).model == "test:from-settings"
        explicit = gw_with(echo("test:a"), tiers={})  # an explicit mapping ignores the settings
        with pytest.raises(UnknownModelError):
            await explicit.request(req(), "cheap")
    finally:
        get_settings.cache_clear()


async def test_retry_moves_to_another_deployment_without_waiting() -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    a = ScriptedModel([RateLimitError(429, "a busy", retry_after=5)], name="test:a")
    b = echo("test:b")
    gw = gw_with(a, b, deployments={"m": ["test:a", "test:b"]}, retry=RetryPolicy(max_attempts=2), sleep=sleep)
    assert (await gw.request(req(), "m")).model == "test:b"
    assert sleeps == []  # a's Retry-After only matters for a
    # with a single deployment the hint is honoured
    solo = gw_with(
        ScriptedModel([RateLimitError(429, "busy", retry_after=5), "ok"], name="test:solo"),
        retry=RetryPolicy(max_attempts=2),
        sleep=sleep,
    )
    await solo.request(req(), "test:solo")
    assert sleeps == [5]


def test_request_sync_wraps_the_async_core() -> None:
    gw = gw_with(echo("test:a"))
    assert gw.request_sync(req(), "test:a").text == "test:a answered"


async def test_request_sync_refuses_inside_a_loop() -> None:
    async with gw_with(echo("test:a")) as gw:
        with pytest.raises(UserError, match="running event loop"):
            gw.request_sync(req(), "test:a")
