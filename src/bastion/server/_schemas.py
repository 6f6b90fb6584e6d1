"""Request and response bodies of the HTTP API (pydantic: this is where untrusted data enters)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bastion.runtime import Run


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateRun(_Body):
    agent: str = Field(min_length=1, max_length=200, description="name of a registered agent")
    input: Any = Field(description="the agent's input: a string or a JSON object")
    thread_id: str | None = Field(default=None, min_length=1, max_length=200)
    wait: bool = Field(default=False, description="block until the run ends or waits for approval")
    timeout: float = Field(default=60.0, gt=0, le=600, description="seconds to wait when wait=true")
    multitask_strategy: Literal["reject", "enqueue", "interrupt", "rollback"] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ResumeRun(_Body):
    decision: Any = Field(
        description='the human decision: "approve", {"action": "reject", "reason": ...}, '
        '{"action": "edit", "arguments": {...}}, or a map of interrupt id to one of those'
    )


class CreateThread(_Body):
    thread_id: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ForkThread(_Body):
    checkpoint_id: str | None = Field(default=None, min_length=1, max_length=200)  # None: the latest
    thread_id: str | None = Field(default=None, min_length=1, max_length=200)  # the new thread's id


class RunOut(BaseModel):
    id: str
    thread_id: str
    agent: str
    status: str
    input: Any = None
    output: Any = None
    error: str | None = None
    interrupts: list[dict[str, Any]] = Field(default_factory=list)
    attempts: int = 0
    usage: dict[str, int] = Field(default_factory=dict)
    cost_usd: float = 0.0
    trace_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, run: Run) -> RunOut:
        return cls(
            id=run.id, thread_id=run.thread_id, agent=run.agent, status=run.status, input=run.input,
            output=run.output, error=run.error, interrupts=run.interrupts, attempts=run.attempts,
            usage=run.usage, cost_usd=run.cost_usd, trace_id=run.trace_id, metadata=run.metadata,
            created_at=run.created_at, updated_at=run.updated_at,
        )  # fmt: skip


class Approval(BaseModel):
    run_id: str
    thread_id: str
    agent: str
    interrupts: list[dict[str, Any]]
    created_at: float


class ErrorOut(BaseModel):
    error: dict[str, Any]
