"""Argument constraints and rate limits: a small typed rule DSL next to Cedar.

Cedar sees a fixed-shape context (it cannot type arbitrary tool arguments), so constraints on
specific arguments are written here as data::

    ArgLimit("transfer", "amount", max=100, effect="require_approval")
    ArgAllowlist("transfer", "recipient_iban", {"DE89370400440532013000"})
    HostAllowlist("fetch", {"api.example.com", "*.wikipedia.org"})

A rule returns a `Violation` or None; its `effect` is what the violation does to the decision
(deny, or escalate to approval). Rules only restrict: they never grant a call Cedar denied.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from bastion.tools import Tool

RuleEffect = Literal["deny", "require_approval"]


@dataclass(frozen=True, slots=True)
class Violation:
    rule_id: str
    effect: RuleEffect
    message: str


class Rule(Protocol):
    """One argument constraint. `tool` is a tool name or "*" for every tool."""

    @property
    def tool(self) -> str: ...

    def check(self, tool: Tool, arguments: Mapping[str, Any]) -> Violation | None: ...


def _get(arguments: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    cur: Any = arguments
    for key in path.split("."):
        if not isinstance(cur, Mapping) or key not in cur:
            return False, None
        cur = cur[key]  # pyright: ignore[reportUnknownVariableType]
    return True, cur


@dataclass(frozen=True, slots=True)
class ArgLimit:
    """A numeric argument must stay within [min, max]."""

    tool: str
    arg: str
    max: float | None = None
    min: float | None = None
    effect: RuleEffect = "deny"
    id: str = ""

    def check(self, tool: Tool, arguments: Mapping[str, Any]) -> Violation | None:
        present, value = _get(arguments, self.arg)
        if not present or value is None:
            return None
        rule_id = self.id or f"limit:{self.tool}.{self.arg}"
        try:
            number = float(value)
        except (TypeError, ValueError):
            return Violation(rule_id, "deny", f"{self.arg} must be a number")
        if self.max is not None and number > self.max:
            return Violation(rule_id, self.effect, f"{self.arg}={number:g} exceeds the limit of {self.max:g}")
        if self.min is not None and number < self.min:
            return Violation(rule_id, self.effect, f"{self.arg}={number:g} is below the minimum of {self.min:g}")
        return None


def _norm(value: Any) -> str:
    return re.sub(r"\s+", "", str(value)).lower()


@dataclass(frozen=True, slots=True)
class ArgAllowlist:
    """An argument (or every item of a list argument) must be one of `values` (compared
    case- and whitespace-insensitively, so IBAN spacing does not matter)."""

    tool: str
    arg: str
    values: Collection[str]
    effect: RuleEffect = "deny"
    id: str = ""
    _normed: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_normed", frozenset(_norm(v) for v in self.values))

    def check(self, tool: Tool, arguments: Mapping[str, Any]) -> Violation | None:
        present, value = _get(arguments, self.arg)
        if not present or value is None:
            return None
        items: list[Any] = list(value) if isinstance(value, list | tuple) else [value]  # pyright: ignore[reportUnknownArgumentType]
        outside = [str(v) for v in items if _norm(v) not in self._normed]
        if outside:
            return Violation(
                self.id or f"allowlist:{self.tool}.{self.arg}",
                self.effect,
                f"{self.arg} value(s) {', '.join(outside)} are not in the allowlist",
            )
        return None


_URLISH = re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s\"'<>]+", re.I)


def hosts_in_arguments(arguments: Mapping[str, Any]) -> set[str]:
    """Hosts of every URL in any string argument, plus `host`/`domain` arguments."""
    hosts: set[str] = set()

    def walk(key: str, v: Any) -> None:
        if isinstance(v, Mapping):
            for k, x in v.items():  # pyright: ignore[reportUnknownVariableType]
                walk(str(k), x)  # pyright: ignore[reportUnknownArgumentType]
        elif isinstance(v, list | tuple):
            for x in v:  # pyright: ignore[reportUnknownVariableType]
                walk(key, x)
        elif isinstance(v, str):
            for m in _URLISH.finditer(v):
                host = urlsplit(m.group(0)).hostname
                if host:
                    hosts.add(host.lower().rstrip("."))
            if key.lower() in ("host", "hostname", "domain") and v:
                hosts.add(v.lower().strip().rstrip("."))

    walk("", arguments)
    return hosts


def host_allowed(host: str, patterns: Collection[str]) -> bool:
    """`example.com` matches itself; `*.example.com` matches its subdomains."""
    return any(host == p.lower() or fnmatch.fnmatch(host, p.lower()) for p in patterns)


@dataclass(frozen=True, slots=True)
class HostAllowlist:
    """Every host in the arguments must match `hosts`; with `hosts=None`, the tool's own
    declared `Tool.network` list is the allowlist (a tool declaring no network may not be
    pointed at any host)."""

    tool: str = "*"
    hosts: Collection[str] | None = None
    effect: RuleEffect = "deny"
    id: str = ""

    def check(self, tool: Tool, arguments: Mapping[str, Any]) -> Violation | None:
        allowed = self.hosts if self.hosts is not None else tool.network
        if self.hosts is None and not tool.network:
            return None  # nothing declared: the tool does not reach the network itself
        bad = sorted(h for h in hosts_in_arguments(arguments) if not host_allowed(h, allowed))
        if bad:
            return Violation(
                self.id or f"hosts:{self.tool}",
                self.effect,
                f"host(s) {', '.join(bad)} are not allowed for {tool.name!r} (allowed: {', '.join(allowed)})",
            )
        return None


# --- rate limits -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `burst` calls at once, refilled at `per_second`; scoped per (tenant, agent, tool).
    `agent` / `tool` "*" apply to every agent / tool (each still gets its own bucket)."""

    per_second: float
    burst: int
    tool: str = "*"
    agent: str = "*"
    id: str = ""


class TokenBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, ...], tuple[float, float]] = {}  # key -> (tokens, updated)

    def take(self, key: tuple[str, ...], rate: float, burst: int) -> bool:
        now = self._clock()
        tokens, updated = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - updated) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True


__all__ = [
    "ArgAllowlist",
    "ArgLimit",
    "HostAllowlist",
    "RateLimit",
    "Rule",
    "RuleEffect",
    "TokenBuckets",
    "Violation",
    "host_allowed",
    "hosts_in_arguments",
]
