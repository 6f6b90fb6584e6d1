"""Per-key limits, enforced by the gateway's own budgets (not by a second ledger in the proxy).

Each virtual key is a budget *session* of its tenant: the proxy sets
`RunContext.session = "key:<key_id>"`, and a key's limits become the override for the scope
`session:<tenant>/key:<key_id>`. Tenant, user and day limits of the gateway's `Budget` apply
as usual, so "this tenant's budget is exhausted" refuses every key of that tenant.
"""

from __future__ import annotations

import logging
from typing import Any

from bastion.gateway.proxy._keys import VirtualKey

log = logging.getLogger("bastion.gateway.proxy")


def key_session(key: VirtualKey) -> str:
    """The `RunContext.session` of calls made with `key`."""
    return f"key:{key.key_id}"


def key_scope(key: VirtualKey) -> str:
    """The gateway budget scope holding `key`'s own limits."""
    return f"session:{key.tenant}/{key_session(key)}"


class GatewayKeyBudgets:
    """Registers each key's limits with `gateway.budgets` the first time the key is used.

    A gateway without budgets gets an in-memory `Budget()` (no limits of its own) as soon as a
    key with limits shows up: refusing to enforce a limit silently would be worse."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def __call__(self, key: VirtualKey) -> None:
        if key.max_budget_usd is None and key.max_tokens is None:
            return
        from bastion.gateway._budget import Budget, BudgetLimits

        budget = getattr(self.gateway, "budgets", None)
        if budget is None:
            budget = Budget()
            self.gateway.budgets = budget
            log.info("proxy: gave the gateway an in-memory Budget to enforce virtual-key limits")
        if not isinstance(budget, Budget):
            raise TypeError(f"gateway.budgets must be a bastion.gateway.Budget, not {type(budget).__name__}")
        budget.overrides[key_scope(key)] = BudgetLimits(tokens=key.max_tokens, usd=key.max_budget_usd)
        if key.max_budget_usd is not None:
            # The gateway prices reservations only when some limit is in USD.
            budget.tracks_usd = True


__all__ = ["GatewayKeyBudgets", "key_scope", "key_session"]
