"""Secret redaction for everything free-text that goes onto a span.

The policy layer (`bastion.policy`) owns the real redactor (known secret values, detectors).
When it exports a `redact(text) -> str` function we use it; until then, and whenever it is
absent, a minimal pattern redactor catches the common API key shapes and bearer tokens.
`set_redactor()` is the seam for anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Redactor = Callable[[str], str]

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


def pattern_redact(text: str) -> str:
    """Replace API keys and bearer tokens with `[REDACTED]`."""
    if not any(m in text for m in _MARKERS):
        return text
    return _PATTERNS.sub(REDACTED, text)


_redactor: Redactor | None = None


def _resolve() -> Redactor:
    try:
        from bastion import policy

        policy_redact = getattr(policy, "redact", None)
    except ImportError:  # pragma: no cover - policy is part of the package
        policy_redact = None
    if callable(policy_redact):
        chosen: Redactor = policy_redact  # type: ignore[assignment]

        def both(text: str) -> str:
            # The policy redactor knows registered secret values; the patterns are a floor.
            return pattern_redact(str(chosen(text)))

        return both
    return pattern_redact


def set_redactor(redactor: Redactor | None) -> None:
    """Use `redactor` for span content; `None` goes back to the default (policy, else patterns).
    The pattern redactor always runs after a custom one as a floor."""
    global _redactor
    if redactor is None:
        _redactor = None
        return
    custom = redactor
    _redactor = lambda text: pattern_redact(custom(text))  # noqa: E731


def redact(text: str) -> str:
    """Redact secrets from `text` with the active redactor."""
    global _redactor
    if _redactor is None:
        _redactor = _resolve()
    return _redactor(text)
