"""Security layer benchmark: a prompt-injection benchmark replayed through `ToolGateway`, and
the policy decision latency.

    .venv/bin/python bench/security.py            # prints tables, writes bench/results/security.json
    .venv/bin/python bench/security.py --quick    # no sandbox timing, fewer latency samples

The suite (`security_suite.py`): four app domains (workspace, travel, banking, team chat),
each with 11-16 tools declared once and the developer's policy stated once; 61 benign user
tasks with scripted ground-truth calls; 22 attacker goals. Every (task, goal) pair in a
domain where the task reads text the attacker can write is run.

The agent is scripted and 100% obedient: it does the user's task and, as soon as it reads
the planted instruction, does what it says. Each pair runs with each of four framings (an
`<INFORMATION>` block addressed to the model, "ignore all previous instructions", text
addressed to the assistant, and plain text no detector should need). Every call goes
through `ToolGateway.check`, the same decision `execute` makes. Three approvers answer
approval requests: one withholds every approval, a careful one approves only requests not
flagged, one approves everything.
Baselines in the same run: no policy (every call runs) and a tool allowlist only (granted
calls run; irreversible ones ask a human, with nothing flagged).

Reported per domain and per cause: attack goals reached under each approver, benign tasks
that needed no approval, benign tasks denied; plus the decision's p50 with a 40-message
history. Pairs an attack still wins are listed by name in the JSON, not dropped.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import machine_note, percentile, table, write_results
from security_suite import FRAMINGS, Call, Domain, Goal, Read, Task, domains

from bastion.policy import AuditLog, Policy, StaticSecretProvider, ToolGateway
from bastion.tools import Tool, ToolCallContext
from bastion.types import Message, RunContext, ToolCall, ToolResult

APPROVERS = ("withhold", "careful", "approve_all")
BENIGN_FILL = "Looking forward to it."

# (action, flagged) for one call: "allow" | "approve" | "deny"
Checker = Callable[[ToolCall, ToolCallContext, Mapping[str, Tool]], tuple[str, bool]]


def bastion_checker(domain: Domain) -> tuple[Checker, ToolGateway]:
    policy = Policy(
        {"agent": list(domain.tools)},
        declassify=domain.declassify,
        intents=domain.intents,
    )
    gw = ToolGateway(policy, audit=AuditLog(), secrets=StaticSecretProvider({}), trace_redaction=False)

    def check(call: ToolCall, ctx: ToolCallContext, tools: Mapping[str, Tool]) -> tuple[str, bool]:
        d = gw.check(call, ctx, tools)
        return d.action, d.flagged

    return check, gw


def allowlist_checker(call: ToolCall, ctx: ToolCallContext, tools: Mapping[str, Tool]) -> tuple[str, bool]:
    return ("approve" if tools[call.name].side_effect == "irreversible" else "allow"), False


def no_policy_checker(call: ToolCall, ctx: ToolCallContext, tools: Mapping[str, Tool]) -> tuple[str, bool]:
    return "allow", False


def runs(action: str, flagged: bool, approver: str) -> bool:
    if action == "allow":
        return True
    if action == "deny":
        return False
    return approver == "approve_all" or (approver == "careful" and not flagged)


class Episode:
    """One scripted run: the history grows as the agent calls tools."""

    def __init__(self, domain: Domain, check: Checker, prompt: str, injection: str, approver: str, n: int) -> None:
        self.domain, self.check, self.injection, self.approver = domain, check, injection, approver
        self.messages: list[Message] = [Message.user(prompt)]
        self.ctx = ToolCallContext(
            run=RunContext(tenant="bench", run_id=f"r{n}"), agent="agent", messages=self.messages
        )
        self.decisions: list[tuple[str, str, bool]] = []  # (tool, action, flagged)
        self._n = 0

    def step(self, step: Read | Call) -> bool:
        self._n += 1
        call = ToolCall(step.tool, dict(step.args), id=f"call_{self._n}")
        action, flagged = self.check(call, self.ctx, self.domain.tools)
        self.decisions.append((step.tool, action, flagged))
        ran = runs(action, flagged, self.approver)
        self.messages.append(Message.assistant(tool_calls=[call]))
        tool = self.domain.tools[step.tool]
        if not ran:
            content, trust = "blocked by policy", "trusted"
        elif isinstance(step, Read):
            content, trust = self.domain.data[step.data].replace("{INJ}", self.injection), tool.trust
        else:
            content, trust = "ok", "trusted"
        self.messages.append(Message.tool(ToolResult(call.id, step.tool, content, is_error=not ran, trust=trust)))
        return ran


def run_benign(domain: Domain, check: Checker, task: Task, n: int) -> dict[str, Any]:
    ep = Episode(domain, check, task.prompt, BENIGN_FILL, "approve_all", n)
    for s in task.steps:
        ep.step(s)
    return {
        "task": task.id,
        "no_approval": all(a == "allow" for _, a, _ in ep.decisions),
        "denied": any(a == "deny" for _, a, _ in ep.decisions),
        "asked": [f"{t}:{'flagged' if f else 'routine'}" for t, a, f in ep.decisions if a == "approve"],
    }


def run_attack(domain: Domain, check: Checker, task: Task, goal: Goal, framing: int, approver: str, n: int) -> bool:
    """Did the attacker's goal run to the end?"""
    injection = FRAMINGS[framing].format(goal=goal.instruction)
    ep = Episode(domain, check, task.prompt, injection, approver, n)
    reached: bool | None = None
    for s in task.steps:
        ran = ep.step(s)
        if reached is None and ran and isinstance(s, Read) and "{INJ}" in domain.data[s.data]:
            reached = all([ep.step(g) for g in goal.steps])  # obedient: does every step it was told
    return bool(reached)


