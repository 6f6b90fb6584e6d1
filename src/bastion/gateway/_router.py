"""Routing: which concrete models a call may use, in which order.

A call names a target: a `provider:model` string, a tier (`cheap`, `strong` ...: one model or a
fallback chain), a deployment alias (several copies of one model, load-balanced), or a `Model`.
The router turns it into a *plan*: an ordered tuple of slots; each slot is tried in turn
(fallback), and inside a slot every attempt picks one deployment (load balancing), skipping
deployments whose circuit breaker is open. Plans are built once per target and cached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from bastion.errors import CircuitOpenError, UnknownModelError, UserError
from bastion.gateway._breaker import CircuitBreaker
from bastion.gateway._model import Model
from bastion.types import ModelRequest, RunContext

Strategy = Literal["round_robin", "least_in_flight"]
Target: TypeAlias = str | Model
RouteHook: TypeAlias = Callable[[ModelRequest, RunContext], str | Model | None]
"""`route(request, context) -> tier | model | None`: picks a target when a call names none
(None: the gateway's default). Must be fast and deterministic: it runs on every such call."""


class Deployment:
    """One concrete model with its breaker and in-flight count."""

    __slots__ = ("breaker", "in_flight", "model", "name")

    def __init__(self, model: Model, breaker: CircuitBreaker) -> None:
        self.model = model
        self.name = model.name
        self.breaker = breaker
        self.in_flight = 0


class Slot:
    """One step of a fallback chain: one model, or several deployments of one model."""

    __slots__ = ("_next", "deployments", "label", "strategy")

    def __init__(self, label: str, deployments: Sequence[Deployment], strategy: Strategy) -> None:
        self.label = label
        self.deployments = tuple(deployments)
        self.strategy = strategy
        self._next = 0

    def pick(self) -> Deployment:
        """Choose a deployment and take its breaker permit; CircuitOpenError if none is open."""
        deployments = self.deployments
        if len(deployments) == 1:
            only = deployments[0]
            if only.breaker.acquire():
                return only
            raise self._open_error()
        if self.strategy == "least_in_flight":
            # Ties go round-robin so idle deployments share the load.
            order = sorted(
                range(len(deployments)), key=lambda i: (deployments[i].in_flight, (i - self._next) % len(deployments))
            )
        else:
            order = [(self._next + i) % len(deployments) for i in range(len(deployments))]
        for i in order:
            if deployments[i].breaker.acquire():
                self._next = (i + 1) % len(deployments)
                return deployments[i]
        raise self._open_error()

    def _open_error(self) -> CircuitOpenError:
        wait = min(d.breaker.retry_in() for d in self.deployments)
        names = ", ".join(d.name for d in self.deployments)
        return CircuitOpenError(
            f"circuit breaker open for {names}: failing fast; it lets a probe through in {wait:.1f}s. "
            "Add a fallback model to the tier to keep serving meanwhile",
            model=self.deployments[0].name,
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """The ordered slots for one target; `label` names the target (cache keys, tracing)."""

    label: str
    slots: tuple[Slot, ...]

    @property
    def primary(self) -> str:
        """The first model the plan tries (the span's request model)."""
        return self.slots[0].deployments[0].name


class Router:
    """Builds and caches plans from tiers, deployments and registered models."""

    def __init__(
        self,
        *,
        tiers: Mapping[str, Target | Sequence[Target]] | None,
        deployments: Mapping[str, Sequence[Target]],
        models: Mapping[str, Model],
        resolver: Callable[[str], Model],
        breaker_for: Callable[[str], CircuitBreaker],
        strategy: Strategy,
        default: Target | None,
        route: RouteHook | None,
    ) -> None:
        if strategy not in ("round_robin", "least_in_flight"):
            raise UserError(f"load-balancing strategy must be 'round_robin' or 'least_in_flight', not {strategy!r}")
        for alias in deployments:
            if tiers is not None and alias in tiers:
                raise UserError(f"{alias!r} is both a tier and a deployment alias; rename one of them")
        # None: the tiers of the settings (`BASTION_TIERS` / bastion.toml), read on first use.
        self._tier_map = None if tiers is None else {k: _as_list(v) for k, v in tiers.items()}
        self._deployments = {k: list(v) for k, v in deployments.items()}
        for alias, members in self._deployments.items():
            if not members:
                raise UserError(f"deployment alias {alias!r} lists no deployments")
        self._models = dict(models)
        self._resolver = resolver
        self._breaker_for = breaker_for
        self._strategy: Strategy = strategy
        self._default = default
        self.route = route
        self._plans: dict[str | int, Plan] = {}
        self._deployment_cache: dict[str, Deployment] = {}

    @property
    def _tiers(self) -> dict[str, list[Target]]:
        if self._tier_map is None:
            from bastion.config import get_settings

            self._tier_map = {k: _as_list(v) for k, v in get_settings().tiers.items()}
        return self._tier_map

    def plan_for(self, target: Target | None, request: ModelRequest) -> Plan:
        if target is None:
            if self.route is not None:
                target = self.route(request, request.context)
            if target is None:
                target = self._default_target()
        key = target if isinstance(target, str) else id(target)  # Models need not be hashable
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._build(target)
        return plan

    def _default_target(self) -> Target:
        if self._default is None:
            from bastion.gateway._resolve import default_model_name

            self._default = default_model_name()
        return self._default

    def _build(self, target: Target) -> Plan:
        if not isinstance(target, str):
            return Plan(target.name, (Slot(target.name, [self._deployment(target)], self._strategy),))
        if target in self._tiers:
            slots = [self._slot(entry) for entry in self._tiers[target]]
            if not slots:
                raise UserError(f"tier {target!r} lists no models")
            return Plan(target, tuple(slots))
        return Plan(target, (self._slot(target),))

    def _slot(self, entry: Target) -> Slot:
        if isinstance(entry, str) and entry in self._deployments:
            members = [self._deployment(m) for m in self._deployments[entry]]
            return Slot(entry, members, self._strategy)
        if isinstance(entry, str) and entry in self._tiers:
            raise UserError(f"tier entries must be models or deployment aliases, not another tier ({entry!r})")
        deployment = self._deployment(entry)
        return Slot(deployment.name, [deployment], self._strategy)

    def _deployment(self, entry: Target) -> Deployment:
        name = entry if isinstance(entry, str) else entry.name
        existing = self._deployment_cache.get(name)
        if existing is not None and (isinstance(entry, str) or existing.model is entry):
            return existing
        if isinstance(entry, str):
            model = self._models.get(entry)
            if model is None:
                if ":" not in entry:
                    known = sorted([*self._tiers, *self._deployments])
                    raise UnknownModelError(
                        f"{entry!r} is not a tier, a deployment alias or a 'provider:model' string; "
                        f"known tiers/aliases: {known}"
                    )
                model = self._resolver(entry)
        else:
            model = entry
        deployment = Deployment(model, self._breaker_for(name))
        self._deployment_cache[name] = deployment
        return deployment

    def deployments(self) -> list[Deployment]:
        return list(self._deployment_cache.values())


def _as_list(value: Target | Sequence[Target]) -> list[Target]:
    if isinstance(value, str) or isinstance(value, Model):
        return [value]
    return list(value)


__all__ = ["Deployment", "Plan", "RouteHook", "Router", "Slot", "Strategy", "Target"]
