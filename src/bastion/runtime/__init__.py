"""Runs, the run queue, workers with leases and heartbeats, recovery, schedules and triggers."""

from bastion.runtime._adapters import AgentRunnable, to_jsonable
from bastion.runtime._graph_runnable import GraphRunnable
from bastion.runtime._runtime import RunConflictError, RunNotFoundError, Runtime, ThreadNotFoundError
from bastion.runtime._store import WORKER_APPLICATION_NAME, RunStore, SqlRunStore, new_run
from bastion.runtime._triggers import Schedule, Scheduler, Webhook, sign
from bastion.runtime._types import MultitaskStrategy, Run, Runnable, RunOutcome, RunStatus, thread_key
from bastion.runtime._worker import LocalWakeup, PostgresWakeup, Wakeup, Worker

__all__ = [
    "WORKER_APPLICATION_NAME",
    "AgentRunnable",
    "GraphRunnable",
    "LocalWakeup",
    "MultitaskStrategy",
    "PostgresWakeup",
    "Run",
    "RunConflictError",
    "RunNotFoundError",
    "RunOutcome",
    "RunStatus",
    "RunStore",
    "Runnable",
    "Runtime",
    "Schedule",
    "Scheduler",
    "SqlRunStore",
    "ThreadNotFoundError",
    "Wakeup",
    "Webhook",
    "Worker",
    "new_run",
    "sign",
    "thread_key",
    "to_jsonable",
]