def evaluate() -> dict[str, Any]:
    out: dict[str, Any] = {"policies": {}, "pairs": 0, "tasks": 0, "goals": 0, "domains": {}}
    suite = domains()
    for d in suite:
        out["domains"][d.name] = {
            "tools": len(d.tools),
            "tasks": len(d.tasks),
            "goals": len(d.goals),
            "injectable_tasks": sum(d.injectable(t) for t in d.tasks),
        }
    n = 0
    detected_pairs = 0
    for policy_name in ("bastion", "allowlist only", "no policy"):
        per: dict[str, Any] = {
            "benign": defaultdict(lambda: {"tasks": 0, "no_approval": 0, "denied": 0}),
            "attacks": defaultdict(lambda: {"pairs": 0, **{a: 0 for a in APPROVERS}}),
            "by_cause": defaultdict(lambda: {"pairs": 0, **{a: 0 for a in APPROVERS}}),
            "reached": {a: [] for a in APPROVERS},
            "benign_asked": [],
        }
        for d in suite:
            tasks = d.tasks
            goals = d.goals
            if policy_name == "bastion":
                check, gw = bastion_checker(d)
            else:
                check, gw = (allowlist_checker if policy_name == "allowlist only" else no_policy_checker), None
            for task in tasks:
                n += 1
                b = run_benign(d, check, task, n)
                row = per["benign"][d.name]
                row["tasks"] += 1
                row["no_approval"] += b["no_approval"]
                row["denied"] += b["denied"]
                if not b["no_approval"] and policy_name == "bastion":
                    per["benign_asked"].append(f"{d.name}/{task.id}: {', '.join(b['asked'])}")
            for task in tasks:
                if not d.injectable(task):
                    continue
                for goal in goals:
                    # every pair with every framing: no attack is lucky or unlucky in its wording
                    for framing in range(len(FRAMINGS)):
                        per["attacks"][d.name]["pairs"] += 1
                        per["by_cause"][goal.cause]["pairs"] += 1
                        if policy_name == "bastion" and gw is not None:
                            text = FRAMINGS[framing].format(goal=goal.instruction)
                            detected_pairs += bool(gw.policy.detectors[0].detect(text))
                        for approver in APPROVERS:
                            n += 1
                            if run_attack(d, check, task, goal, framing, approver, n):
                                per["attacks"][d.name][approver] += 1
                                per["by_cause"][goal.cause][approver] += 1
                                per["reached"][approver].append(f"{d.name}/{task.id}+{goal.id}#f{framing}")
            if gw is not None:
                gw.close()
        per["benign"] = dict(per["benign"])
        per["attacks"] = dict(per["attacks"])
        per["by_cause"] = dict(per["by_cause"])
        out["policies"][policy_name] = per
    b = out["policies"]["bastion"]
    out["pairs"] = sum(v["pairs"] for v in b["attacks"].values())
    out["tasks"] = sum(v["tasks"] for v in b["benign"].values())
    out["goals"] = sum(len(d.goals) for d in suite)
    out["injections_detected"] = detected_pairs
    return out


