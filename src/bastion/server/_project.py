"""A Bastion project: the agents (and optional memory, gateway, triggers) a server or worker runs.

A project is declared in Python and named on the command line as `module:attr` or
`path/to/file.py:attr`; `attr` is a `Project` or a function `(env: ProjectEnv) -> Project`
(sync or async), so agents can get checkpointers that match the deployment (SQLite embedded,
PostgreSQL when scaled out).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError
from bastion.runtime import AgentRunnable, GraphRunnable, Runnable, Runtime, Schedule, Webhook


@dataclass(slots=True)
class ProjectEnv:
    """Where the project runs: embedded files under `home`, or a shared PostgreSQL."""

    home: Path
    database_url: str | None = None

    def checkpointer(self) -> Any:
        """A checkpointer matching the deployment (give it to each durable agent)."""
        if self.database_url:
            from bastion.checkpoint import PostgresCheckpointer

            # The runtime ends every run with a durable commit, which makes its checkpoints durable.
            return PostgresCheckpointer(self.database_url, async_commit=True)
        from bastion.checkpoint import SqliteCheckpointer

        self.home.mkdir(parents=True, exist_ok=True)
        return SqliteCheckpointer(self.home / "checkpoints.db")

    def audit_log(self) -> Any:
        """An audit log matching the deployment (give it to each `ToolGateway`): `<home>/audit.db`,
        anchored in `<home>/runs.db`, or PostgreSQL (needs `BASTION_SECRET_AUDIT_KEY`, one key
        for every process). `bastion audit verify` checks either."""
        from bastion.policy import AuditLog

        if self.database_url:
            return AuditLog.postgres(self.database_url)
        self.home.mkdir(parents=True, exist_ok=True)
        return AuditLog(self.home / "audit.db")

    def budget_store(self) -> Any:
        """A budget store matching the deployment, shared by every process that serves it:
        `<home>/budgets.db` embedded, the database when scaled out."""
        if self.database_url:
            from bastion.gateway import PostgresBudgetStore

            return PostgresBudgetStore(self.database_url)
        from bastion.gateway import SQLiteBudgetStore

        self.home.mkdir(parents=True, exist_ok=True)
        return SQLiteBudgetStore(self.home / "budgets.db")

    def response_cache(self, *, ttl: float = 24 * 3600) -> Any:
        """An exact response cache for the project's `Gateway(cache=...)`: `<home>/cache.db`,
        shared by the processes of this host. (A `Gateway` left to its default caches in memory
        and writes no file.)"""
        from bastion.gateway import ResponseCache

        self.home.mkdir(parents=True, exist_ok=True)
        return ResponseCache(path=self.home / "cache.db", ttl=ttl)

    def semantic_cache(self, embedder: Any, **options: Any) -> Any:
        """A semantic cache for the project's `Gateway(semantic_cache=...)` (`embedder`: a
        `bastion.memory.Embedder`; `options`: `threshold=`, `ttl=`): entries in the database
        (pgvector, per tenant) when scaled out, shared by every server; in this process's
        memory when embedded."""
        from bastion.gateway import SemanticCache

        if self.database_url:
            from bastion.gateway import PostgresSemanticStore

            return SemanticCache(embedder, store=PostgresSemanticStore(self.database_url), **options)
        return SemanticCache(embedder, **options)

    def eval_datasets(self) -> Any:
        """The eval dataset store behind `/v1/evals/datasets`: JSONL files under `<home>/evals/`
        (runnable with `bastion eval`), or the database, so every server sees the same datasets."""
        if self.database_url:
            from bastion.evals import PostgresDatasetStore

            return PostgresDatasetStore(self.database_url)
        from bastion.evals import JsonlDatasetStore

        return JsonlDatasetStore(self.home / "evals")


@dataclass(slots=True)
class Project:
    agents: dict[str, Any]  # name -> Agent, compiled Graph or Runnable
    memory: Any = None  # a MemoryStore, shown in the UI's memory browser
    gateway: Any = None  # a Gateway, served as the OpenAI-compatible proxy under /openai
    webhooks: list[Webhook] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)
    api_keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (tenant, role)
    on_close: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)

    def runnables(self) -> dict[str, Runnable]:
        """What the runtime drives: a compiled graph gets `GraphRunnable` (wrap it yourself to map
        its input or output), an `Agent` gets `AgentRunnable`, a `Runnable` is used as it is."""
        from bastion.graph import CompiledGraph

        out: dict[str, Runnable] = {}
        for name, agent in self.agents.items():
            if isinstance(agent, CompiledGraph):
                out[name] = GraphRunnable(agent, name=name)
            elif hasattr(agent, "invoke"):
                out[name] = agent
            else:
                out[name] = AgentRunnable(agent)
        return out

    async def close(self) -> None:
        for fn in self.on_close:
            out = fn()
            if inspect.isawaitable(out):
                await out


def _import(spec: str) -> Any:
    if ":" not in spec:
        raise ConfigError(f"project spec {spec!r} must look like 'package.module:attr' or 'path/file.py:attr'")
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.exists():
            raise ConfigError(f"project file {path} does not exist")
        module_name = f"bastion_project_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"cannot import {path}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        sys.path.insert(0, str(path.parent))
        loader_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{target} has no attribute {attr!r}") from None


async def load_project(spec: str, env: ProjectEnv) -> Project:
    obj = _import(spec)
    if callable(obj) and not isinstance(obj, Project):
        obj = obj(env) if inspect.signature(obj).parameters else obj()
        if inspect.isawaitable(obj):
            obj = await obj
    if not isinstance(obj, Project):
        raise ConfigError(f"{spec} must be a bastion.server.Project or a function returning one, got {type(obj)}")
    return obj


def build_runtime(project: Project, env: ProjectEnv, *, workers: int = 1, **kw: Any) -> Runtime:
    agents = project.runnables()
    if env.database_url:
        return Runtime.postgres(env.database_url, agents, workers=workers, **kw)
    env.home.mkdir(parents=True, exist_ok=True)
    return Runtime.embedded(env.home / "runs.db", agents, workers=workers, **kw)
