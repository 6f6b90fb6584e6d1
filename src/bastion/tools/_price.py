"""`ToolPrice`: what one call of a paid tool costs, declared with the tool.

A price is `per_call` plus `per_unit` times the call's units (pages fetched, SMS sent, rows
enriched). The units come from the validated arguments (`units="pages"` names an argument, or a
function of the arguments), so the cost is known before the tool runs: the tool runner holds it
in every budget that applies and refuses a call the remainder cannot pay, before the body runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bastion.errors import ToolArgumentsError, UserError

UnitsOf = Callable[[Mapping[str, Any]], float]


@dataclass(frozen=True, slots=True)
class ToolPrice:
    """USD per call (`per_call`) and per unit (`per_unit`, counted by `units`: an argument name
    or a function of the validated arguments; `unit` names what is counted, for traces)."""

    per_call: float = 0.0
    per_unit: float = 0.0
    unit: str = "unit"
    units: str | UnitsOf | None = None

    def __post_init__(self) -> None:
        for name, value in (("per_call", self.per_call), ("per_unit", self.per_unit)):
            if not math.isfinite(value) or value < 0:
                raise UserError(f"ToolPrice({name}={value!r}) must be a finite USD amount >= 0")
        if self.per_unit and self.units is None:
            raise UserError(
                "ToolPrice(per_unit=...) needs units=: the name of the argument that counts the units "
                "(e.g. units='pages') or a function of the arguments (e.g. units=lambda a: len(a['urls']))"
            )

    def count(self, arguments: Mapping[str, Any]) -> float:
        """The units a call with `arguments` uses (0 without a per-unit price)."""
        if self.units is None:
            return 0.0
        value = arguments.get(self.units) if isinstance(self.units, str) else self.units(arguments)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ToolArgumentsError(
                f"the price of this tool counts {self.unit}s from {self.units!r}, which gave {value!r}; "
                "pass a number >= 0"
            )
        return float(value)

    def cost(self, arguments: Mapping[str, Any]) -> tuple[float, float]:
        """(USD, units) of one call with `arguments`."""
        units = self.count(arguments)
        return self.per_call + self.per_unit * units, units


def as_price(price: ToolPrice | float | None) -> ToolPrice | None:
    """`@tool(price=...)`: a `ToolPrice`, a plain number (USD per call), or None (free)."""
    if price is None or isinstance(price, ToolPrice):
        return price
    if isinstance(price, bool) or not isinstance(price, int | float):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise UserError(f"@tool(price={price!r}) must be USD per call (a number) or a ToolPrice(...)")
    return ToolPrice(per_call=float(price))


__all__ = ["ToolPrice", "UnitsOf", "as_price"]