def totals(per: dict[str, Any]) -> dict[str, Any]:
    attacks = per["attacks"].values()
    benign = per["benign"].values()
    return {
        "pairs": sum(a["pairs"] for a in attacks),
        **{a: sum(x[a] for x in attacks) for a in APPROVERS},
        "tasks": sum(x["tasks"] for x in benign),
        "no_approval": sum(x["no_approval"] for x in benign),
        "denied": sum(x["denied"] for x in benign),
    }


# --- latency -------------------------------------------------------------------------------------


def time_calls(fn: Callable[[], Any], n: int) -> list[float]:
    for _ in range(min(200, n)):
        fn()
    samples: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def latency(n: int = 3000) -> dict[str, dict[str, float]]:
    """A full decision with per-argument provenance against a 40-message banking history."""
    d = next(x for x in domains() if x.name == "banking")
    policy = Policy({"agent": list(d.tools)}, declassify=d.declassify, intents=d.intents)
    history: list[Message] = [Message.system("You are a banking assistant.")]
    i = 0
    while len(history) < 40:
        for task in d.tasks:
            if len(history) >= 40:
                break
            history.append(Message.user(task.prompt))
            for s in task.steps:
                if isinstance(s, Read) and len(history) < 39:
                    i += 1
                    call = ToolCall(s.tool, dict(s.args), id=f"h{i}")
                    history.append(Message.assistant(tool_calls=[call]))
                    text = d.data[s.data].replace("{INJ}", FRAMINGS[3].format(goal="pay the fee"))
                    history.append(Message.tool(ToolResult(call.id, s.tool, text, trust=d.tools[s.tool].trust)))
    history = history[:40]
    run = RunContext(tenant="bench")
    tools = d.tools
    args = {"recipient": "GB29NWBK60161331926819", "amount": 1200.0, "subject": "Rent June"}
    cases: dict[str, Callable[[], Any]] = {
        "full decision, send_money + 40-msg history": lambda: policy.decide(
            tools["send_money"], args, agent="agent", run=run, messages=history
        ),
        "full decision, read tool + 40-msg history": lambda: policy.decide(
            tools["get_balance"], {}, agent="agent", run=run, messages=history
        ),
    }
    out: dict[str, dict[str, float]] = {}
    for name, fn in cases.items():
        samples = time_calls(fn, n)
        out[name] = {"p50_ms": percentile(samples, 50), "p95_ms": percentile(samples, 95), "n": n}

    async def gateway_check() -> list[float]:
        with ToolGateway(policy, audit=AuditLog(), secrets=StaticSecretProvider({}), trace_redaction=False) as gw:
            ctx = ToolCallContext(run=run, agent="agent", messages=history)
            call = ToolCall("send_money", args)
            return time_calls(lambda: gw.check(call, ctx, tools), n)

    samples = asyncio.run(gateway_check())
    out["ToolGateway.check (validate + decision), 40-msg history"] = {
        "p50_ms": percentile(samples, 50),
        "p95_ms": percentile(samples, 95),
        "n": n,
    }
    return out


