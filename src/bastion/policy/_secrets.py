"""Secrets: injected into tools at execution, never seen by the model.

Tools declare the credentials they need (`@tool(secrets=["stripe_key"])`); the gateway fetches
them from a `SecretProvider` and passes them as keyword arguments the model's schema does not
contain. Everything that leaves the gateway (tool results, audit rows, approval payloads) goes
through a `Redactor` that removes known credential shapes (detect-secrets plugins plus our own
patterns) and every secret value it has injected, verbatim.

A Vault-style provider implements the same two-method protocol, e.g.::

    class VaultSecrets:
        def __init__(self, client, mount="secret"): ...
        async def get(self, name):  # read `mount/data/<name>` with a short-lived token
            ...
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

REDACTED = "[REDACTED]"


class SecretProvider(Protocol):
    """Where credentials come from. `get` returns None when the secret is not configured."""

    async def get(self, name: str) -> str | None: ...


class EnvSecretProvider:
    """Secrets from environment variables: `stripe_key` is read from `<prefix>STRIPE_KEY`."""

    def __init__(self, prefix: str = "BASTION_SECRET_", environ: Mapping[str, str] | None = None) -> None:
        self.prefix = prefix
        self._environ = environ

    def variable(self, name: str) -> str:
        return self.prefix + re.sub(r"[^A-Za-z0-9]", "_", name).upper()

    async def get(self, name: str) -> str | None:
        env = self._environ if self._environ is not None else os.environ
        return env.get(self.variable(name))


class FileSecretProvider:
    """Secrets as files in a directory (Docker/Kubernetes `/run/secrets` style): one file per
    secret, named after it; a trailing newline is dropped."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    async def get(self, name: str) -> str | None:
        if "/" in name or name.startswith("."):
            return None  # never let a secret name walk out of the directory
        path = self.directory / name
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            return None


class ChainSecretProvider:
    """The first provider that knows the secret wins."""

    def __init__(self, *providers: SecretProvider) -> None:
        self.providers = providers

    async def get(self, name: str) -> str | None:
        for p in self.providers:
            value = await p.get(name)
            if value is not None:
                return value
        return None


