"""Budgets for any scope and period: run, session, user, team, tenant and key scopes; no period, or
a calendar day, week or month in a configured timezone, each period a fresh bucket (checked with
an injected clock just before and after local midnight, a month end and a DST change, over the
memory, SQLite and PostgreSQL stores); limits in USD and tokens; a report of limits and spend;
and degrade-by-cost: a call whose budget is nearly used goes to a cheaper tier, and the chat span
says so."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.errors import BudgetExceededError, UserError
from bastion.gateway import (
    Budget,
    BudgetLimits,
    BudgetStore,
    DegradePolicy,
    Gateway,
    MemoryBudgetStore,
    SQLiteBudgetStore,
)
from bastion.gateway._budget import period_bounds, split_key
from bastion.testing import FunctionModel
from bastion.tracing import configure_tracing
from bastion.types import Message, ModelRequest, ModelResponse, ModelSettings, RunContext, Usage

PARIS = ZoneInfo("Europe/Paris")


class Clock:
    """A budget clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BudgetStore]:
    if request.param == "memory":
        yield MemoryBudgetStore()
    elif request.param == "sqlite":
        s = SQLiteBudgetStore(tmp_path / "budget.db")
        yield s
        s.close()
    else:
        from bastion.gateway import PostgresBudgetStore

        pg = PostgresBudgetStore(request.getfixturevalue("pg_url"))
        yield pg
        await pg.aclose()


def fixed(tokens_out: int = 40, name: str = "test:m", seen: list[str] | None = None) -> FunctionModel:
    def answer(r: ModelRequest) -> ModelResponse:
        if seen is not None:
            seen.append(name)
        return ModelResponse(Message.assistant("ok"), usage=Usage(10, tokens_out, requests=1))

    return FunctionModel(answer, name=name)


def req(**ctx: object) -> ModelRequest:
    return ModelRequest(
        [Message.user("hi")],
        settings=ModelSettings(max_tokens=50),
        context=RunContext(**ctx),  # type: ignore[arg-type]
    )


def local(*args: int, tz: ZoneInfo = PARIS) -> datetime:
    return datetime(*args, tzinfo=tz)  # type: ignore[misc]


async def test_user_day_in_paris_resets_at_local_midnight(store: BudgetStore) -> None:
    clock = Clock(local(2026, 6, 10, 23, 59, 30))
    budget = Budget(user=BudgetLimits(tokens=100, period="day"), tz="Europe/Paris", clock=clock, store=store)
    gw = Gateway(models=[fixed(40)], budgets=budget, cache=False)
    ctx = {"tenant": "acme", "user": "bob"}
    assert [k for k, _ in budget.charges(RunContext(**ctx))] == ["user:acme/bob@day:2026-06-10[Europe/Paris]"]
    await gw.request(req(**ctx), "test:m")
    await gw.request(req(**ctx), "test:m")  # 2 x 50 tokens: the day is spent
    with pytest.raises(BudgetExceededError, match=r"user:acme/bob@day:2026-06-10\[Europe/Paris\]") as info:
        await gw.request(req(**ctx), "test:m")
    assert "wait for the next day" in str(info.value) and "overrides={'user:acme/bob'" in str(info.value)
    # 21:59:30 UTC is still the 10th in UTC, but past midnight in Paris: a fresh bucket.
    clock.now = local(2026, 6, 11, 0, 0, 30)
    assert clock.now.astimezone(UTC).day == 10
    await gw.request(req(**ctx), "test:m")
    assert (await budget.spent("user:acme/bob@day:2026-06-11[Europe/Paris]")).tokens == 50
    assert (await budget.spent("user:acme/bob@day:2026-06-10[Europe/Paris]")).tokens == 100
    await gw.request(req(tenant="acme", user="carol"), "test:m")  # per user, not per tenant


