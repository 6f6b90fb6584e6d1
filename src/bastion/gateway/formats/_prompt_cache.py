"""Provider prompt caching: what the wire formats share to make cache hits happen.

A provider caches the *prefix* of a prompt (tools, system, then the history); a request whose
prefix was seen recently pays a fraction of the input price for it. Each provider needs a
different nudge: Anthropic caches only up to explicit `cache_control` breakpoints, OpenAI
caches on its own but routes by `prompt_cache_key`, Gemini bills a discounted read for a
`cachedContents` resource created beforehand. `ModelSettings(prompt_cache=False)` turns all of
it off.

Sizes are estimated at 4 characters a token, without a tokenizer: a breakpoint placed just
under a provider's minimum is ignored by the provider (no charge, no error), so the estimate
only has to be cheap, not exact.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from bastion.types import RunContext

CHARS_PER_TOKEN = 4
# An image costs about (width x height) / 750 tokens; a typical ~1 MP image, without decoding it.
IMAGE_TOKENS = 1600


@lru_cache(maxsize=256)
def anthropic_min_tokens(model: str) -> int:
    """The shortest prefix Anthropic caches for `model`, in tokens (shorter breakpoints are
    ignored). From Anthropic's prompt-caching docs: 4096 for Opus 4.5+ and Haiku 4.5, 2048
    for Sonnet 4.6 and the Haiku 3 family, 1024 otherwise."""
    name = model.lower()
    if any(v in name for v in ("opus-4-5", "opus-4-6", "haiku-4-5")):
        return 4096
    if "sonnet-4-6" in name or "haiku" in name:
        return 2048
    return 1024


@lru_cache(maxsize=256)
def gemini_min_tokens(model: str) -> int:
    """The shortest content Gemini caches: 4096 tokens on Pro models, 1024 on Flash and others."""
    return 4096 if "pro" in model.lower() else 1024


@lru_cache(maxsize=4096)
def cache_key(tenant: str, agent: str | None, session: str | None) -> str:
    """A `prompt_cache_key` shared by the requests of one conversation (tenant, agent, thread)
    and never by two tenants. Hashed: the provider learns neither the tenant nor the thread
    name, and a separator inside a name cannot make two keys meet."""
    raw = "\x00".join((tenant, agent or "", session or "")).encode()
    return "bst-" + hashlib.sha256(raw).hexdigest()[:40]


def context_cache_key(context: RunContext) -> str:
    return cache_key(context.tenant, context.agent, context.session)


__all__ = [
    "CHARS_PER_TOKEN",
    "IMAGE_TOKENS",
    "anthropic_min_tokens",
    "cache_key",
    "context_cache_key",
    "gemini_min_tokens",
]