class StaticSecretProvider:
    """Secrets from a mapping (tests, or values resolved by your own bootstrap code)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    async def get(self, name: str) -> str | None:
        return self._values.get(name)


# --- redaction -------------------------------------------------------------------------------

_OWN_PATTERNS: list[tuple[str, str]] = [
    ("anthropic_key", r"sk-ant-[A-Za-z0-9_\-]{20,}"),
    ("openai_project_key", r"sk-proj-[A-Za-z0-9_\-]{20,}"),
    ("openai_key", r"sk-[A-Za-z0-9]{20,}"),
    ("aws_access_key", r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),
    ("aws_secret_key", r"(?i)aws.{0,20}?(?:secret|key).{0,20}?['\"=:\s]([A-Za-z0-9/+]{40})\b"),
    ("bearer_token", r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{16,}=*)"),
    ("authorization_header", r"(?i)\bauthorization\s*[:=]\s*['\"]?(?:basic|token)\s+([A-Za-z0-9\-._~+/]{8,}=*)"),
    ("private_key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]+?-----END [A-Z ]*PRIVATE KEY-----"),
]

# Regex-based detect-secrets plugins; the entropy and keyword plugins are left out on purpose:
# they flag ordinary data (hashes, ids, "password" in prose) and would shred tool results.
_DETECT_SECRETS_PLUGINS = [
    ("artifactory", "ArtifactoryDetector"),
    ("aws", "AWSKeyDetector"),
    ("azure_storage_key", "AzureStorageKeyDetector"),
    ("basic_auth", "BasicAuthDetector"),
    ("discord", "DiscordBotTokenDetector"),
    ("github_token", "GitHubTokenDetector"),
    ("gitlab_token", "GitLabTokenDetector"),
    ("jwt", "JwtTokenDetector"),
    ("mailchimp", "MailchimpDetector"),
    ("npm", "NpmDetector"),
    ("openai", "OpenAIDetector"),
    ("pypi_token", "PypiTokenDetector"),
    ("sendgrid", "SendGridDetector"),
    ("slack", "SlackDetector"),
    ("square_oauth", "SquareOAuthDetector"),
    ("stripe", "StripeDetector"),
    ("telegram_token", "TelegramBotTokenDetector"),
    ("twilio", "TwilioKeyDetector"),
]


def _detect_secrets_patterns() -> list[tuple[str, re.Pattern[str]]]:
    import importlib

    out: list[tuple[str, re.Pattern[str]]] = []
    for module, cls_name in _DETECT_SECRETS_PLUGINS:
        try:
            cls: Any = getattr(importlib.import_module(f"detect_secrets.plugins.{module}"), cls_name)
        except (ImportError, AttributeError):  # a plugin renamed upstream: keep the others
            continue
        for pattern in getattr(cls, "denylist", ()):
            out.append((f"detect_secrets:{cls_name}", pattern))
    return out


def _combined(patterns: list[tuple[str, re.Pattern[str]]]) -> re.Pattern[str] | None:
    """One alternation of every rule (flags scoped per rule) to pre-screen text cheaply."""
    parts: list[str] = []
    for _, p in patterns:
        pattern, insensitive = p.pattern, bool(p.flags & re.IGNORECASE)
        if pattern.startswith("(?i)"):
            pattern, insensitive = pattern[4:], True
        parts.append(f"(?i:{pattern})" if insensitive else f"(?:{pattern})")
    try:
        return re.compile("|".join(parts))
    except re.error:  # a rule with flags we cannot scope: scan rule by rule
        return None


class Redactor:
    """Removes credentials from strings and nested JSON-like values.

    Matches with a capture group redact the group (keeping e.g. `Bearer `), others the whole
    match. `add()` registers exact values (every injected secret) for verbatim removal.
    """

    def __init__(self, *, use_detect_secrets: bool = True, extra_patterns: Iterable[str] = ()) -> None:
        patterns = [(name, re.compile(p)) for name, p in _OWN_PATTERNS]
        patterns += [("custom", re.compile(p)) for p in extra_patterns]
        if use_detect_secrets:
            patterns += _detect_secrets_patterns()
        self._patterns = patterns
        self._any = _combined(patterns)
        self._exact: set[str] = set()
        self._exact_re: re.Pattern[str] | None = None

    def add(self, *values: str) -> None:
        """Register exact secret values; short values are ignored (they would redact prose)."""
        # A value inside the marker itself cannot be removed by replacing it with the marker.
        new = {v for v in values if v and len(v) >= 6 and v not in REDACTED} - self._exact
        if new:
            self._exact |= new
            # longest first, so a secret containing another is removed whole
            alts = sorted(self._exact, key=len, reverse=True)
            self._exact_re = re.compile("|".join(re.escape(v) for v in alts))

    def redact_text(self, text: str) -> tuple[str, list[str]]:
        """The redacted text and the names of the rules that fired."""
        hits: list[str] = []
        if self._exact_re is not None:
            # Repeat: the marker next to leftover text can spell a secret again ("ED]" + "ED]").
            for _ in range(8):
                text, n = self._exact_re.subn(REDACTED, text)
                if not n:
                    break
                if "injected_secret" not in hits:
                    hits.append("injected_secret")
        if self._any is not None and self._any.search(text) is None:
            return text, hits  # one scan instead of one per rule: most results hold no credential
        for name, pattern in self._patterns:
            if pattern.groups:

                def repl(m: re.Match[str]) -> str:
                    start, end = m.span(1)
                    if start < 0:
                        return REDACTED
                    s0 = m.start(0)
                    return m.group(0)[: start - s0] + REDACTED + m.group(0)[end - s0 :]

                text, n = pattern.subn(repl, text)
            else:
                text, n = pattern.subn(REDACTED, text)
            if n:
                hits.append(name)
        return text, hits

    def redact(self, value: Any) -> tuple[Any, list[str]]:
        """Redact strings anywhere inside dicts/lists/tuples; other values pass through."""
        hits: list[str] = []

        def walk(v: Any) -> Any:
            if isinstance(v, str):
                out, h = self.redact_text(v)
                hits.extend(h)
                return out
            if isinstance(v, Mapping):
                return {k: walk(x) for k, x in v.items()}  # pyright: ignore[reportUnknownVariableType]
            if isinstance(v, list | tuple):
                return [walk(x) for x in v]  # pyright: ignore[reportUnknownVariableType]
            return v

        return walk(value), sorted(set(hits))


_shared: Redactor | None = None


def shared_redactor() -> Redactor:
    """The process-wide redactor every gateway uses unless given its own: secrets injected by
    one gateway are then removed from anything any of them (and the tracer) emits."""
    global _shared
    if _shared is None:
        _shared = Redactor()
    return _shared


__all__ = [
    "REDACTED",
    "ChainSecretProvider",
    "EnvSecretProvider",
    "FileSecretProvider",
    "Redactor",
    "SecretProvider",
    "StaticSecretProvider",
    "shared_redactor",
]
