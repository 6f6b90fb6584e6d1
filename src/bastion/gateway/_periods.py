"""Calendar periods of budgets: the bucket a moment falls in, per IANA timezone, and the
escaping of tenants and ids inside scope keys (see `bastion.gateway._budget`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bastion.errors import UserError

Period = Literal["day", "week", "month"]
PERIODS: tuple[str, ...] = get_args(Period)


def zone(tz: str) -> ZoneInfo:
    """The `ZoneInfo` for an IANA name, or a `UserError` saying how to name one."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise UserError(
            f"unknown timezone {tz!r}: use an IANA name such as 'UTC', 'Europe/Paris' or 'America/New_York'"
        ) from None


def period_bounds(period: Period, tz: str, now: datetime) -> tuple[str, datetime, datetime]:
    """The calendar period containing `now` in `tz`: its label (`2026-12-02`, `2026-W49`,
    `2026-12`) and its start and end as aware datetimes. Bounds are built from local wall-clock
    dates, so a day across a DST change lasts 23 or 25 hours, as it does for the people in it.
    The bounds are in UTC."""
    z = zone(tz)
    local = now.astimezone(z).date()
    if period == "day":
        first, after, label = local, local + timedelta(days=1), local.isoformat()
    elif period == "week":
        first = local - timedelta(days=local.weekday())
        after = first + timedelta(days=7)
        iso = local.isocalendar()
        label = f"{iso.year}-W{iso.week:02d}"
    else:
        first = local.replace(day=1)
        after = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
        label = f"{local.year}-{local.month:02d}"
    # In UTC: arithmetic between datetimes of one ZoneInfo ignores the DST offsets.
    start = datetime(first.year, first.month, first.day, tzinfo=z).astimezone(UTC)
    end = datetime(after.year, after.month, after.day, tzinfo=z).astimezone(UTC)
    return label, start, end


def period_key(base: str, period: Period, tz: str, now: datetime) -> str:
    """The key of `base`'s bucket for the period containing `now` (see the module docstring)."""
    local = now.astimezone(zone(tz)).date()  # on every budgeted call: the label only, no bounds
    if period == "day":
        label = local.isoformat()
    elif period == "week":
        iso = local.isocalendar()
        label = f"{iso.year}-W{iso.week:02d}"
    else:
        label = f"{local.year}-{local.month:02d}"
    return f"{base}@{period}:{label}" + ("" if tz == "UTC" else f"[{tz}]")


def key_part(value: str) -> str:
    """A tenant or id as it appears in a scope key: `%`, `/` and `@` escaped, so that tenant
    `a/b` and tenant `a` with user `b/x` never share a key, and `bob@example.com` is not read as
    a period bucket. Plain ids are unchanged."""
    if "%" not in value and "/" not in value and "@" not in value:
        return value
    return value.replace("%", "%25").replace("/", "%2F").replace("@", "%40")


def unquote(value: str) -> str:
    return value.replace("%40", "@").replace("%2F", "/").replace("%25", "%")


def split_key(key: str) -> tuple[str, str, str | None, str | None, str | None]:
    """`(scope, id, period, bucket, tz)` of a scope key; `id` is what follows `<tenant>/`
    (the tenant itself for a tenant scope), unescaped."""
    base, _, bucket = key.partition("@")
    scope, _, rest = base.partition(":")
    ident = unquote(rest if scope == "tenant" else rest.partition("/")[2])
    if not bucket:
        return scope, ident, None, None, None
    period, _, label = bucket.partition(":")
    tz = "UTC"
    if label.endswith("]") and "[" in label:
        label, _, tz = label[:-1].partition("[")
    return scope, ident, period, label, tz


__all__ = ["PERIODS", "Period", "key_part", "period_bounds", "period_key", "split_key", "unquote", "zone"]
