"""Where eval datasets are kept per tenant: `DatasetStore`, one small protocol with two
backends that pass one conformance suite (tests/evals/test_dataset_store_conformance.py):

- `JsonlDatasetStore`: one JSONL file per dataset under `<root>/<tenant hash>/` (the embedded
  default, `<home>/evals/`); the files are what `bastion eval` runs.
- `PostgresDatasetStore` (`_dataset_store_pg.py`): rows in the deployment's database, so every
  server sharing it sees the same datasets.

A dataset is a named, ordered list of cases owned by one tenant; case ids are unique within a
dataset. This module stores cases; building them (from code, files or traces) is `Dataset`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bastion.errors import UserError
from bastion.evals._dataset import Dataset
from bastion.evals._types import Case

if TYPE_CHECKING:
    from bastion.tracing import SpanStore

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_dataset_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UserError(f"dataset name {name!r} is invalid: use 1-64 letters, digits, '-' or '_'")
    return name


def check_new_cases(existing: Iterable[str], cases: Sequence[Case], name: str) -> None:
    """Raise `UserError` if a case id is already in the dataset or given twice."""
    seen = set(existing)
    for case in cases:
        if case.id in seen:
            raise UserError(f"dataset {name!r} already has a case with id {case.id!r}; give the case another id")
        seen.add(case.id)


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    name: str
    cases: int


class DatasetStore(Protocol):
    """A tenant's eval datasets. Names are 1-64 letters, digits, '-' or '_'."""

    async def append(self, tenant: str, name: str, cases: Sequence[Case] = ()) -> None:
        """Add `cases` (in order) to the dataset, creating it if needed. A case id already in the
        dataset, or given twice, raises `UserError` and nothing is added."""
        ...

    async def load(self, tenant: str, name: str) -> Dataset | None:
        """The dataset with its cases in the order they were added; None if the tenant has none by that name."""
        ...

    async def list(self, tenant: str) -> list[DatasetInfo]:
        """The tenant's datasets, by name."""
        ...

    async def delete(self, tenant: str, name: str) -> bool:
        """Remove the dataset; False if there was none."""
        ...

    async def aclose(self) -> None: ...


class JsonlDatasetStore:
    """One JSONL file per dataset: `<root>/<sha256(tenant)[:16]>/<name>.jsonl`. Appends rewrite
    the file atomically (a crash never leaves half a dataset) under a lock on the tenant's folder
    (`flock` on `.lock`, where the OS has it), so stores and processes on one host can share it;
    servers on several hosts share datasets through PostgreSQL."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self, folder: Path) -> Generator[None]:
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                import fcntl
            except ImportError:  # Windows: one process at a time
                yield
                return
            with (folder / ".lock").open("a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)

    def folder(self, tenant: str) -> Path:
        return self.root / hashlib.sha256(tenant.encode()).hexdigest()[:16]

    def path(self, tenant: str, name: str) -> Path:
        return self.folder(tenant) / f"{check_dataset_name(name)}.jsonl"

    async def append(self, tenant: str, name: str, cases: Sequence[Case] = ()) -> None:
        path = self.path(tenant, name)
        await asyncio.to_thread(self._append, path, name, list(cases))

    def _append(self, path: Path, name: str, cases: list[Case]) -> None:
        with self._locked(path.parent):
            dataset = Dataset.from_jsonl(path, name) if path.exists() else Dataset(name)
            check_new_cases((c.id for c in dataset.cases), cases, name)
            dataset.cases.extend(cases)
            dataset.to_jsonl(path)

    async def load(self, tenant: str, name: str) -> Dataset | None:
        path = self.path(tenant, name)
        return await asyncio.to_thread(lambda: Dataset.from_jsonl(path, name) if path.exists() else None)

    async def list(self, tenant: str) -> list[DatasetInfo]:
        folder = self.folder(tenant)

        def scan() -> list[DatasetInfo]:
            files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
            return [DatasetInfo(f.stem, len(Dataset.from_jsonl(f))) for f in files]

        return await asyncio.to_thread(scan)

    async def delete(self, tenant: str, name: str) -> bool:
        path = self.path(tenant, name)

        def remove() -> bool:
            with self._locked(path.parent):
                if not path.exists():
                    return False
                path.unlink()
                return True

        return await asyncio.to_thread(remove)

    async def aclose(self) -> None:
        return None


async def promote_traces(
    datasets: DatasetStore, tenant: str, name: str, traces: SpanStore, **from_traces: Any
) -> Dataset:
    """Promote the tenant's stored runs to cases of the dataset `name` (see `Dataset.from_traces`
    for the options: `trace_ids=`, `failed_only=`, `expected=`, `golden=` ...) and return the
    promoted cases. Only traces whose spans all belong to `tenant` are read."""
    check_dataset_name(name)
    trace_ids = from_traces.pop("trace_ids", None)
    if trace_ids is not None:
        from bastion.tracing import semconv as sc

        for trace_id in trace_ids:
            tree = await asyncio.to_thread(traces.get_trace, trace_id)
            owners = set() if tree is None else {s.attributes.get(sc.BASTION_TENANT_ID) for s in tree.spans} - {None}
            if owners != {tenant}:
                raise UserError(f"trace {trace_id!r} is not a trace of tenant {tenant!r}")
        from_traces["trace_ids"] = trace_ids
    else:
        from_traces["tenant"] = tenant
    promoted = await asyncio.to_thread(lambda: Dataset.from_traces(traces, name, **from_traces))
    await datasets.append(tenant, name, promoted.cases)
    return promoted


def case_json(case: Case) -> str:
    return json.dumps(case.to_dict(), ensure_ascii=False, default=str)


__all__ = [
    "DatasetInfo",
    "DatasetStore",
    "JsonlDatasetStore",
    "case_json",
    "check_dataset_name",
    "check_new_cases",
    "promote_traces",
]
