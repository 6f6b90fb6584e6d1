"""Secret redaction for everything free-text that goes onto a span.

The default is a small pattern redactor (API key shapes, bearer tokens) cheap enough for the
span path. The policy layer's `bastion.policy.Redactor` knows more (detect-secrets rules and
the exact values of injected secrets) but costs about a second to import and build, so it is
never loaded implicitly: whoever owns it plugs it in with `set_redactor(redactor)`. The
pattern redactor always runs after a custom one, as a floor.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol, runtime_checkable

REDACTED = "[REDACTED]"

# Ordered: the most specific prefixes first so `sk-proj-...` is not half-matched as `sk-`.
_PATTERNS = re.compile(
    r"sk-(?:proj|ant|svcacct|admin)-[A-Za-z0-9_\-]{8,}"
    r"|sk-[A-Za-z0-9_\-]{16,}"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*"
    r"|AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}"
)
# Cheap precheck: most span text carries none of these, and `in` is far cheaper than a regex.
_MARKERS = ("sk-", "earer", "EARER", "AKIA", "gh", "xox")


@runtime_checkable
class TextRedactor(Protocol):
    """Anything with `redact_text(text) -> (text, rule_names)`, e.g. `bastion.policy.Redactor`."""

    def redact_text(self, text: str) -> tuple[str, list[str]]: ...


def pattern_redact(text: str) -> str:
    """Replace API keys and bearer tokens with `[REDACTED]`."""
    if not any(m in text for m in _MARKERS):
        return text
    return _PATTERNS.sub(REDACTED, text)


_redactor: Callable[[str], str] = pattern_redact


def set_redactor(redactor: Callable[[str], str] | TextRedactor | None) -> None:
    """Redact span content with `redactor` (a `str -> str` function or an object with
    `redact_text`, such as the tool gateway's `bastion.policy.Redactor`, so injected secret
    values are removed too); `None` restores the default pattern redactor."""
    global _redactor
    if redactor is None:
        _redactor = pattern_redact
        return
    if isinstance(redactor, TextRedactor):
        policy = redactor
        _redactor = lambda text: pattern_redact(policy.redact_text(text)[0])  # noqa: E731
        return
    custom = redactor
    _redactor = lambda text: pattern_redact(custom(text))  # noqa: E731


def redact(text: str) -> str:
    """Redact secrets from `text` with the active redactor."""
    return _redactor(text)
