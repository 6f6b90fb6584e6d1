"""Per-key limits, enforced by the gateway's own budgets (not by a second ledger in the proxy).

Each virtual key is a budget *session* of its tenant: the proxy sets
`RunContext.session = "key:<key_id>"`, and a key's limits become the override for the scope
`session:<tenant>/key:<key_id>`. Tenant, user and day limits of the gateway's `Budget` apply
as usual, so "this tenant's budget is exhausted" refuses every key of that tenant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bastion.gateway.proxy._keys import VirtualKey

if TYPE_CHECKING:
    from bastion.gateway._budget import BudgetStore

log = logging.getLogger("bastion.gateway.proxy")


def key_session(key: VirtualKey) -> str:
    """The `RunContext.session` of calls made with `key`."""
    return f"key:{key.key_id}"


def key_scope(key: VirtualKey) -> str:
    """The gateway budget scope holding `key`'s own limits."""
    return f"session:{key.tenant}/{key_session(key)}"


class GatewayKeyBudgets:
    """Registers each key's limits with `gateway.budgets` the first time the key is used.

    A gateway without budgets gets a `Budget()` (no limits of its own) as soon as a key with
    limits shows up: ignoring a limit silently would be worse. Its store comes from
    `store_factory` (e.g. the deployment's SQLite file or PostgreSQL, so that every process
    serving the key shares one ledger), else it is in memory (one process)."""

    def __init__(self, gateway: Any, store_factory: Callable[[], BudgetStore] | None = None) -> None:
        self.gateway = gateway
        self.store_factory = store_factory

    def __call__(self, key: VirtualKey) -> None:
        if key.max_budget_usd is None and key.max_tokens is None:
            return
        from bastion.gateway._budget import Budget, BudgetLimits

        budget = getattr(self.gateway, "budgets", None)
        if budget is None:
            store = self.store_factory() if self.store_factory is not None else None
            budget = Budget(store=store)
            self.gateway.budgets = budget
            where = "in memory" if store is None else f"in a {type(store).__name__}"
            log.info("proxy: gave the gateway a Budget (%s) to enforce virtual-key limits", where)
        if not isinstance(budget, Budget):
            raise TypeError(f"gateway.budgets must be a bastion.gateway.Budget, not {type(budget).__name__}")
        budget.overrides[key_scope(key)] = BudgetLimits(tokens=key.max_tokens, usd=key.max_budget_usd)


__all__ = ["GatewayKeyBudgets", "key_scope", "key_session"]
