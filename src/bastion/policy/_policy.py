"""`Policy`: one decision per tool call, from Cedar plus Bastion's own rules.

Order: the gateway traces the provenance of every argument value (`_provenance`), then Cedar
decides the base effect (default deny; granted tools allowed; an irreversible tool needs a
human unless every key value is grounded in the user's words, trusted data or a stated
declassification). Argument rules, the host allowlist, provenance and control-flow flags may
only ESCALATE it (allow → approval → deny); nothing downstream of Cedar can grant. Injection
detectors are a signal: they mark an approval as flagged and never gate on their own unless
`on_injection` says so. Rate limits are charged last, only for calls that would run.

The control-flow model: once untrusted content has entered a run, a side effect is flagged
when its choice is not grounded: a key argument (a destination, id, amount, date, name, a
host to reach) comes only from untrusted output or from nowhere, or the user's request never
asked for this kind of action (`intents`). A read that reaches the network is a side effect
too: a host or URL argument found only in untrusted content is flagged. What it cannot see is
listed in `_provenance`.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bastion.policy._cedar import CedarAuthorizer
from bastion.policy._injection import HeuristicDetector, InjectionDetector, InjectionFinding
from bastion.policy._provenance import (
    DEFAULT_CONTENT_ARGS,
    ArgProvenance,
    Declassify,
    RunView,
    SourceCache,
    Tracer,
    argument_values,
    tool_choice_grounded,
)
from bastion.policy._rules import HostAllowlist, RateLimit, Rule, RuleEffect, TokenBuckets, hosts_in_arguments
from bastion.policy._taint import TaintedValue, TaintReport
from bastion.tools import Tool, canonical_json
from bastion.types import Message, RunContext, ToolResult

Effect = Literal["allow", "require_approval", "deny"]
Action = Literal["allow", "approve", "deny"]
InjectionEffect = Literal["signal", "require_approval", "deny", "off"]
_RANK: dict[str, int] = {"allow": 0, "require_approval": 1, "deny": 2}
_RECIPIENT_ARG = re.compile(r"^(to|cc|bcc|recipients?|payee|iban|account|destination|phone|email)$", re.I)
# reasons that say the call may be an attack: an approval carrying one is "flagged"
_FLAG_PREFIXES = ("egress:", "provenance:", "control-flow:", "taint:", "injection:")


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
    provenance: list[ArgProvenance] = field(default_factory=list)  # one entry per argument value
    untrusted_seen: bool = False  # untrusted content had entered the run before this call

    def escalate(self, effect: Effect, reason: str, message: str) -> None:
        if _RANK[effect] > _RANK[self.effect]:
            self.effect = effect
        self.reasons.append(reason)
        self.messages.append(message)

    @property
    def action(self) -> Action:
        return "approve" if self.effect == "require_approval" else self.effect

    @property
    def flagged(self) -> bool:
        """True when something about the call points at an attack (an ungrounded key value, an
        unrequested action, an injection signal); False for a routine call a human can approve
        on the tool and its arguments alone."""
        return (
            any(r.startswith(_FLAG_PREFIXES) for r in self.reasons)
            or bool(self.injection)
            or any(p.key and not p.grounded for p in self.provenance)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "flagged": self.flagged,
            "reasons": list(self.reasons),
            "messages": list(self.messages),
            "arguments": [p.to_dict() for p in self.provenance],
            "injection": sorted({f"{f.detector}:{f.rule}" for f in self.injection}),
        }


Decision = PolicyDecision


class Policy:
    """Authorization for tool calls.

    `grants` maps an agent name (or "tenant/agent") to the tool names it may call. Nothing
    else is callable. `policies` replaces the default Cedar policy set (files, directories or
    inline text); `rules` adds argument constraints; `declassify` states which untrusted
    outputs may supply which arguments (`Declassify`); `intents` maps a side-effecting tool to
    the words a user's request uses to ask for it (default: the words of its name).
    `on_taint` says what an ungrounded key value or unrequested action does once untrusted
    content entered the run ("require_approval", "deny", "off"); `on_injection` whether
    detector findings only mark approvals ("signal", the default) or gate calls.
    `taint_reads=True` checks every argument of read tools too (a read's host or URL is always
    checked: network egress is a side effect). `reviewed` maps tool names to the description
    version a developer reviewed: detector findings in exactly that text are accepted.
    """

    def __init__(
        self,
        grants: Mapping[str, Iterable[str]] | None = None,
        *,
        policies: Iterable[str | Path] | None = None,
        schema: str | Path | None = None,
        rules: Sequence[Rule] = (),
        rate_limits: Sequence[RateLimit] = (),
        declassify: Sequence[Declassify] = (),
        intents: Mapping[str, Collection[str]] | None = None,
        on_taint: RuleEffect | Literal["off"] = "require_approval",
        on_injection: InjectionEffect = "signal",
        detectors: Sequence[InjectionDetector] | None = None,
        content_args: Iterable[str] = DEFAULT_CONTENT_ARGS,
        check_declared_hosts: bool = True,
        taint_reads: bool = False,
        reviewed: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grants = {k: frozenset(v) for k, v in (grants or {}).items()}
        self.cedar = CedarAuthorizer(policies, schema=schema)
        self._cedar_grounded = "grounded" in self.cedar.schema_text
        self.rules = list(rules)
        if check_declared_hosts:
            self.rules.append(HostAllowlist("*", None, "deny", "declared-network"))
        self.rate_limits = list(rate_limits)
        self.declassify = list(declassify)
        self.intents = {k: tuple(v) for k, v in (intents or {}).items()}
        self.on_taint: RuleEffect | Literal["off"] = on_taint
        self.on_injection: InjectionEffect = on_injection
        self.detectors: list[InjectionDetector] = list(detectors) if detectors is not None else [HeuristicDetector()]
        self.content_args = frozenset(content_args)
        self.taint_reads = taint_reads
        self.reviewed: dict[str, str] = dict(reviewed or {})
        self._buckets = TokenBuckets(clock)
        self._scan_cache: OrderedDict[tuple[str, int], list[InjectionFinding]] = OrderedDict()
        self._sources = SourceCache()

    def grants_for(self, agent: str, tenant: str) -> frozenset[str]:
        return self.grants.get(f"{tenant}/{agent}", self.grants.get(agent, frozenset()))

    def review(self, tool: Tool) -> None:
        """Accept the current description of `tool` after a human read it: detector findings
        in this exact version stop being signals; a changed description is scanned afresh."""
        self.reviewed[tool.name] = tool.version

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
        description the model reads that tells it what else to do). Cached per tool version;
        a version listed in `reviewed` has none."""
        out: dict[str, list[InjectionFinding]] = {}
        for tool in tools:
            if self.reviewed.get(tool.name) == tool.version:
                continue
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

    def run_view(self, messages: Sequence[Message]) -> RunView:
        """The history's sources split by trust (each part indexed once, then cached)."""
        return RunView.from_messages(messages, self._sources)

    def trace(
        self, tool: Tool, arguments: Mapping[str, Any], view: RunView, *, signalled: Collection[str] = ()
    ) -> list[ArgProvenance]:
        """Per-argument provenance of one call against a history (`signalled`: labels of the
        outputs a detector fired on, which no declassification rule covers)."""
        return Tracer(view, self.declassify, signalled=signalled).trace(
            tool.name,
            arguments,
            schema=tool.parameters,
            content_args=self.content_args,
            intents=self.intents.get(tool.name),
        )

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
        their provenance is the human, and escalations to approval no longer apply (deny still
        does). `signals` are injection findings in tool descriptions (`scan_descriptions`)."""
        side_effecting = tool.side_effect in ("write", "irreversible")
        view = self.run_view(messages)
        findings: list[InjectionFinding] = []
        signalled: list[str] = []
        for result in view.untrusted_results:
            found = self.scan(result)
            if found:
                findings.extend(found)
                signalled.append(f"{result.name}#{result.tool_call_id}")
        signals = signals or {}
        if side_effecting:
            findings.extend(f for fs in signals.values() for f in fs)
        else:  # a read is marked only by its own description and what it read so far
            findings.extend(signals.get(tool.name, ()))
        prov = [] if human_authored else self.trace(tool, arguments, view, signalled=signalled)
        flags = self._flags(tool, prov, view, side_effecting)
        taint = TaintReport(
            [
                TaintedValue(p.kind, p.value, p.argument, tuple(s.split("#", 1)[0] for s in p.sources))
                for p in prov
                if p.key and p.origin == "untrusted"
            ]
        )
        amounts, recipients = self._facts(arguments)
        hosts = sorted(hosts_in_arguments(arguments))
        grounded = side_effecting and not flags and all(p.grounded for p in prov if p.key)
        context: dict[str, Any] = {
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
        if self._cedar_grounded:
            context["grounded"] = grounded or human_authored
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
            prov,
            view.untrusted_seen,
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
            decision.messages.append(
                f"{tool.name!r} has an irreversible side effect and needs a human's approval"
                + ("" if grounded else " (not every key value comes from the user's request or trusted data)")
            )
        for rule in self.rules:
            if rule.tool not in ("*", tool.name):
                continue
            violation = rule.check(tool, arguments)
            if violation is not None:
                decision.escalate(violation.effect, violation.rule_id, violation.message)
        for effect, reason, message in flags:
            decision.escalate(effect, reason, message)
        if findings and self.on_injection in ("require_approval", "deny"):
            rules = sorted({f"{f.detector}:{f.rule}" for f in findings})
            decision.escalate(
                self.on_injection,  # pyright: ignore[reportArgumentType]
                "injection:suspected",
                f"possible prompt injection earlier in this run ({', '.join(rules)})",
            )
        if human_authored and decision.effect == "require_approval":
            decision.effect = "allow"  # the human who wrote these arguments is the approval
        if decision.effect != "deny" and charge_rate_limit:
            self._charge(decision, tool, agent, run.tenant)
        return decision

    def _flags(
        self, tool: Tool, prov: list[ArgProvenance], view: RunView, side_effecting: bool
    ) -> list[tuple[Effect, str, str]]:
        """Escalations from provenance and control flow, before any is applied."""
        out: list[tuple[Effect, str, str]] = []
        key = [p for p in prov if p.key]
        on_taint = self.on_taint
        egress = [p for p in key if p.kind in ("url", "host") and p.origin == "untrusted"]
        if egress and on_taint != "off":
            out.append(
                (
                    on_taint,
                    "egress:untrusted-host",
                    "the call would reach a host that appears only in untrusted tool output: " + _listed(egress),
                )
            )
        checked = side_effecting or (self.taint_reads and tool.side_effect == "read")
        if not checked:
            return out
        untrusted = [p for p in key if p.origin == "untrusted" and p not in egress]
        if untrusted and on_taint != "off":
            out.append(
                (
                    on_taint,
                    "provenance:untrusted-value",
                    "arguments use values that came from untrusted tool output, not from the user: "
                    + _listed(untrusted),
                )
            )
        # With no conversation at all (code calling a tool directly) there is nothing to
        # compare with: "invented" needs a user turn the values could have come from. Before
        # untrusted content, a reversible write may label things in its own words (a memory's
        # subject); an irreversible one may not (the model made up a refund amount).
        invented = [p for p in key if p.origin == "invented"] if view.user else []
        if invented and (tool.side_effect == "irreversible" or (side_effecting and view.untrusted_seen)):
            out.append(
                (
                    "require_approval",
                    "provenance:invented-value",
                    f"arguments use values that appear nowhere in the conversation: {_listed(invented)}",
                )
            )
        if (
            side_effecting
            and view.untrusted_seen
            and on_taint != "off"
            and not tool_choice_grounded(tool.name, self.intents.get(tool.name), view.user_words)
        ):
            out.append(
                (
                    "require_approval",
                    "control-flow:unrequested-action",
                    f"the user's request does not ask for {tool.name!r}, and untrusted content entered this run",
                )
            )
        return out

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
        amounts: set[str] = set()
        recipients: set[str] = set()
        for v in argument_values(arguments, content_args=self.content_args):
            if isinstance(v, tuple):
                continue
            if v.kind == "amount":
                amounts.add(f"{float(v.norm):.2f}")  # how a person reads money
            elif v.kind in ("iban", "email", "phone") or (v.key and _RECIPIENT_ARG.match(v.top)):
                recipients.add(v.norm if v.kind != "id" else v.norm.lower())
        return sorted(amounts), sorted(recipients)


def _listed(items: Sequence[ArgProvenance]) -> str:
    return ", ".join(
        f"{p.value} ({p.argument}, {'from ' + '/'.join(p.sources) if p.sources else p.note or p.origin})" for p in items
    )


__all__ = ["Action", "Decision", "Effect", "InjectionEffect", "Policy", "PolicyDecision"]
