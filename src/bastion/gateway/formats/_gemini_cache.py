"""Gemini explicit context caching: a `cachedContents` resource for a large stable prefix.

Gemini 2.5+ already caches prompt prefixes implicitly (no guarantee of a hit), so the history
of a conversation is left to that. What is created explicitly is the part every request of an
agent repeats: the system instruction, the tools and the tool config. It pays only when reused:
creating it bills its tokens once at the input price and storing it costs per hour (Flash
~$1/Mtok/h), while every later read costs a tenth of the input price. So a prefix is cached
when it is at least the model's minimum (`gemini_min_tokens`) and was already sent once within
the TTL; it is then referenced by name for the TTL (5 min by default), and recreated after.

Cache names are kept per (tenant, prefix digest): one tenant's requests never reference
another's cache. The storage fee is not in a call's cost (it accrues per hour on Google's side).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from bastion.errors import ModelError
from bastion.gateway.formats._prompt_cache import CHARS_PER_TOKEN, gemini_min_tokens

JSON = dict[str, Any]
# The request fields Gemini refuses next to `cachedContent`: they must live in the cache.
PREFIX_FIELDS = ("systemInstruction", "tools", "toolConfig")
_MARGIN = 30.0  # seconds before expiry when a cache is no longer referenced (a request may be slow)
_MAX_ENTRIES = 1024


class CachedContents:
    """The cached-content names of one Gemini model, per (tenant, prefix)."""

    def __init__(self, model: str, *, ttl: float = 300.0, clock: Callable[[], float] | None = None) -> None:
        import time

        self.model = model
        self.ttl = ttl
        self.minimum_chars = gemini_min_tokens(model) * CHARS_PER_TOKEN
        self._clock = clock or time.monotonic
        self._names: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()  # -> (name, usable until)
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()  # first sighting, until it expires
        self._pending: dict[tuple[str, str], asyncio.Future[str | None]] = {}

    def prefix(self, payload: JSON) -> tuple[JSON, str] | None:
        """The cacheable prefix of `payload` and its digest, or None when it is too small."""
        prefix = {k: payload[k] for k in PREFIX_FIELDS if k in payload}
        if "systemInstruction" not in prefix and "tools" not in prefix:
            return None
        rendered = json.dumps(prefix, sort_keys=True)
        if len(rendered) < self.minimum_chars:
            return None
        return prefix, hashlib.sha256(rendered.encode()).hexdigest()

    def forget(self, tenant: str, digest: str) -> None:
        self._names.pop((tenant, digest), None)

    async def apply(
        self, payload: JSON, tenant: str, create: Callable[[JSON], Awaitable[tuple[str, int]]]
    ) -> tuple[str | None, int]:
        """Reference a cache for the payload's prefix when it pays, creating it on the prefix's
        second sighting. Returns (the digest used, tokens written by a creation); the payload
        is changed in place. `create` posts the cachedContents body and returns (name, tokens);
        if it fails, the request goes out uncached."""
        found = self.prefix(payload)
        if found is None:
            return None, 0
        prefix, digest = found
        key = (tenant, digest)
        now = self._clock()
        entry = self._names.get(key)
        written = 0
        if entry is not None and entry[1] > now:
            name: str | None = entry[0]
        elif (pending := self._pending.get(key)) is not None:
            name = await pending
        else:
            seen = self._seen.get(key)
            if seen is None or seen <= now:
                self._remember(self._seen, key, now + self.ttl)
                return None, 0  # first sighting: caching it would not pay yet
            name, written = await self._create(key, prefix, create)
        if name is None:
            return None, 0
        for k in PREFIX_FIELDS:
            payload.pop(k, None)
        payload["cachedContent"] = name
        return digest, written

    async def _create(
        self, key: tuple[str, str], prefix: JSON, create: Callable[[JSON], Awaitable[tuple[str, int]]]
    ) -> tuple[str | None, int]:
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        name: str | None = None
        tokens = 0
        try:
            name, tokens = await create({"model": f"models/{self.model}", **prefix, "ttl": f"{self.ttl:g}s"})
            self._remember(self._names, key, (name, self._clock() + self.ttl - _MARGIN))
        except ModelError:
            # A cache is an optimisation: when it cannot be created the request goes out as it was.
            name = None
        finally:
            del self._pending[key]
            future.set_result(name)
        return name, tokens

    @staticmethod
    def _remember(table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > _MAX_ENTRIES:
            table.popitem(last=False)


__all__ = ["PREFIX_FIELDS", "CachedContents"]
