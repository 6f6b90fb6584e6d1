"""Embedding off the hot path: writes hand their texts to a background batcher, which embeds
them in batches and hands the vectors to the store's sink. A write is acknowledged before its
embedding exists; `flush()` waits for everything submitted so far."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from bastion.memory._embedders import Embedder

Sink = Callable[[list[tuple[Hashable, str]], list[list[float]]], Awaitable[None]]


@dataclass(slots=True)
class _Stats:
    submitted: int = 0
    done: int = 0


class EmbeddingBatcher:
    """Collects (key, text) pairs; a background task embeds up to `batch_size` at a time,
    waiting at most `max_delay` seconds for a batch to fill, and calls `sink(pairs, vectors)`.

    A failed batch is not lost silently: its items stay unembedded (still full-text
    searchable) and the error is raised from the next `flush()`."""

    def __init__(self, embedder: Embedder, sink: Sink, *, batch_size: int = 64, max_delay: float = 0.05) -> None:
        self._embedder = embedder
        self._sink = sink
        self._batch_size = batch_size
        self._max_delay = max_delay
        self._pending: list[tuple[Hashable, str]] = []
        self._stats = _Stats()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._flushing = 0
        self._closed = False

    @property
    def backlog(self) -> int:
        return self._stats.submitted - self._stats.done

    def submit(self, key: Hashable, text: str) -> None:
        if self._closed:
            raise RuntimeError("the embedding batcher is closed")
        self._pending.append((key, text))
        self._stats.submitted += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="bastion-embed-batcher")
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    async def _run(self) -> None:
        ahead: tuple[list[tuple[Hashable, str]], asyncio.Task[list[list[float]]]] | None = None
        try:
            while True:
                if ahead is None:
                    batch = await self._next_batch()
                    if not batch:
                        continue
                    embedding = self._embed(batch)
                else:
                    (batch, embedding), ahead = ahead, None
                try:
                    vectors = await embedding
                    if self._pending:
                        # Embed the next batch while this one's vectors are written (the sink
                        # runs on the event loop, the embedder in a thread).
                        following = self._pending[: self._batch_size]
                        del self._pending[: len(following)]
                        ahead = (following, self._embed(following))
                    await self._sink(batch, vectors)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self._error = e
                async with self._progress:
                    self._stats.done += len(batch)
                    self._progress.notify_all()
        finally:
            if ahead is not None:
                ahead[1].cancel()

    def _embed(self, batch: list[tuple[Hashable, str]]) -> asyncio.Task[list[list[float]]]:
        return asyncio.ensure_future(self._embedder.embed([text for _, text in batch]))

    async def _next_batch(self) -> list[tuple[Hashable, str]]:
        if not self._pending:
            self._wake.clear()
            await self._wake.wait()
        if len(self._pending) < self._batch_size and not self._flushing:
            # Let a batch fill up, but never hold a write back for longer than max_delay.
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._max_delay)
        batch = self._pending[: self._batch_size]
        del self._pending[: len(batch)]
        return batch

    async def flush(self) -> None:
        """Wait until every text submitted before this call is embedded and written."""
        target = self._stats.submitted
        if self._stats.done < target:
            self._flushing += 1
            self._wake.set()
            try:
                async with self._progress:
                    await self._progress.wait_for(lambda: self._stats.done >= target)
            finally:
                self._flushing -= 1
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None


__all__ = ["EmbeddingBatcher", "Sink"]
