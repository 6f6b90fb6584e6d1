"""Turn what the caller passed as `model=` into a `Model`, lazily (at first use, never at
construction, so building agents reads no config and opens no connection)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

from bastion.errors import UserError
from bastion.gateway import Model

if TYPE_CHECKING:
    from bastion.gateway import Gateway


class ModelSource(Protocol):
    """What `Agent(gateway=...)` needs: a model address (`"provider:model"` or a tier name)
    resolved to a `Model` whose calls go through it. `bastion.Gateway` is one (its retries,
    budgets and pricing then apply). Optional: `budgets` (priced tools share them) and
    `batch(...)` (for `run(deferred=True)`)."""

    def model(self, target: str) -> Model: ...


_shared: Gateway | None = None
_lock = threading.Lock()


def shared_gateway() -> Gateway:
    """The process-wide `Gateway` used by agents given a model string but no `gateway=`, so
    their calls still get the gateway's retries, breakers, pricing and budgets."""
    global _shared
    with _lock:
        if _shared is None:
            from bastion.gateway import Gateway

            _shared = Gateway()
        return _shared


def resolve_model_like(model: Model | str, gateway: ModelSource | None = None) -> Model:
    """A `Model` is used as is; a `"provider:model"` string or a tier name (`"strong"`) is
    resolved by the gateway (the agent's, else the shared one)."""
    if isinstance(model, str):
        return (gateway or shared_gateway()).model(model)
    if not isinstance(model, Model):  # pyright: ignore[reportUnnecessaryIsInstance]  (untyped callers)
        raise UserError(
            f"model={model!r} is not a Model; pass a Model instance, a 'provider:model' string or a tier name"
        )
    return model
