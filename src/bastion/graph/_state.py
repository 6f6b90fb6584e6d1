"""State schemas: which channels a graph has, how updates are merged (reducers), and how the
internal dict of channel values is shown to nodes (TypedDict, dataclass or pydantic model)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from bastion.errors import InvalidGraphError, UserError

Reducer = Callable[[Any, Any], Any]


def append(current: list[Any] | None, update: Any) -> list[Any]:
    """Reducer for append-only lists: `Annotated[list[Message], append]`.

    An update may be one item or a list of items. Channels using this reducer are persisted as
    deltas (only the appended items are written per checkpoint).
    """
    items: list[Any] = update if isinstance(update, list) else [update]  # type: ignore[assignment]
    if current is None:
        return list(items)
    return current + items


class StateSchema:
    """Channels and reducers read from a state class's annotations."""

    def __init__(self, cls: type[Any], localns: dict[str, Any] | None = None) -> None:
        self.cls = cls
        try:
            try:
                hints = typing.get_type_hints(cls, include_extras=True)
            except NameError:
                # A state class defined inside a function refers to that function's locals.
                if localns is None:
                    raise
                hints = typing.get_type_hints(cls, localns=localns, include_extras=True)
        except Exception as e:
            raise InvalidGraphError(
                f"cannot read the annotations of state class {cls!r}: {e}; "
                "make sure every annotation refers to an importable type"
            ) from e
        if dataclasses.is_dataclass(cls):
            self.kind = "dataclass"
            names = [f.name for f in dataclasses.fields(cls)]
        elif hasattr(cls, "model_fields") and hasattr(cls, "model_construct"):
            self.kind = "pydantic"
            names = list(cls.model_fields)
        elif issubclass(cls, dict):
            self.kind = "dict"
            names = list(hints)
        else:
            raise InvalidGraphError(f"state schema must be a TypedDict, a dataclass or a pydantic model, not {cls!r}")
        self.channels: tuple[str, ...] = tuple(names)
        self.channel_set = frozenset(names)
        self.reducers: dict[str, Reducer] = {}
        for name in names:
            hint = hints.get(name)
            if typing.get_origin(hint) is typing.Annotated:
                for meta in hint.__metadata__:  # type: ignore[union-attr]
                    if callable(meta) and not isinstance(meta, type):
                        self.reducers[name] = meta
        self.log_channels = frozenset(n for n, r in self.reducers.items() if r is append)

    def view(self, values: dict[str, Any]) -> Any:
        """What a node receives: a shallow copy, so a node mutating it cannot corrupt the run."""
        if self.kind == "dict":
            return dict(values)
        if self.kind == "pydantic":
            return self.cls.model_construct(**values)
        try:
            return self.cls(**values)
        except TypeError as e:
            raise UserError(
                f"cannot build {self.cls.__name__} from the current state ({e}); give the missing "
                "fields defaults or include them in the graph input"
            ) from None

    def output(self, values: dict[str, Any]) -> Any:
        """What callers get back: like `view`, with append-only lists copied so that a caller
        appending to a result cannot change the engine's (cached) state."""
        if self.log_channels:
            values = {k: list(v) if k in self.log_channels and isinstance(v, list) else v for k, v in values.items()}
        return self.view(values)

    def input_dict(self, value: Any) -> dict[str, Any]:
        """Accept a dict or an instance of the state class as graph input."""
        if isinstance(value, dict):
            return value  # type: ignore[return-value]
        if self.kind == "dataclass" and isinstance(value, self.cls):
            return {n: getattr(value, n) for n in self.channels}
        if self.kind == "pydantic" and isinstance(value, self.cls):
            return {n: getattr(value, n) for n in value.model_fields_set}
        raise UserError(
            f"graph input must be a dict of state updates or a {self.cls.__name__}, not {type(value).__name__}"
        )


__all__ = ["Reducer", "StateSchema", "append"]
