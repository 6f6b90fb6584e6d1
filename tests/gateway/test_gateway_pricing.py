"""Cost: the bundled genai-prices table, local overrides, unknown models (None + one warning)."""

from __future__ import annotations

import logging

import pytest

from bastion.errors import ConfigError
from bastion.gateway import Gateway, Pricing
from bastion.testing import FunctionModel
from bastion.types import Message, ModelRequest, ModelResponse, Usage


def test_table_price_for_a_known_model() -> None:
    p = Pricing()
    # gpt-4o-mini: $0.15 / MTok input, $0.60 / MTok output
    assert p.cost("openai:gpt-4o-mini", Usage(input_tokens=1_000_000)) == pytest.approx(0.15)
    assert p.cost("openai:gpt-4o-mini", Usage(output_tokens=1_000_000)) == pytest.approx(0.60)


def test_cached_input_is_cheaper() -> None:
    p = Pricing()
    plain = p.cost("openai:gpt-4o-mini", Usage(input_tokens=1_000_000))
    cached = p.cost("openai:gpt-4o-mini", Usage(input_tokens=1_000_000, cache_read_tokens=1_000_000))
    assert plain is not None and cached is not None and cached == pytest.approx(plain / 2)


def test_openai_compat_and_anthropic_names_are_priced_by_model() -> None:
    p = Pricing()
    usage = Usage(input_tokens=1000, output_tokens=1000)
    assert p.cost("openai-compat:http://h:1/v1#gpt-4o", usage) == p.cost("openai:gpt-4o", usage)
    assert (p.cost("anthropic:claude-sonnet-4-5", usage) or 0) > 0


def test_overrides_win_exact_before_patterns() -> None:
    p = Pricing({"acme:*": 1.0, "acme:special": {"input": 2.0, "output": 4.0, "cache_read": 0.5}})
    assert p.cost("local:gemma-3-270m", Usage(1000, 1000)) == 0.0  # default override
    assert p.cost("test:anything", Usage(1000, 1000)) == 0.0
    assert p.cost("acme:other", Usage(500_000, 500_000)) == pytest.approx(1.0)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_read_tokens=500_000)
    assert p.cost("acme:special", usage) == pytest.approx(0.5 * 2.0 + 0.5 * 0.5 + 4.0)
    # an override can also re-price a model the table knows
    assert Pricing({"openai:gpt-4o-mini": 0}).cost("openai:gpt-4o-mini", Usage(10**6, 10**6)) == 0.0


def test_bad_override_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match="'input' and 'output'"):
        Pricing({"x:y": {"inp": 1.0}})


def test_unknown_model_costs_none_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    p = Pricing()
    with caplog.at_level(logging.WARNING, logger="bastion.gateway"):
        assert p.cost("openai:no-such-model-xyz", Usage(10, 10)) is None
        assert p.cost("openai:no-such-model-xyz", Usage(10, 10)) is None
        assert p.cost("mystery:thing", Usage(10, 10)) is None
    warnings = [r for r in caplog.records if "no price known" in r.getMessage()]
    assert len(warnings) == 2 and "openai:no-such-model-xyz" in warnings[0].getMessage()


def test_context_window_from_the_table() -> None:
    assert Pricing().context_window("openai:gpt-4o") == 128000
    assert Pricing().context_window("nope:nothing") is None


async def test_gateway_sets_cost_on_responses() -> None:
    def answer(r: ModelRequest) -> ModelResponse:
        usage = Usage(input_tokens=2_000_000, output_tokens=1_000_000, requests=1)
        return ModelResponse(Message.assistant("ok"), usage=usage, cost_usd=None)

    gw = Gateway(
        models=[FunctionModel(answer, name="acme:m"), FunctionModel(answer, name="acme:unknown")],
        pricing={"acme:m": {"input": 1.0, "output": 3.0}},
        cache=False,
    )
    resp = await gw.request(ModelRequest([Message.user("hi")]), "acme:m")
    assert resp.cost_usd == pytest.approx(5.0) and resp.model == "acme:m"
    assert gw.stats.cost_usd == pytest.approx(5.0)
    unknown = await gw.request(ModelRequest([Message.user("hi")]), "acme:unknown")
    assert unknown.cost_usd is None and unknown.text == "ok"


@pytest.mark.parametrize(
    ("name", "ref", "provider"),
    [
        ("openai:gpt-4o-mini", "gpt-4o-mini", "openai"),
        ("openai:gpt-4.1", "gpt-4.1", "openai"),
        ("anthropic:claude-sonnet-4-5", "claude-sonnet-4-5", "anthropic"),  # tiered: calc_price path
        ("gemini:gemini-2.5-flash", "gemini-2.5-flash", "google"),
    ],
)
@pytest.mark.parametrize(
    "usage", [Usage(1234, 567), Usage(1234, 567, cache_read_tokens=200), Usage(300_000, 10, cache_write_tokens=100)]
)
def test_float_fast_path_matches_calc_price(name: str, ref: str, provider: str, usage: Usage) -> None:
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    expected = calc_price(
        PriceUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        ),
        ref,
        provider_id=provider,
    ).total_price
    assert Pricing().cost(name, usage) == pytest.approx(float(expected), rel=1e-12)


def test_service_tier_selects_the_price_variant() -> None:
    from bastion.types import ModelSettings

    p = Pricing()
    usage = Usage(1_000_000, 0)
    batch = p.cost("openai:gpt-4o-mini", usage, ModelSettings(extra={"processing": "batch"}))
    assert batch == pytest.approx(0.075) and p.cost("openai:gpt-4o-mini", usage) == pytest.approx(0.15)
