"""Things that start runs without a person: cron schedules and signed webhooks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bastion.errors import ConfigError, UserError
from bastion.runtime._runtime import Runtime
from bastion.runtime._types import Run

log = logging.getLogger("bastion.runtime")


@dataclass(slots=True)
class Schedule:
    """Start `agent` with `input` on the cron expression `cron` (UTC), for `tenant`."""

    name: str
    cron: str
    agent: str
    input: Any
    tenant: str = "default"
    thread_id: str | None = None  # None: a new thread per firing
    next_at: float = 0.0

    def __post_init__(self) -> None:
        from croniter import croniter

        if not croniter.is_valid(self.cron):
            raise ConfigError(f"schedule {self.name!r}: {self.cron!r} is not a valid cron expression")

    def advance(self, now: float) -> None:
        from croniter import croniter

        self.next_at = croniter(self.cron, datetime.fromtimestamp(now, UTC)).get_next(float)


@dataclass(slots=True)
class Scheduler:
    """Fires due schedules. `tick(now)` is the whole logic (tests drive it with a fake clock);
    `run()` calls it on the wall clock until stopped."""

    runtime: Runtime
    schedules: list[Schedule] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    fired: list[Run] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, schedule: Schedule) -> None:
        if any(s.name == schedule.name for s in self.schedules):
            raise ConfigError(f"a schedule named {schedule.name!r} already exists")
        schedule.advance(self.clock())
        self.schedules.append(schedule)

    async def tick(self, now: float | None = None) -> list[Run]:
        now = self.clock() if now is None else now
        started: list[Run] = []
        for s in self.schedules:
            if not s.next_at:
                s.advance(now)
            # Fire once even if several firings were missed (no thundering catch-up).
            if s.next_at <= now:
                run = await self.runtime.create_run(
                    tenant=s.tenant, agent=s.agent, input=s.input, thread_id=s.thread_id,
                    metadata={"trigger": f"schedule:{s.name}"}, multitask="enqueue",
                )  # fmt: skip
                started.append(run)
                s.advance(now)
        self.fired.extend(started)
        return started

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.tick()
            upcoming = min((s.next_at for s in self.schedules), default=self.clock() + 60)
            try:
                await asyncio.wait_for(self._stop.wait(), max(0.05, min(60.0, upcoming - self.clock())))
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()


@dataclass(slots=True)
class Webhook:
    """`POST /v1/triggers/{name}` with an HMAC-SHA256 signature of the body starts `agent`."""

    name: str
    agent: str
    secret: str
    tenant: str = "default"
    input_template: Callable[[dict[str, Any]], Any] | None = None

    def verify(self, body: bytes, signature: str | None) -> None:
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        if not signature or not hmac.compare_digest(expected, signature):
            raise self._bad_signature()

    async def read_verified(self, chunks: AsyncIterable[bytes], signature: str | None) -> bytes:
        """The body, read from `chunks` while its HMAC is computed, once the signature matches.

        A missing or malformed signature is refused before a byte is read; the caller bounds
        `chunks` (the server refuses a body past its size limit as it streams in)."""
        if not signature or not signature.startswith("sha256=") or len(signature) != 71:
            raise self._bad_signature()
        mac = hmac.new(self.secret.encode(), digestmod=hashlib.sha256)
        parts: list[bytes] = []
        async for chunk in chunks:
            mac.update(chunk)
            parts.append(chunk)
        if not hmac.compare_digest("sha256=" + mac.hexdigest(), signature):
            raise self._bad_signature()
        return b"".join(parts)

    def _bad_signature(self) -> UserError:
        return UserError(
            f"webhook {self.name!r}: missing or wrong X-Bastion-Signature; send 'sha256=<hex HMAC of the body>'"
        )

    def to_input(self, payload: dict[str, Any]) -> Any:
        return self.input_template(payload) if self.input_template else payload


def sign(secret: str, body: bytes) -> str:
    """The signature header value a webhook sender computes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
