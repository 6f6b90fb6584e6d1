"""Providers: where a model lives and how to authenticate, apart from the API it speaks.

A `Provider` is an endpoint plus credentials plus the name of its wire format
(`openai_chat`, `anthropic`, `gemini`, `llamacpp`). The same wire format serves many
providers: every OpenAI-compatible server (vLLM, llama.cpp server, Ollama) is `openai_chat`
at another base URL. Keys are read lazily from the settings on first use and never
appear in `repr()` or logs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from bastion.errors import ConfigError, UserError

WireFormat: TypeAlias = Literal["openai_chat", "anthropic", "gemini", "llamacpp"]
WIRE_FORMATS: tuple[WireFormat, ...] = ("openai_chat", "anthropic", "gemini", "llamacpp")


@dataclass(slots=True)
class Provider:
    """An endpoint, its credentials and the wire format it speaks.

    `key_header` names the header that carries the key: `"Authorization"` sends
    `Bearer <key>`, anything else (`x-api-key`, `x-goog-api-key`) sends the bare key.
    `api_key=None` means "look it up in the settings" (`BASTION_<NAME>_API_KEY`, then the
    provider's usual variable such as `OPENAI_API_KEY`); providers that need no key (local
    servers) simply never find one and send no auth header.
    """

    name: str
    base_url: str
    wire_format: WireFormat = "openai_chat"
    api_key: str | None = field(default=None, repr=False)
    key_header: str = "Authorization"
    headers: dict[str, str] = field(default_factory=dict)
    connection_limit: int = 100  # connections in this provider's pooled HTTP session
    default_timeout: float = 600.0  # seconds per attempt when ModelSettings.timeout is unset
    key_required: bool = False  # raise early instead of sending an unauthenticated request

    def __post_init__(self) -> None:
        if self.wire_format not in WIRE_FORMATS:
            raise ConfigError(
                f"provider {self.name!r} has unknown wire format {self.wire_format!r}; "
                f"use one of {', '.join(WIRE_FORMATS)}"
            )
        self.base_url = self.base_url.rstrip("/")

    def resolved_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key
        from bastion.config import get_settings

        return get_settings().provider_key(self.name)

    def request_headers(self) -> dict[str, str]:
        """Headers for every request: content type, auth, then the provider's extras."""
        out = {"Content-Type": "application/json"}
        key = self.resolved_key()
        if key:
            out[self.key_header] = f"Bearer {key}" if self.key_header.lower() == "authorization" else key
        elif self.key_required:
            env = f"BASTION_{self.name.upper().replace('-', '_')}_API_KEY"
            raise ConfigError(
                f"no API key for provider {self.name!r}: set {env} (or pass api_key=... to resolve_model)"
            )
        out.update(self.headers)
        return out


_BUILTIN: dict[str, Provider] = {
    "openai": Provider("openai", "https://api.openai.com/v1", "openai_chat", key_required=True),
    "anthropic": Provider(
        "anthropic",
        "https://api.anthropic.com/v1",
        "anthropic",
        key_header="x-api-key",
        headers={"anthropic-version": "2023-06-01"},
        key_required=True,
    ),
    "gemini": Provider(
        "gemini",
        "https://generativelanguage.googleapis.com/v1beta",
        "gemini",
        key_header="x-goog-api-key",
        key_required=True,
    ),
    "local": Provider("local", "llamacpp://in-process", "llamacpp"),
}

# Names with special parsing rules in resolve_model; they cannot be registered.
RESERVED_NAMES = frozenset({"openai-compat"})

_registry: dict[str, Provider] = dict(_BUILTIN)
_lock = threading.Lock()


def register_provider(provider: Provider, *, replace: bool = False) -> Provider:
    """Make `provider` addressable as `"<provider.name>:<model>"`.

    >>> register_provider(Provider("vllm", "http://127.0.0.1:8000/v1"))
    """
    if not provider.name or ":" in provider.name:
        raise UserError(f"provider name {provider.name!r} must be non-empty and contain no ':'")
    if provider.name in RESERVED_NAMES:
        raise UserError(f"provider name {provider.name!r} is reserved; pick another name")
    with _lock:
        if provider.name in _registry and not replace:
            raise UserError(f"provider {provider.name!r} is already registered; pass replace=True to override it")
        _registry[provider.name] = provider
    return provider


def unregister_provider(name: str) -> None:
    """Forget a custom provider (built-ins come back with their defaults)."""
    with _lock:
        if name in _BUILTIN:
            _registry[name] = _BUILTIN[name]
        else:
            _registry.pop(name, None)


def get_provider(name: str) -> Provider | None:
    return _registry.get(name)


def known_providers() -> list[str]:
    return sorted([*_registry, *RESERVED_NAMES])


def openai_compat_provider(base_url: str) -> Provider:
    """A keyless OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama, the fake server)."""
    return Provider("openai-compat", base_url, "openai_chat")


__all__ = [
    "WIRE_FORMATS",
    "Provider",
    "WireFormat",
    "get_provider",
    "known_providers",
    "openai_compat_provider",
    "register_provider",
    "unregister_provider",
]
