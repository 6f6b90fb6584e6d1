"""How a run ends with a failure that must not wedge its thread."""

from __future__ import annotations

from typing import Any

from bastion.errors import BastionError


def failed(error: BastionError) -> dict[str, Any]:
    """The state update that ends a run with `error` (raised to the caller by the runner).

    Deterministic failures (a turn or round limit, output that never validated) end the run
    cleanly instead of raising inside the node: a thread stuck at a failing node could never
    take new input, and resuming it would only fail again.
    """
    return {"done": True, "error": {"type": type(error).__name__, "message": str(error)}}


def rebuild_failure(failure: dict[str, Any]) -> BastionError:
    from bastion import errors

    cls = getattr(errors, str(failure.get("type")), None)
    message = str(failure.get("message", ""))
    if isinstance(cls, type) and issubclass(cls, errors.BastionError):
        try:
            return cls(message)
        except TypeError:  # an error type whose constructor wants more than a message
            pass
    return errors.BastionError(message)