async def test_user_month_resets_at_month_end_in_its_own_timezone(store: BudgetStore) -> None:
    ny = ZoneInfo("America/New_York")
    clock = Clock(local(2026, 1, 31, 23, 59, 59, tz=ny))
    budget = Budget(
        user=[BudgetLimits(usd=5, period="month", tz="America/New_York"), BudgetLimits(tokens=10**6)],
        clock=clock,
        store=store,
    )
    gw = Gateway(models=[fixed(40)], budgets=budget, cache=False, pricing={"test:m": {"input": 0, "output": 0}})
    keys = [k for k, _ in budget.charges(RunContext(tenant="t", user="u"))]
    assert keys == ["user:t/u@month:2026-01[America/New_York]", "user:t/u"]
    await gw.request(req(tenant="t", user="u"), "test:m")
    clock.now += timedelta(seconds=2)  # 00:00:01 on 1 February in New York, 05:00 UTC
    assert next(k for k, _ in budget.charges(RunContext(tenant="t", user="u"))) == (
        "user:t/u@month:2026-02[America/New_York]"
    )
    await gw.request(req(tenant="t", user="u"), "test:m")
    assert (await budget.spent("user:t/u@month:2026-01[America/New_York]")).tokens == 50
    assert (await budget.spent("user:t/u@month:2026-02[America/New_York]")).tokens == 50
    assert (await budget.spent("user:t/u")).tokens == 100  # the limit without a period never resets


async def test_dst_change_day_lasts_23_hours_and_the_bucket_follows_local_time(store: BudgetStore) -> None:
    # Paris springs forward on 2026-03-29: 02:00 CET -> 03:00 CEST. That day is 23 hours long.
    label, start, end = period_bounds("day", "Europe/Paris", datetime(2026, 3, 29, 12, tzinfo=UTC))
    assert label == "2026-03-29" and end - start == timedelta(hours=23)
    assert start == datetime(2026, 3, 28, 23, tzinfo=UTC) and end == datetime(2026, 3, 29, 22, tzinfo=UTC)
    clock = Clock(datetime(2026, 3, 29, 21, 59, tzinfo=UTC))  # 23:59 CEST on the 29th
    budget = Budget(tenant=BudgetLimits(tokens=50, period="day"), tz="Europe/Paris", clock=clock, store=store)
    gw = Gateway(models=[fixed(40)], budgets=budget, cache=False)
    await gw.request(req(tenant="acme"), "test:m")
    with pytest.raises(BudgetExceededError, match="2026-03-29"):
        await gw.request(req(tenant="acme"), "test:m")
    # 22:01 UTC: a fixed +01:00 offset would still say 23:01 on the 29th; Paris says 00:01 on the 30th.
    clock.now = datetime(2026, 3, 29, 22, 1, tzinfo=UTC)
    await gw.request(req(tenant="acme"), "test:m")
    assert (await budget.spent("tenant:acme@day:2026-03-30[Europe/Paris]")).tokens == 50
    # Falling back on 2026-10-25 gives a 25-hour day.
    _, start, end = period_bounds("day", "Europe/Paris", datetime(2026, 10, 25, 12, tzinfo=UTC))
    assert end - start == timedelta(hours=25)


