"""Settings in one place: environment variables (`BASTION_*`) over `bastion.toml` over defaults.

Loaded lazily by `get_settings()` so `import bastion` stays fast. Each layer reads its part
of the settings here rather than from `os.environ` directly.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ByteSize, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bastion.errors import ConfigError


def _capture_flag(value: Any) -> Any:
    # The observability docs name the modes ("off", "span_attributes"); booleans work too.
    if isinstance(value, str) and value.strip().lower() in {"off", "none", "no_content"}:
        return False
    if isinstance(value, str) and value.strip().lower() == "span_attributes":
        return True
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BASTION_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=os.environ.get("BASTION_CONFIG", "bastion.toml"),
    )

    home: Path = Field(default=Path(".bastion"), description="where embedded SQLite files live")
    database_url: str | None = Field(
        default=None, description="postgresql://... for scale-out; SQLite files under `home` when unset"
    )
    default_model: str | None = Field(
        default=None,
        description="model used when none is named; defaults to the first provider with a key, else local:gemma-3-270m",
    )
    tiers: dict[str, str] = Field(
        default_factory=dict, description='tier -> model, e.g. {"cheap": "openai:gpt-4o-mini"}'
    )
    openai_api_key: SecretStr | None = Field(default=None)
    anthropic_api_key: SecretStr | None = Field(default=None)
    gemini_api_key: SecretStr | None = Field(default=None)
    cache_enabled: bool = True
    capture_content: Annotated[bool, BeforeValidator(_capture_flag)] = Field(
        default=False, description='record message content on spans: "off" (false) or "span_attributes" (true)'
    )
    otlp_endpoint: str | None = None
    trace_format: Literal["gen_ai", "openinference"] = Field(
        default="gen_ai",
        description='span attributes: "gen_ai" (OpenTelemetry GenAI conventions) or "openinference" (also Phoenix\'s)',
    )
    server_host: str = "127.0.0.1"
    server_port: int = 8700
    # HTTP edge limits of `bastion serve` (sizes take bytes or units: 1048576, "1MiB", "512KB").
    max_body_bytes: ByteSize = Field(
        default=ByteSize(1024 * 1024), gt=0, description="largest request body the API accepts (413 above)"
    )
    max_json_depth: int = Field(
        default=32, ge=2, le=128, description="deepest nesting of objects/arrays in a JSON request body (400 above)"
    )
    # Trace store retention (SQLite and PostgreSQL), applied by the store's writer every few minutes.
    trace_max_age_days: float | None = Field(
        default=None, gt=0, description="delete traces older than this many days (unset: keep all)"
    )
    trace_max_bytes: ByteSize | None = Field(
        default=None, gt=0, description='delete the oldest traces while the store is larger than this, e.g. "10GiB"'
    )
    proxy_max_body_bytes: ByteSize = Field(
        default=ByteSize(32 * 1024 * 1024), gt=0, description="largest body for the OpenAI-compatible proxy (/openai)"
    )
    # Cost alerts, checked in the background by `bastion serve` and `bastion worker`.
    cost_alert_interval_s: float = Field(
        default=60.0, ge=0, description="seconds between cost alert checks of finished runs (0: no background checks)"
    )
    cost_alert_run_usd: float | None = Field(
        default=None, gt=0, description="alert on any run costing more than this (USD), history or not"
    )
    cost_alert_tenant_usd: float | None = Field(
        default=None, gt=0, description="alert when a tenant spends more than this (USD) in an hour, history or not"
    )
    cost_alert_webhook: str | None = Field(default=None, description="POST each cost alert as JSON to this URL")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # `print(settings)` must not show the database password.
        for name, value in super().__repr_args__():
            yield name, redact_credentials(value) if name == "database_url" and isinstance(value, str) else value

    def provider_key(self, provider: str) -> str | None:
        """The API key for a provider: `BASTION_<P>_API_KEY`, then the provider's usual variable."""
        own: SecretStr | None = getattr(self, f"{provider}_api_key", None)
        if own is not None:
            return own.get_secret_value()
        usual = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}
        var = usual.get(provider)
        return os.environ.get(var) if var else None

    def path(self, name: str) -> Path:
        """A file under `home`, creating the directory on first use."""
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home / name


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise ConfigError(f"invalid Bastion settings (env BASTION_* or bastion.toml): {e}") from e


# `scheme://user:password@host`: keep the user (useful in an error), drop the password. The
# password runs to the last `@` before the path, so an unencoded `@` in it is covered too.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"]*):[^\s/?#'\"]*@")
# `password=...` in libpq conninfo strings and URL query strings (also quoted conninfo values).
_KV_SECRET = re.compile(
    r"(?i)(?P<head>\b(?:password|passwd|pwd|sslpassword|secret|token|api_key|apikey|access_token)\s*=\s*)"
    r"(?:'(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s&;,'\"]+)"
)
MASK = "***"


def redact_credentials(text: str) -> str:
    """`text` with credentials removed: URL passwords (`postgresql://user:***@host/db`),
    `password=...`-style parameters, then API keys and bearer tokens (the tracing layer's
    pattern redactor). For every banner, log line and error message that may carry a database
    URL (libpq errors quote the connection string)."""
    from bastion.tracing import redact

    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>:{MASK}@", text)
    if "=" in text:
        text = _KV_SECRET.sub(rf"\g<head>{MASK}", text)
    return redact(text)


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use."""
    return load_settings()


__all__ = ["Settings", "get_settings", "load_settings", "redact_credentials"]
