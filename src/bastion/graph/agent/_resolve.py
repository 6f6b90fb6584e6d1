"""Turn what the caller passed as `model=` into a `Model`, lazily (at first use, never at
construction, so building agents reads no config and opens no connection)."""

from __future__ import annotations

from typing import Any, TypeAlias

from bastion.errors import UserError
from bastion.gateway import Model

ModelLike: TypeAlias = "Model | str"


def resolve_model_like(model: Model | str, gateway: Any = None) -> Model:
    """A `Model` as is; `"provider:model"` via the gateway (or `resolve_model`); a bare name is a
    tier of the gateway (`"strong"`, `"fast"` ...)."""
    if not isinstance(model, str):
        if not isinstance(model, Model):  # pyright: ignore[reportUnnecessaryIsInstance]  (untyped callers)
            raise UserError(
                f"model={model!r} is not a Model; pass a Model instance, a 'provider:model' string or a tier name"
            )
        return model
    if gateway is not None:
        return gateway.model(model)
    if ":" in model:
        from bastion import gateway as gw

        resolve = getattr(gw, "resolve_model", None)
        if resolve is None:
            raise UserError(f"cannot resolve {model!r}: bastion.gateway.resolve_model is unavailable")
        return resolve(model)
    from bastion import gateway as gw

    gateway_cls = getattr(gw, "Gateway", None)
    if gateway_cls is None:
        raise UserError(f"model tier {model!r} needs a gateway: pass gateway=Gateway(...) to the Agent")
    try:
        return gateway_cls().model(model)
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"could not resolve model tier {model!r} with a default Gateway ({e}); pass a 'provider:model' "
            "string, a Model instance, or gateway=Gateway(...) with that tier configured"
        ) from e