def test_iso_weeks_start_on_monday_and_months_roll_over_the_year() -> None:
    sunday = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)
    assert period_bounds("week", "UTC", sunday)[0] == "2026-W49"
    assert period_bounds("week", "UTC", sunday + timedelta(hours=1))[0] == "2026-W50"
    # 2027-01-01 is a Friday of ISO week 53 of 2026.
    assert period_bounds("week", "UTC", datetime(2027, 1, 1, tzinfo=UTC))[0] == "2026-W53"
    label, start, end = period_bounds("month", "UTC", datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert (label, start.month, end.year, end.month) == ("2026-12", 12, 2027, 1)
    assert split_key("team:acme/ml@week:2026-W49") == ("team", "ml", "week", "2026-W49", "UTC")
    assert split_key("user:acme/bob@day:2026-06-10[Europe/Paris]") == (
        "user",
        "bob",
        "day",
        "2026-06-10",
        "Europe/Paris",
    )
    assert split_key("tenant:acme") == ("tenant", "acme", None, None, None)


def test_every_scope_and_bad_configuration() -> None:
    clock = Clock(datetime(2026, 6, 10, 12, tzinfo=UTC))
    lim = BudgetLimits(tokens=1000)
    budget = Budget(run=lim, session=lim, user=lim, team=lim, tenant=lim, key=lim, clock=clock)
    ctx = RunContext(tenant="a", user="u", session="s", run_id="r", team="t", tags={"virtual_key": "k1"})
    assert [k for k, _ in budget.charges(ctx)] == [
        "tenant:a",
        "user:a/u",
        "team:a/t",
        "session:a/s",
        "key:a/k1",
        "run:a/r",
    ]
    assert [k for k, _ in budget.charges(RunContext(tenant="a"))] == ["tenant:a"]
    with pytest.raises(UserError, match="period"):
        BudgetLimits(usd=1, period="year")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="IANA"):
        BudgetLimits(usd=1, period="day", tz="Mars/Olympus")
    with pytest.raises(UserError, match="IANA"):
        Budget(tz="nowhere")
    with pytest.raises(UserError, match="not in the key"):
        Budget(overrides={"user:a/u@day:2026-01-01": lim})


async def test_ids_with_slashes_and_at_signs_never_share_a_key(store: BudgetStore) -> None:
    clock = Clock(datetime(2026, 6, 10, 12, tzinfo=UTC))
    budget = Budget(user=BudgetLimits(tokens=60, period="day"), clock=clock, store=store)
    gw = Gateway(models=[fixed(40)], budgets=budget, cache=False)
    # Tenant "a/b" user "x" and tenant "a" user "b/x" would both be "user:a/b/x" unescaped.
    await gw.request(req(tenant="a/b", user="x"), "test:m")
    await gw.request(req(tenant="a", user="b/x"), "test:m")
    email = RunContext(tenant="a", user="bob@example.com")
    [(key, _)] = budget.charges(email)
    assert key == "user:a/bob%40example.com@day:2026-06-10" and split_key(key)[1] == "bob@example.com"
    await gw.request(req(tenant="a", user="bob@example.com"), "test:m")
    with pytest.raises(BudgetExceededError, match=r"bob%40example\.com"):
        await gw.request(req(tenant="a", user="bob@example.com"), "test:m")
    lines = {(line.scope, line.id): line.spend.tokens for line in await budget.report("a")}
    assert lines == {("user", "b/x"): 50, ("user", "bob@example.com"): 50}
    budget.overrides[Budget.key("user", "a", "bob@example.com")] = BudgetLimits(tokens=1000, period="day")
    await gw.request(req(tenant="a", user="bob@example.com"), "test:m")  # the override applies


async def test_team_and_key_limits_in_usd_and_tokens(store: BudgetStore) -> None:
    budget = Budget(
        team=BudgetLimits(usd=0.001, period="week"),
        key=BudgetLimits(tokens=60),
        clock=Clock(datetime(2026, 6, 10, tzinfo=UTC)),
        store=store,
    )
    gw = Gateway(models=[fixed(40)], budgets=budget, cache=False, pricing={"test:m": {"input": 1.0, "output": 10.0}})
    await gw.request(req(tenant="a", team="ml", user="x"), "test:m")  # 10 in + 40 out = $0.00041
    await gw.request(req(tenant="a", team="ml", user="y"), "test:m")
    with pytest.raises(BudgetExceededError, match=r"team:a/ml@week:2026-W24"):
        await gw.request(req(tenant="a", team="ml", user="z"), "test:m")
    await gw.request(req(tenant="a", team="other"), "test:m")  # another team has its own
    key_ctx = {"tenant": "a", "tags": {"virtual_key": "k9"}}
    await gw.request(req(**key_ctx), "test:m")
    with pytest.raises(BudgetExceededError, match="key:a/k9"):
        await gw.request(req(**key_ctx), "test:m")


