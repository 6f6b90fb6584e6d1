"""Provider registry and `"provider:model"` resolution."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bastion.config import get_settings
from bastion.errors import ConfigError, UnknownModelError, UserError
from bastion.gateway._http import aclose_http_sessions
from bastion.gateway._model import Model
from bastion.gateway._providers import Provider, get_provider, known_providers, register_provider, unregister_provider
from bastion.gateway._resolve import LOCAL_DEFAULT, default_model_name, parse_model_string, resolve_model
from bastion.gateway.formats.anthropic import AnthropicModel
from bastion.gateway.formats.gemini import GeminiModel
from bastion.gateway.formats.openai_chat import OpenAIChatModel
from bastion.testing import FakeOpenAIServer
from bastion.types import Message, ModelRequest

KEY_VARS = [
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "BASTION_OPENAI_API_KEY",
    "BASTION_ANTHROPIC_API_KEY",
    "BASTION_GEMINI_API_KEY",
    "BASTION_DEFAULT_MODEL",
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("address", "cls", "base"),
    [
        ("openai:gpt-4o-mini", OpenAIChatModel, "https://api.openai.com/v1"),
        ("anthropic:claude-sonnet-4-5", AnthropicModel, "https://api.anthropic.com/v1"),
        ("gemini:gemini-2.5-flash", GeminiModel, "https://generativelanguage.googleapis.com/v1beta"),
        ("openai-compat:http://127.0.0.1:8000/v1#llama-3", OpenAIChatModel, "http://127.0.0.1:8000/v1"),
    ],
)
def test_builtin_addresses(address: str, cls: type, base: str) -> None:
    model = resolve_model(address)
    assert isinstance(model, cls) and isinstance(model, Model)
    assert model.name == address
    assert model.provider.base_url == base  # type: ignore[attr-defined]


def test_model_names_may_contain_colons() -> None:
    register_provider(Provider("ollama-t", "http://127.0.0.1:11434/v1"), replace=True)
    try:
        model = resolve_model("ollama-t:llama3:8b")
        assert model.model_name == "llama3:8b"  # type: ignore[attr-defined]
    finally:
        unregister_provider("ollama-t")


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("gpt-4o", "not of the form 'provider:model'"),
        ("nope:model", "unknown provider 'nope'"),
        ("openai-compat:http://h/v1", "openai-compat:<base_url>#<model>"),
        ("openai-compat:ftp://h/v1#m", "must start with http"),
    ],
)
def test_bad_addresses_say_how_to_fix(address: str, message: str) -> None:
    with pytest.raises(UnknownModelError, match=message) as info:
        resolve_model(address)
    if "unknown provider" in message:
        for name in ("openai", "anthropic", "gemini", "local", "openai-compat"):
            assert name in str(info.value)


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(UserError, match="unknown overrides \\['colour'\\]"):
        resolve_model("openai:gpt-4o-mini", colour="red")


def test_registry_rules() -> None:
    with pytest.raises(UserError, match="already registered"):
        register_provider(Provider("openai", "http://x"))
    with pytest.raises(UserError, match="reserved"):
        register_provider(Provider("openai-compat", "http://x"))
    with pytest.raises(UserError, match="contain no ':'"):
        register_provider(Provider("a:b", "http://x"))
    with pytest.raises(ConfigError, match="unknown wire format"):
        Provider("x", "http://x", "soap")  # type: ignore[arg-type]
    register_provider(Provider("openai", "http://127.0.0.1:1/v1"), replace=True)
    assert get_provider("openai").base_url == "http://127.0.0.1:1/v1"  # type: ignore[union-attr]
    unregister_provider("openai")
    assert get_provider("openai").base_url == "https://api.openai.com/v1"  # type: ignore[union-attr]
    assert "openai-compat" in known_providers()


def test_key_from_settings_never_in_repr(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("BASTION_ANTHROPIC_API_KEY", "sk-ant-secret")
    model = resolve_model("anthropic:claude-x")
    headers = model.provider.request_headers()  # type: ignore[attr-defined]
    assert headers["x-api-key"] == "sk-ant-secret" and headers["anthropic-version"] == "2023-06-01"
    assert "sk-ant-secret" not in repr(model.provider)  # type: ignore[attr-defined]


def test_missing_key_names_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="BASTION_GEMINI_API_KEY"):
        resolve_model("gemini:g").provider.request_headers()  # type: ignore[attr-defined]


def test_default_model_name(clean_env: pytest.MonkeyPatch) -> None:
    assert default_model_name() == LOCAL_DEFAULT
    clean_env.setenv("GEMINI_API_KEY", "g")
    get_settings.cache_clear()
    assert default_model_name().startswith("gemini:")
    clean_env.setenv("OPENAI_API_KEY", "o")
    get_settings.cache_clear()
    assert default_model_name().startswith("openai:")
    clean_env.setenv("BASTION_DEFAULT_MODEL", "anthropic:claude-x")
    get_settings.cache_clear()
    assert default_model_name() == "anthropic:claude-x"


def test_parse_model_string() -> None:
    assert parse_model_string("openai-compat:http://h:1/v1#a#b") == ("openai-compat", "b", "http://h:1/v1#a")
    assert parse_model_string("anthropic:claude") == ("anthropic", "claude", None)


async def test_registered_provider_end_to_end() -> None:
    async with FakeOpenAIServer() as srv:
        register_provider(Provider("vllm-t", srv.base_url, api_key="vk", headers={"X-Team": "a"}), replace=True)
        try:
            response = await resolve_model("vllm-t:qwen").request(ModelRequest([Message.user("yo")]))
            assert response.text == "yo" and response.model == "vllm-t:qwen"
            recorded = srv.requests[-1]
            assert recorded.headers["Authorization"] == "Bearer vk" and recorded.headers["X-Team"] == "a"
            assert recorded.body["model"] == "qwen"
        finally:
            unregister_provider("vllm-t")
            await aclose_http_sessions()
