"""`Policy`: one decision per tool call, from Cedar plus Bastion's own rules.

Order: Cedar decides the base effect (default deny; explicitly granted tools allowed;
irreversible ones need approval). Then argument rules, the host allowlist, the taint rule
and injection signals may only ESCALATE it (allow → approval → deny); nothing downstream of
Cedar can grant. Rate limits are charged last, only for calls that would run.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bastion.policy._cedar import CedarAuthorizer
from bastion.policy._injection import HeuristicDetector, InjectionDetector, InjectionFinding
from bastion.policy._rules import HostAllowlist, RateLimit, Rule, RuleEffect, TokenBuckets, hosts_in_arguments
from bastion.policy._taint import (
    DEFAULT_CONTENT_ARGS,
    Provenance,
    TaintReport,
    ValueKind,
    argument_values,
    extract_values,
)
from bastion.tools._tool import Tool, canonical_json
from bastion.types import Message, RunContext, ToolResult

Effect = Literal["allow", "require_approval", "deny"]
_RANK: dict[str, int] = {"allow": 0, "require_approval": 1, "deny": 2}
_RECIPIENT_ARG = re.compile(r"^(to|cc|bcc|recipients?|payee|iban|account|destination|phone|email)$", re.I)


@dataclass(slots=True)
class PolicyDecision:
    effect: Effect
    reasons: list[str] = field(default_factory=list)  # rule / policy ids, in the order they fired
    messages: list[str] = field(default_factory=list)  # why, in words the model and a human understand
    taint: TaintReport = field(default_factory=TaintReport)
    injection: list[InjectionFinding] = field(default_factory=list)
    amounts: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)

    def escalate(self, effect: Effect, reason: str, message: str) -> None:
        if _RANK[effect] > _RANK[self.effect]:
            self.effect = effect
        self.reasons.append(reason)
        self.messages.append(message)


class Policy:
    """Authorization for tool calls.

    `grants` maps an agent name (or "tenant/agent") to the tool names it may call. Nothing
    else is callable. `policies` replaces the default Cedar policy set (files, directories or
    inline text); `rules` adds argument constraints; `on_taint` / `on_injection` say what a
    tainted side-effecting call / injection signal does ("require_approval", "deny", "off").
    `taint_reads=True` applies the taint rule to read tools too (a read can leak data through
    its URL or query; off by default because browsing agents follow links from pages).
    """

    def __init__(
        self,
        grants: Mapping[str, Iterable[str]] | None = None,
        *,
        policies: Iterable[str | Path] | None = None,
        schema: str | Path | None = None,
        rules: Sequence[Rule] = (),
        rate_limits: Sequence[RateLimit] = (),
        on_taint: RuleEffect | Literal["off"] = "require_approval",
        on_injection: RuleEffect | Literal["off"] = "require_approval",
        detectors: Sequence[InjectionDetector] | None = None,
        content_args: Iterable[str] = DEFAULT_CONTENT_ARGS,
        check_declared_hosts: bool = True,
        taint_reads: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grants = {k: frozenset(v) for k, v in (grants or {}).items()}
        self.cedar = CedarAuthorizer(policies, schema=schema)
        self.rules = list(rules)
        if check_declared_hosts:
            self.rules.append(HostAllowlist("*", None, "deny", "declared-network"))
        self.rate_limits = list(rate_limits)
        self.on_taint: RuleEffect | Literal["off"] = on_taint
        self.on_injection: RuleEffect | Literal["off"] = on_injection
        self.detectors: list[InjectionDetector] = list(detectors) if detectors is not None else [HeuristicDetector()]
        self.content_args = frozenset(content_args)
        self.taint_reads = taint_reads
        self._buckets = TokenBuckets(clock)
        self._scan_cache: OrderedDict[tuple[str, int], list[InjectionFinding]] = OrderedDict()
        self._values_cache: OrderedDict[str, frozenset[tuple[ValueKind, str]]] = OrderedDict()

    def grants_for(self, agent: str, tenant: str) -> frozenset[str]:
        return self.grants.get(f"{tenant}/{agent}", self.grants.get(agent, frozenset()))

    # --- history analysis (cached per tool result: histories only grow) ---------------------

    def scan(self, result: ToolResult) -> list[InjectionFinding]:
        """Injection findings in one untrusted result (cached)."""
        text = result.content_text()
        key = (result.tool_call_id, hash(text))
        cached = self._scan_cache.get(key)
        if cached is None:
            cached = [f for d in self.detectors for f in d.detect(text)]
            self._scan_cache[key] = cached
            if len(self._scan_cache) > 20_000:
                self._scan_cache.popitem(last=False)
        return cached

    def scan_descriptions(self, tools: Iterable[Tool]) -> dict[str, list[InjectionFinding]]:
        """Injection findings in tool descriptions and schemas, by tool name (tool poisoning: a
        description the model reads that tells it what else to do). Cached per tool version."""
        out: dict[str, list[InjectionFinding]] = {}
        for tool in tools:
            key = (f"description:{tool.name}:{tool.version}", 0)
            cached = self._scan_cache.get(key)
            if cached is None:
                text = tool.description + " " + canonical_json(tool.parameters)
                cached = [
                    InjectionFinding(f.detector, f"tool_description:{f.rule}", f"{tool.name}: {f.excerpt}", f.score)
                    for d in self.detectors
                    for f in d.detect(text)
                ]
                self._scan_cache[key] = cached
            if cached:
                out[tool.name] = cached
        return out

    def _values(self, key: str, text: str) -> frozenset[tuple[ValueKind, str]]:
        cached = self._values_cache.get(key)
        if cached is None:
            cached = frozenset(extract_values(text))
            self._values_cache[key] = cached
            if len(self._values_cache) > 20_000:
                self._values_cache.popitem(last=False)
        return cached

    def provenance(self, messages: Sequence[Message]) -> tuple[Provenance, list[InjectionFinding]]:
        findings: list[InjectionFinding] = []
        prov = Provenance.from_messages(
            messages, values=self._values, on_untrusted=lambda r: findings.extend(self.scan(r))
        )
        return prov, findings

    # --- the decision ------------------------------------------------------------------------

    def decide(
        self,
        tool: Tool,
        arguments: Mapping[str, Any],
        *,
        agent: str,
        run: RunContext,
        messages: Sequence[Message] = (),
        human_authored: bool = False,
        charge_rate_limit: bool = True,
        signals: Mapping[str, Sequence[InjectionFinding]] | None = None,
    ) -> PolicyDecision:
        """Decide one call. `human_authored` marks arguments a human wrote in an approval edit:
        they are not tainted, and escalations to approval no longer apply (deny still does).
        `signals` are injection findings in tool descriptions (`scan_descriptions`): a poisoned
        description escalates calls to that tool, and every side-effecting call."""
        side_effecting = tool.side_effect in ("write", "irreversible")
        checked = side_effecting or (self.taint_reads and tool.side_effect == "read")
        prov, seen = self.provenance(messages) if checked else (Provenance(), [])
        signals = signals or {}
        if side_effecting:
            findings = [*seen, *(f for fs in signals.values() for f in fs)]
        else:  # reads are escalated only by their own poisoned description
            findings = list(signals.get(tool.name, ()))
        taint = TaintReport() if human_authored else prov.check(arguments, content_args=self.content_args)
        amounts, recipients = self._facts(arguments)
        hosts = sorted(hosts_in_arguments(arguments))
        context = {
            "tenant": run.tenant,
            "user": run.user or "",
            "run_id": run.run_id or "",
            "hosts": hosts,
            "recipients": recipients,
            "max_amount": max((math.ceil(float(a)) for a in amounts), default=0),
            "tainted": taint.is_tainted,
            "tainted_values": taint.values(),
            "injection_suspected": bool(findings),
        }
        tool_entity = {
            "name": tool.name,
            "side_effect": tool.side_effect,
            "idempotent": tool.idempotent,
            "trusted": tool.trust == "trusted",
            "network": list(tool.network),
            "version": tool.version,
        }
        grants = self.grants_for(agent, run.tenant)
        cedar = self.cedar.decide(agent=agent, tenant=run.tenant, grants=grants, tool=tool_entity, context=context)
        decision = PolicyDecision(
            cedar.effect,
            [f"cedar:{p}" for p in cedar.policy_ids],
            [],
            taint,
            findings,
            amounts,
            recipients,
            hosts,
        )
        if cedar.effect == "deny":
            granted = tool.name in grants
            decision.messages.append(
                f"agent {agent!r} (tenant {run.tenant!r}) is not permitted to call {tool.name!r}"
                + ("" if granted else f" (the tool is not granted: Policy({{{agent!r}: [{tool.name!r}]}}))")
                + (f"; Cedar errors: {'; '.join(cedar.errors)}" if cedar.errors else "")
            )
            return decision
        if cedar.effect == "require_approval":
            decision.messages.append(f"{tool.name!r} has an irreversible side effect and needs a human's approval")
        for rule in self.rules:
            if rule.tool not in ("*", tool.name):
                continue
            violation = rule.check(tool, arguments)
            if violation is not None:
                decision.escalate(violation.effect, violation.rule_id, violation.message)
        on_taint, on_injection = self.on_taint, self.on_injection
        if checked and taint.is_tainted and on_taint != "off":
            listed = ", ".join(f"{t.value} ({t.argument}, from {'/'.join(t.sources)})" for t in taint.tainted)
            decision.escalate(
                on_taint,
                "taint:untrusted-value",
                f"arguments use values that came from untrusted tool output, not from the user: {listed}",
            )
        if findings and on_injection != "off":
            rules = sorted({f"{f.detector}:{f.rule}" for f in findings})
            decision.escalate(
                on_injection,
                "injection:suspected",
                f"possible prompt injection earlier in this run ({', '.join(rules)})",
            )
        if human_authored and decision.effect == "require_approval":
            decision.effect = "allow"  # the human who wrote these arguments is the approval
        if decision.effect != "deny" and charge_rate_limit:
            self._charge(decision, tool, agent, run.tenant)
        return decision

    def _charge(self, decision: PolicyDecision, tool: Tool, agent: str, tenant: str) -> None:
        for i, limit in enumerate(self.rate_limits):
            if limit.tool not in ("*", tool.name) or limit.agent not in ("*", agent):
                continue
            if not self._buckets.take((str(i), tenant, agent, tool.name), limit.per_second, limit.burst):
                decision.escalate(
                    "deny",
                    limit.id or f"rate-limit:{limit.agent}/{limit.tool}",
                    f"rate limit of {limit.per_second:g}/s (burst {limit.burst}) reached for {tool.name!r}; "
                    "wait before calling it again",
                )

    def _facts(self, arguments: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        amounts: list[str] = []
        recipients: list[str] = []
        for path, kind, value in argument_values(arguments, content_args=self.content_args):
            top = re.split(r"[.\[]", path, maxsplit=1)[0]
            if kind == "amount":
                amounts.append(value)
            elif kind in ("iban", "email") or (kind == "number" and _RECIPIENT_ARG.match(top)):
                recipients.append(value)
        for key, value in arguments.items():
            if _RECIPIENT_ARG.match(key) and isinstance(value, str) and value not in recipients:
                normalized = value.replace(" ", "") if key.lower() == "iban" else value.lower()
                if normalized not in recipients:
                    recipients.append(normalized)
        return sorted(set(amounts)), sorted(set(recipients))


__all__ = ["Effect", "Policy", "PolicyDecision"]