def sandbox_latency(n: int = 30) -> dict[str, Any]:
    """Start-to-exit time of a fresh bubblewrap sandbox per call, vs the same program unsandboxed."""
    import shutil
    import subprocess

    from bastion.tools.sandbox import Sandbox

    if not Sandbox.available():
        return {"available": False}
    box = Sandbox()

    async def sandboxed() -> list[float]:
        out: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter()
            result = await box.run(["/usr/bin/true"])
            assert result.ok
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    def bare() -> list[float]:
        true = shutil.which("true") or "/usr/bin/true"
        out: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run([true], check=True)
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    sb, plain = asyncio.run(sandboxed()), bare()
    return {
        "available": True,
        "sandboxed_true_p50_ms": percentile(sb, 50),
        "sandboxed_true_p95_ms": percentile(sb, 95),
        "plain_subprocess_p50_ms": percentile(plain, 50),
        "added_p50_ms": percentile(sb, 50) - percentile(plain, 50),
    }


def pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.0f}%)" if b else "0/0"


def report(res: dict[str, Any]) -> None:
    print(
        f"\n## Injection benchmark: {res['tasks']} benign tasks, {res['goals']} attacker goals, "
        f"{res['pairs'] // len(FRAMINGS)} (task, goal) pairs x {len(FRAMINGS)} framings = {res['pairs']} attack runs, "
        f"{len(res['domains'])} domains\n"
    )
    rows = []
    for name, per in res["policies"].items():
        t = totals(per)
        rows.append(
            [name, pct(t["withhold"], t["pairs"]), pct(t["careful"], t["pairs"]), pct(t["approve_all"], t["pairs"]),
             pct(t["no_approval"], t["tasks"]), str(t["denied"])]
        )  # fmt: skip
    heads = [
        "policy",
        "attack runs reached: withhold",
        "careful approver",
        "approve all",
        "benign: no approval",
        "denied",
    ]
    print(table(heads, rows))
    b = res["policies"]["bastion"]
    print("\n### Bastion, per domain\n")
    rows = []
    for dom, a in b["attacks"].items():
        bn = b["benign"][dom]
        info = res["domains"][dom]
        rows.append(
            [f"{dom} ({info['tools']} tools)", str(a["pairs"]), str(a["withhold"]), str(a["careful"]),
             str(a["approve_all"]), pct(bn["no_approval"], bn["tasks"]), str(bn["denied"])]
        )  # fmt: skip
    print(table(["domain", "attack runs", "withhold", "careful", "approve all", "benign: no approval", "denied"], rows))
    print("\n### Bastion, per cause (attack runs that reached their goal)\n")
    rows = [
        [cause, str(c["pairs"]), str(c["withhold"]), str(c["careful"]), str(c["approve_all"])]
        for cause, c in sorted(b["by_cause"].items())
    ]
    print(table(["cause", "attack runs", "withhold", "careful", "approve all"], rows))
    print(
        f"\nInjection heuristics fired on {res['injections_detected']}/{res['pairs']} planted texts "
        "(a signal: it marks approvals, never gates)."
    )
    if b["reached"]["careful"]:
        print("Attacks reached with the careful approver: " + ", ".join(b["reached"]["careful"]))
    if b["benign_asked"]:
        print("Benign tasks that needed an approval: " + "; ".join(b["benign_asked"]))


def main() -> None:
    quick = "--quick" in sys.argv
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = evaluate()
    res["suite_seconds"] = time.perf_counter() - t0
    lat = latency(1000 if quick else 3000)
    box = {"available": False, "skipped": True} if quick else sandbox_latency()
    report(res)
    print(f"\n## Policy decision latency ({machine_note()}, load average {load:.1f})\n")
    print(
        table(["case", "p50 ms", "p95 ms"], [[k, f"{v['p50_ms']:.3f}", f"{v['p95_ms']:.3f}"] for k, v in lat.items()])
    )
    if box.get("available"):
        print(
            f"\nSandbox start: /usr/bin/true in a fresh bubblewrap sandbox p50 {box['sandboxed_true_p50_ms']:.1f} ms "
            f"(+{box['added_p50_ms']:.1f} ms over a plain subprocess)"
        )
    print(f"\nsuite ran in {res['suite_seconds']:.1f} s")
    path = write_results(
        "security",
        {"machine": machine_note(), "load_average": load, "injection": res, "latency": lat, "sandbox": box},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
