from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import ConfigError, UserError
from bastion.runtime import RunOutcome, Runtime, Schedule, Scheduler, SqlRunStore, Webhook, sign
from bastion.types import RunContext


class Ok:
    async def invoke(self, input: Any, *, thread_id: str, context: RunContext, **_: Any) -> RunOutcome:
        return RunOutcome("completed", output=input)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


async def test_schedule_fires_when_due_and_once_per_slot(tmp_path: Path) -> None:
    now = ts("2026-01-01T09:59:00")
    rt = Runtime(SqlRunStore.sqlite(tmp_path / "r.db"), {"digest": Ok()}, workers=0)
    sched = Scheduler(rt, clock=lambda: now)
    sched.add(Schedule("hourly", "0 * * * *", "digest", {"task": "summarise"}, tenant="acme"))
    assert await sched.tick(ts("2026-01-01T09:59:30")) == []
    fired = await sched.tick(ts("2026-01-01T10:00:01"))
    assert len(fired) == 1 and fired[0].metadata == {"trigger": "schedule:hourly"}
    assert await sched.tick(ts("2026-01-01T10:30:00")) == []  # same slot: no second run
    # Missed several slots (process was down): one catch-up run, not a burst.
    assert len(await sched.tick(ts("2026-01-01T14:05:00"))) == 1
    runs = await rt.list_runs(tenant="acme")
    assert len(runs) == 2 and all(r.input == {"task": "summarise"} for r in runs)
    await rt.store.close()


def test_invalid_cron_and_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a valid cron"):
        Schedule("bad", "every tuesday", "a", None)
    rt = Runtime(SqlRunStore.sqlite(tmp_path / "r.db"), {}, workers=0)
    sched = Scheduler(rt)
    sched.add(Schedule("x", "* * * * *", "a", None))
    with pytest.raises(ConfigError, match="already exists"):
        sched.add(Schedule("x", "* * * * *", "a", None))


def test_webhook_signature() -> None:
    hook = Webhook("github", "triage", secret="s3cret", input_template=lambda p: p["title"])
    body = b'{"title": "bug"}'
    hook.verify(body, sign("s3cret", body))
    with pytest.raises(UserError, match="X-Bastion-Signature"):
        hook.verify(body, sign("wrong", body))
    with pytest.raises(UserError):
        hook.verify(body, None)
    assert hook.to_input({"title": "bug"}) == "bug"
