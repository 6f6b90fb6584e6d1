"""Settings in one place: environment variables (`BASTION_*`) over `bastion.toml` over defaults.

Loaded lazily by `get_settings()` so `import bastion` stays fast. Each layer reads its part
of the settings here rather than from `os.environ` directly.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bastion.errors import ConfigError


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
    capture_content: bool = Field(default=False, description="record message content on spans")
    otlp_endpoint: str | None = None
    server_host: str = "127.0.0.1"
    server_port: int = 8700

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


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use."""
    return load_settings()


__all__ = ["Settings", "get_settings", "load_settings"]
