"""Micro-batching: concurrent requests' series gathered into one model call, on the process's one model worker.

A request's series wait at most ``max_wait_s`` from their arrival for others to join, and a call
carries at most ``max_series`` (a single request larger than that still goes as one call). While
the model is busy, arrivals queue; the next call takes them at once, so under load calls fill up
without waiting. Every model call of the process, HTTP batches and Dagster runs' socket batches
alike, runs on one worker thread (``ModelWorker``): the model is never used twice at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
A = TypeVar("A")


class ModelWorker:
    """One thread that runs every model call of the process, one at a time."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run ``fn`` on the worker and wait for it (from any thread but the event loop's)."""
        return self._executor.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run ``fn`` on the worker without blocking the event loop."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args, **kwargs))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Job(Generic[T, A]):
    items: Sequence[T]
    future: asyncio.Future
    arrived: float = field(default=0.0)


class MicroBatcher(Generic[T, A]):
    """Gathers submitted items into calls of ``answer(items) -> answers`` (same length, same order)."""

    def __init__(self, answer: Callable[[list[T]], Awaitable[list[A]]], max_wait_s: float, max_series: int) -> None:
        self._answer = answer
        self.max_wait_s = max_wait_s
        self.max_series = max_series
        self._pending: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the service is shutting down"))

    async def submit(self, items: Sequence[T]) -> list[A]:
        """Answers for ``items``, in order, from the call they were batched into."""
        loop = asyncio.get_running_loop()
        job = _Job(items, loop.create_future(), loop.time())
        self._pending.append(job)
        self._arrived.set()
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._queued() < self.max_series and (remaining := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            await self._dispatch(self._take())

    def _queued(self) -> int:
        return sum(len(job.items) for job in self._pending)

    def _take(self) -> list[_Job]:
        taken, size = [self._pending.popleft()], 0
        size = len(taken[0].items)
        while self._pending and size + len(self._pending[0].items) <= self.max_series:
            size += len(self._pending[0].items)
            taken.append(self._pending.popleft())
        return taken

    async def _dispatch(self, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        try:
            answers = await self._answer(items)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure, the loop goes on
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            if not job.future.done():  # a client that went away has cancelled its future
                job.future.set_result(answers[start : start + len(job.items)])
            start += len(job.items)