async def test_report_lists_limits_spend_and_period_per_tenant(store: BudgetStore) -> None:
    clock = Clock(local(2026, 6, 10, 9, 0))
    budget = Budget(
        tenant=[BudgetLimits(usd=100), BudgetLimits(tokens=10_000, period="month")],
        user=BudgetLimits(tokens=500, period="day"),
        overrides={"team:a/ml": BudgetLimits(tokens=9)},
        tz="Europe/Paris",
        clock=clock,
        store=store,
    )
    gw = Gateway(models=[fixed(40)], budgets=budget, cache=False, pricing={"test:m": {"input": 0, "output": 0}})
    await gw.request(req(tenant="a", user="bob"), "test:m")
    await gw.request(req(tenant="b", user="eve"), "test:m")
    lines = {line.key: line for line in await budget.report("a")}
    assert set(lines) == {
        "tenant:a",
        "tenant:a@month:2026-06[Europe/Paris]",
        "user:a/bob@day:2026-06-10[Europe/Paris]",
        "team:a/ml",
    }  # nothing of tenant b
    bob = lines["user:a/bob@day:2026-06-10[Europe/Paris]"]
    assert (bob.scope, bob.id, bob.limits.tokens, bob.spend.tokens, bob.tz) == ("user", "bob", 500, 50, "Europe/Paris")
    assert bob.starts == local(2026, 6, 10) and bob.resets == local(2026, 6, 11)
    assert bob.used() == pytest.approx(0.1)
    assert lines["tenant:a"].resets is None and lines["tenant:a"].limits.usd == 100
    legacy = Budget(day=BudgetLimits(tokens=70), clock=clock, store=store)
    await Gateway(models=[fixed(40)], budgets=legacy, cache=False).request(req(tenant="a"), "test:m")
    [line] = await legacy.report("a")
    assert (line.key, line.limits.period, line.spend.tokens) == ("day:a/2026-06-10", "day", 50)
    clock.now = local(2026, 6, 11, 0, 1)  # bob's day is over: his line drops out until he spends again
    assert "user:a/bob@day:2026-06-11[Europe/Paris]" not in {line.key for line in await budget.report("a")}


class Exported:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.handle = configure_tracing(otlp_endpoint="", exporters=[self.exporter], capture_content="off")

    def spans(self) -> list[ReadableSpan]:
        assert self.handle.force_flush(5)  # spans are exported in batches
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def exporter() -> Iterator[Exported]:
    exported = Exported()
    try:
        yield exported
    finally:
        exported.handle.shutdown()


async def test_degrade_routes_to_the_cheap_tier_near_the_limit_and_traces_it(
    store: BudgetStore, exporter: Exported
) -> None:
    seen: list[str] = []
    budget = Budget(user=BudgetLimits(tokens=200, period="day"), store=store)
    gw = Gateway(
        models=[fixed(40, "test:strong", seen), fixed(40, "test:cheap", seen)],
        tiers={"strong": "test:strong", "cheap": "test:cheap"},
        budgets=budget,
        degrade=DegradePolicy(at=0.5, to="cheap"),
        cache=False,
    )
    for _ in range(3):  # 0, 50, 100 of 200 used before each call
        await gw.request(req(tenant="a", user="u"), "strong")
    assert seen == ["test:strong", "test:strong", "test:cheap"]
    assert gw.stats.degraded == 1
    await gw.request(req(tenant="a", user="other"), "strong")  # another user's budget is fresh
    assert seen[-1] == "test:strong"
    chunks = [e async for e in gw.stream(req(tenant="a", user="u"), "strong")]
    assert chunks and seen[-1] == "test:cheap"  # streams degrade too
    spans = [dict(s.attributes or {}) for s in exporter.spans() if s.name.startswith("chat")]
    degraded = [s for s in spans if "bastion.budget.degraded_from" in s]
    assert len(degraded) == 2
    assert degraded[0]["bastion.budget.degraded_from"] == "strong"
    assert degraded[0]["bastion.budget.degraded_to"] == "cheap"
    assert str(degraded[0]["bastion.budget.scope"]).startswith("user:a/u@day:")
    assert degraded[0]["bastion.budget.used"] == pytest.approx(0.5)
    with pytest.raises(UserError, match="share"):
        DegradePolicy(at=80)
