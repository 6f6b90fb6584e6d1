"""Authorization in Cedar (via `cedarpy`): the same policy language as AWS AgentCore Policy.

Policies live in `.cedar` files and are validated against the Bastion Cedar schema when they
are loaded, so a typo in an attribute name is a `ConfigError` at start-up, not a silent deny
at run time. A call is evaluated twice in one batch: `call` (may it run unattended?) and
`call_with_approval` (may it run once a human approves?). Neither permitted: deny.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from bastion.errors import ConfigError

CedarEffect = Literal["allow", "require_approval", "deny"]


def default_schema_text() -> str:
    return resources.files("bastion.policy").joinpath("cedar/schema.cedarschema").read_text("utf-8")


def default_policy_text() -> str:
    return resources.files("bastion.policy").joinpath("cedar/default.cedar").read_text("utf-8")


def _read_policies(sources: Iterable[str | Path]) -> str:
    texts: list[str] = []
    for src in sources:
        path = Path(src)
        # Policy text always has a scope in parentheses; anything else is a file or directory.
        if isinstance(src, Path) or "(" not in src:
            if path.is_dir():
                files = sorted(path.glob("*.cedar"))
                if not files:
                    raise ConfigError(f"no .cedar files in policy directory {path}")
                texts.extend(f.read_text("utf-8") for f in files)
            elif path.is_file():
                texts.append(path.read_text("utf-8"))
            else:
                raise ConfigError(f"policy file {path} does not exist; pass an existing .cedar file or directory")
        else:
            texts.append(str(src))  # inline policy text
    return "\n".join(texts)


@dataclass(frozen=True, slots=True)
class CedarDecision:
    effect: CedarEffect
    policy_ids: list[str]  # the @id (or generated id) of the determining policies
    errors: list[str]


class CedarAuthorizer:
    """Loads and validates a policy set once; `decide()` evaluates one call."""

    def __init__(
        self,
        policies: Iterable[str | Path] | None = None,
        *,
        schema: str | Path | None = None,
    ) -> None:
        import cedarpy

        self._cedarpy = cedarpy
        schema_text = Path(schema).read_text("utf-8") if isinstance(schema, Path) else schema
        self.schema_text = schema_text or default_schema_text()
        self.policy_text = _read_policies(policies) if policies is not None else default_policy_text()
        try:
            self._schema = cedarpy.Schema.from_str(self.schema_text)
        except Exception as e:
            raise ConfigError(f"invalid Cedar schema: {e}") from e
        result = cedarpy.validate_policies(self.policy_text, self._schema)
        if not result.validation_passed:
            problems = "; ".join(str(err) for err in result.errors)
            raise ConfigError(
                f"Cedar policies do not validate against the Bastion schema: {problems}. "
                "Policies may use principal.grants/tenant/name, resource.name/side_effect/idempotent/"
                "trusted/network/version and the context attributes listed in the schema."
            )
        try:
            self._policies = cedarpy.PolicySet.from_str(self.policy_text)
        except Exception as e:  # pragma: no cover - validation parses first
            raise ConfigError(f"invalid Cedar policies: {e}") from e
        self._entity_cache: dict[tuple[Any, ...], Any] = {}

    def _entities(self, agent: str, tenant: str, grants: frozenset[str], tool: Mapping[str, Any]) -> Any:
        key = (agent, tenant, grants, tool["name"], tool["version"], tool["side_effect"])
        cached = self._entity_cache.get(key)
        if cached is not None:
            return cached
        entities = [
            {"uid": {"type": "Bastion::Tenant", "id": tenant}, "attrs": {}, "parents": []},
            {
                "uid": {"type": "Bastion::Agent", "id": f"{tenant}/{agent}"},
                "attrs": {"name": agent, "tenant": tenant, "grants": sorted(grants)},
                "parents": [{"type": "Bastion::Tenant", "id": tenant}],
            },
            {"uid": {"type": "Bastion::Tool", "id": tool["name"]}, "attrs": dict(tool), "parents": []},
        ]
        handle = self._cedarpy.Entities.from_json_str(json.dumps(entities), self._schema)
        if len(self._entity_cache) > 4096:
            self._entity_cache.clear()
        self._entity_cache[key] = handle
        return handle

    def decide(
        self,
        *,
        agent: str,
        tenant: str,
        grants: frozenset[str],
        tool: Mapping[str, Any],
        context: Mapping[str, Any],
    ) -> CedarDecision:
        entities = self._entities(agent, tenant, grants, tool)
        principal = {"type": "Bastion::Agent", "id": f"{tenant}/{agent}"}
        resource = {"type": "Bastion::Tool", "id": tool["name"]}
        requests = [
            {
                "principal": principal,
                "action": {"type": "Bastion::Action", "id": action},
                "resource": resource,
                "context": dict(context),
            }
            for action in ("call", "call_with_approval")
        ]
        unattended, approved = self._cedarpy.is_authorized_batch(requests, self._policies, entities, self._schema)
        errors = list(unattended.diagnostics.errors) + list(approved.diagnostics.errors)
        if unattended.allowed:
            return CedarDecision("allow", self._ids(unattended), errors)
        if approved.allowed:
            return CedarDecision("require_approval", self._ids(approved), errors)
        return CedarDecision("deny", self._ids(unattended) + self._ids(approved) or ["default-deny"], errors)

    @staticmethod
    def _ids(result: Any) -> list[str]:
        names: dict[str, str] = result.diagnostics.id_annotations_by_reason
        return [names.get(r) or r for r in result.diagnostics.reasons]


__all__ = ["CedarAuthorizer", "CedarDecision", "CedarEffect", "default_policy_text", "default_schema_text"]
