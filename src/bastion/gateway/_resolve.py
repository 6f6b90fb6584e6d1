"""`"provider:model"` strings -> `Model` objects.

```
openai:gpt-4o-mini                      OpenAI Chat Completions
anthropic:claude-sonnet-4-5             Anthropic Messages
gemini:gemini-2.5-flash                 Gemini generateContent
openai-compat:http://host:8000/v1#name  any OpenAI-compatible server (vLLM, llama.cpp, Ollama)
local:gemma-3-270m                      in-process llama.cpp (extra `local`)
<registered>:<model>                    a provider added with register_provider()
```

Resolution is cheap and lazy: no network and no key lookup happen until the first request.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bastion.errors import UnknownModelError, UserError
from bastion.gateway._model import Model
from bastion.gateway._providers import (
    Provider,
    get_provider,
    known_providers,
    openai_compat_provider,
)

LOCAL_DEFAULT = "local:gemma-3-270m"
_KEYED = ("openai", "anthropic", "gemini")
_PROVIDER_FIELDS = {f.name for f in dataclasses.fields(Provider)} - {"name", "wire_format"}


def _model_class(wire_format: str) -> Any:
    if wire_format == "openai_chat":
        from bastion.gateway.formats.openai_chat import OpenAIChatModel

        return OpenAIChatModel
    if wire_format == "anthropic":
        from bastion.gateway.formats.anthropic import AnthropicModel

        return AnthropicModel
    if wire_format == "gemini":
        from bastion.gateway.formats.gemini import GeminiModel

        return GeminiModel
    from bastion.gateway.formats.llamacpp import LlamaCppModel

    return LlamaCppModel


def parse_model_string(model: str) -> tuple[str, str, str | None]:
    """`"provider:model"` -> (provider, model, base_url for openai-compat else None)."""
    provider, sep, rest = model.partition(":")
    if not sep or not provider or not rest:
        raise UnknownModelError(
            f"model {model!r} is not of the form 'provider:model' (e.g. 'openai:gpt-4o-mini'); "
            f"known providers: {', '.join(known_providers())}"
        )
    if provider == "openai-compat":
        base_url, hash_sep, name = rest.rpartition("#")
        if not hash_sep or not base_url or not name:
            raise UnknownModelError(
                f"model {model!r}: write OpenAI-compatible servers as "
                "'openai-compat:<base_url>#<model>', e.g. 'openai-compat:http://127.0.0.1:8000/v1#llama-3'"
            )
        if not base_url.startswith(("http://", "https://")):
            raise UnknownModelError(f"model {model!r}: the base URL must start with http:// or https://")
        return provider, name, base_url
    return provider, rest, None


def resolve_model(model: str, **overrides: Any) -> Model:
    """The `Model` addressed by `model`.

    `overrides` replace fields of the provider for this model only, e.g.
    `resolve_model("openai:gpt-4o-mini", base_url="http://127.0.0.1:9000/v1", api_key="k")`.
    """
    provider_name, model_name, base_url = parse_model_string(model)
    if base_url is not None:
        provider: Provider | None = openai_compat_provider(base_url)
    else:
        provider = get_provider(provider_name)
    if provider is None:
        raise UnknownModelError(
            f"unknown provider {provider_name!r} in model {model!r}; known providers: "
            f"{', '.join(known_providers())}. Register custom endpoints with "
            "register_provider(Provider(name, base_url)) or use 'openai-compat:<base_url>#<model>'"
        )
    unknown = set(overrides) - _PROVIDER_FIELDS
    if unknown:
        raise UserError(f"resolve_model got unknown overrides {sorted(unknown)}; allowed: {sorted(_PROVIDER_FIELDS)}")
    if overrides:
        provider = dataclasses.replace(provider, **overrides)
    cls = _model_class(provider.wire_format)
    return cls(model_name, provider, address=model)


def default_model_name() -> str:
    """`settings.default_model`, else the first provider with a configured key, else the
    bundled local model."""
    from bastion.config import get_settings

    settings = get_settings()
    if settings.default_model:
        return settings.default_model
    defaults = {
        "openai": "openai:gpt-4o-mini",
        "anthropic": "anthropic:claude-haiku-4-5",
        "gemini": "gemini:gemini-2.5-flash",
    }
    for name in _KEYED:
        if settings.provider_key(name):
            return defaults[name]
    return LOCAL_DEFAULT


__all__ = ["LOCAL_DEFAULT", "default_model_name", "parse_model_string", "resolve_model"]
