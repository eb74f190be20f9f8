"""The service's one model worker and the order of its work: on-demand requests first, runs in bounded chunks.

Every model call of the process runs on one thread (the model is never used twice at once). What
it runs next comes from two lanes, in the shape of Triton's priority levels and Ray Serve's
bounded queues:

- **interactive**: on-demand requests. Their series are gathered into calls (micro-batching: while
  the model is idle, a request waits at most ``max_wait_s`` from its arrival for others to join;
  a call carries at most ``max_series``, a larger single request goes alone). The lane holds at
  most ``max_queued`` series: past that a request is refused at once (``Overloaded``). A request
  not started by its deadline is refused, not computed; one whose caller cancelled it (the client
  went away) is dropped before the call.
- **bulk**: runs' batches. A batch is a generator that computes one chunk of bounded cost per
  step (the caller cuts it); between two steps waiting interactive work goes first, one call of it,
  so an on-demand request waits behind at most one chunk (and the on-demand calls queued ahead of
  it), and a run still advances one chunk per on-demand call however busy the interactive lane is.
  Batches are served in order of arrival.

A batch that may use the GPU first takes the GPU lock through a ``GpuLease``, waiting on a
thread of its own, so that the wait holds no on-demand request back; its chunks then run with the
lock held (``lock="held"``), and so does interactive work while it is held. Otherwise interactive
work only tries the lock once (``lock="try"``) and runs on the CPU when it is busy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from forecasting_pipeline.forecasting.device import GpuLease, LockMode

logger = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")

INTERACTIVE, BULK = "interactive", "bulk"


class Overloaded(Exception):
    """The service cannot take or start this work now; ``reason`` is one of the ``REFUSALS`` keys."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


REFUSALS = {
    "queue_full": "the on-demand queue is full",
    "deadline": "the request was not started within its deadline",
    "shutting_down": "the service is shutting down",
}


class SchedulerMetrics(Protocol):
    def waited(self, lane: str, seconds: float) -> None: ...

    def rejected(self, reason: str) -> None: ...


class _NoMetrics:
    def waited(self, lane: str, seconds: float) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass


@dataclass
class BulkContext:
    """What a bulk batch's generator reads before each chunk: how to take the GPU lock, and the lease's wait."""

    lock: LockMode = "wait"
    lock_wait_seconds: float | None = None
    # Why the batch's chunks may not get the GPU: its lease timed out (None when held or not needed).
    lock_note: str | None = None


@dataclass
class _Request(Generic[T]):
    items: Sequence[T]
    future: concurrent.futures.Future
    arrived: float
    deadline: float


@dataclass
class _Batch:
    work: Callable[[BulkContext], Generator[None, None, object]]
    future: concurrent.futures.Future
    arrived: float
    lease: GpuLease | None = None
    # None: not asked yet; "waiting": a thread waits for the lock; "held" / "busy": decided.
    lease_state: str | None = None
    context: BulkContext = field(default_factory=BulkContext)
    steps: Generator[None, None, object] | None = None
    cancelled: bool = False


class ModelScheduler(Generic[T, A]):
    """Owns the model worker thread; ``answer(items, lock) -> answers`` serves the interactive lane.

    ``lease`` makes a ``GpuLease`` for each bulk batch (None: no GPU lock applies).
    """

    def __init__(
        self,
        answer: Callable[[list[T], LockMode], list[A]],
        max_wait_s: float,
        max_series: int,
        max_queued: int,
        lease: Callable[[], GpuLease | None] | None = None,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        if max_wait_s < 0 or min(max_series, max_queued) < 1:
            raise ValueError(f"max_wait_s must be >= 0, max_series and max_queued >= 1; got {max_wait_s}, {max_series}, {max_queued}")
        self._answer = answer
        self.max_wait_s, self.max_series, self.max_queued = max_wait_s, max_series, max_queued
        self._lease = lease or (lambda: None)
        self.metrics = metrics or _NoMetrics()
        self._cond = threading.Condition()
        self._interactive: deque[_Request] = deque()
        self._bulk: deque[_Batch] = deque()
        self._stopping = False
        # The head batch's next chunk goes before any more on-demand work (set after an on-demand call).
        self._chunk_due = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="model-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Refuse everything queued (``shutting_down``), let the chunk or call in progress finish, and end the worker."""
        with self._cond:
            self._stopping = True
            queued, self._interactive = list(self._interactive), deque()
            waiting = [batch for batch in self._bulk if batch.steps is None]
            for batch in self._bulk:
                batch.cancelled = True
            self._cond.notify_all()
        for request in queued:
            self._refuse(request.future, "shutting_down")
        for batch in waiting:  # a batch in progress is ended by the worker, after its chunk
            self._end_batch(batch, Overloaded("shutting_down", REFUSALS["shutting_down"]))
        if self._thread is not None:
            self._thread.join(timeout_s)

    def depth(self, lane: str) -> int:
        """Series queued in the interactive lane, or batches in the bulk lane (the one in progress included)."""
        with self._cond:
            if lane == INTERACTIVE:
                return sum(len(r.items) for r in self._interactive)
            return len(self._bulk)

    # ------------------------------------------------------------------ submitting

    def submit(self, items: Sequence[T], deadline_s: float) -> concurrent.futures.Future:
        """Queue an on-demand request; its future gets the answers in order. Overloaded when the lane is full."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        now = time.monotonic()
        with self._cond:
            if self._stopping:
                raise self._refused("shutting_down")
            queued = sum(len(r.items) for r in self._interactive)
            if queued and queued + len(items) > self.max_queued:
                raise self._refused("queue_full")
            self._interactive.append(_Request(items, future, now, now + deadline_s))
            self._cond.notify_all()
        return future

    async def interactive(self, items: Sequence[T], deadline_s: float) -> list[A]:
        """Answers for ``items`` from the model; Overloaded past the queue bound or the deadline.

        Cancelling the awaiting task (the client went away) drops the request if it has not started.
        """
        future = self.submit(items, deadline_s)
        waiting = asyncio.wrap_future(future)
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), deadline_s)
        except TimeoutError:
            if future.cancel():  # still queued: it will not be computed
                raise self._refused("deadline") from None
            return await waiting  # started in time: its answer is on the way
        except asyncio.CancelledError:
            if future.cancel():
                self.metrics.rejected("client_gone")
            raise

    def submit_bulk(self, work: Callable[[BulkContext], Generator[None, None, R]]) -> concurrent.futures.Future:
        """Queue a run's batch: ``work(context)`` is a generator that computes one chunk per step and returns the result.

        Cancel it with ``cancel_bulk(future)``: the chunks not yet computed are dropped.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise self._refused("shutting_down")
            self._bulk.append(_Batch(work, future, time.monotonic()))
            self._cond.notify_all()
        return future

    def cancel_bulk(self, future: concurrent.futures.Future) -> None:
        with self._cond:
            for batch in self._bulk:
                if batch.future is future and not batch.cancelled:
                    batch.cancelled = True
                    self.metrics.rejected("client_gone")
            self._cond.notify_all()

    # ------------------------------------------------------------------ the worker

    def _loop(self) -> None:
        while True:
            with self._cond:
                job = self._next_job()
            if job is None:
                return
            job()

    def _next_job(self) -> Callable[[], None] | None:
        """The next thing to run (under the condition's lock); None once stopped. Waits while there is nothing."""
        while True:
            if self._stopping:
                unfinished = [batch for batch in self._bulk if batch.steps is not None]
                if unfinished:
                    return lambda: self._end_batch(unfinished[0], Overloaded("shutting_down", REFUSALS["shutting_down"]))
                return None
            self._drop_cancelled_batches()
            head = self._bulk[0] if self._bulk else None
            if head is not None and head.lease_state is None:
                self._ask_lease(head)
            bulk_ready = head is not None and head.lease_state not in (None, "waiting")
            # One on-demand call between two chunks: a steady stream of on-demand work (clients that
            # send again as soon as they are answered or refused) must not starve a run.
            self._chunk_due = self._chunk_due and bulk_ready
            if self._chunk_due:
                self._chunk_due = False
                return lambda: self._step(head)
            timeout = None
            if self._interactive:
                now = time.monotonic()
                due = self._interactive[0].arrived + self.max_wait_s
                if bulk_ready or now >= due or self._queued() >= self.max_series:
                    taken = self._take()
                    if taken:
                        self._chunk_due = bulk_ready
                        return lambda: self._run_interactive(taken)
                    continue
                timeout = due - now
            elif bulk_ready:
                return lambda: self._step(head)
            self._cond.wait(timeout)

    def _queued(self) -> int:
        return sum(len(r.items) for r in self._interactive)

    def _take(self) -> list[_Request]:
        """Requests for one call, oldest first; expired ones refused and cancelled ones dropped on the way."""
        taken, size, now = [], 0, time.monotonic()
        while self._interactive:
            request = self._interactive[0]
            if taken and size + len(request.items) > self.max_series:
                break
            self._interactive.popleft()
            if not request.future.set_running_or_notify_cancel():
                continue  # cancelled by its caller (gone, or past its deadline), which counted it
            if now > request.deadline:
                self.metrics.rejected("deadline")
                request.future.set_exception(Overloaded("deadline", REFUSALS["deadline"]))
                continue
            self.metrics.waited(INTERACTIVE, now - request.arrived)
            taken.append(request)
            size += len(request.items)
        return taken

    def _run_interactive(self, taken: list[_Request]) -> None:
        items = [item for request in taken for item in request.items]
        try:
            answers = self._answer(items, self._interactive_lock())
        except Exception as exc:  # noqa: BLE001 - every request of the call gets the failure; the worker goes on
            for request in taken:
                request.future.set_exception(exc)
            return
        start = 0
        for request in taken:
            request.future.set_result(answers[start : start + len(request.items)])
            start += len(request.items)

    def _interactive_lock(self) -> LockMode:
        with self._cond:
            head = self._bulk[0] if self._bulk else None
            return "held" if head is not None and head.lease_state == "held" else "try"

    def _ask_lease(self, batch: _Batch) -> None:
        lease = batch.lease = self._lease()
        if lease is None or not lease.needed:
            batch.lease_state = "none"
            return
        batch.lease_state = "waiting"
        threading.Thread(target=self._wait_for_lease, args=(batch, lease), name="gpu-lease", daemon=True).start()

    def _wait_for_lease(self, batch: _Batch, lease: GpuLease) -> None:
        held = lease.acquire()
        with self._cond:
            abandoned = batch.cancelled or self._stopping
            # An abandoned batch's lease is given back here, never by the worker too.
            batch.lease_state = "released" if abandoned else ("held" if held else "busy")
            note = None if held else f"GPU lock {lease.key} busy for {lease.settings.lock_timeout_s:g}s"
            batch.context = BulkContext("held" if held else "try", lease.wait_seconds, note)
            self._cond.notify_all()
        if abandoned:
            lease.release()

    def _step(self, batch: _Batch) -> None:
        """One chunk of the head batch; at its end, the batch's result or error, and the lease given back."""
        with self._cond:
            if batch.cancelled or batch.future.done():
                starting = False
            elif batch.steps is None:
                starting = batch.future.set_running_or_notify_cancel()
                if starting:
                    self.metrics.waited(BULK, time.monotonic() - batch.arrived)
                    batch.steps = batch.work(batch.context)
            else:
                starting = True
        if not starting:
            self._end_batch(batch, None)
            return
        try:
            next(batch.steps)
        except StopIteration as done:
            self._end_batch(batch, None, done.value)
        except Exception as exc:  # noqa: BLE001 - the batch's client gets the failure; the worker goes on
            self._end_batch(batch, exc)

    def _end_batch(self, batch: _Batch, error: BaseException | None, result: object = None) -> None:
        with self._cond:
            if batch in self._bulk:
                self._bulk.remove(batch)
        if batch.steps is not None:
            batch.steps.close()
        if batch.lease is not None and batch.lease_state == "held":
            try:
                batch.lease.release()
            except Exception:  # noqa: BLE001 - a lock connection already gone has released the lock
                logger.exception("could not give the GPU lease back")
        with self._cond:
            future = batch.future
            if future.done() or (not future.running() and not future.set_running_or_notify_cancel()):
                return
            if batch.cancelled and error is None:
                error = Overloaded("client_gone", "the run's client went away")
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def _drop_cancelled_batches(self) -> None:
        """Cancelled batches that never started leave the lane (one still waiting for its lease leaves when it gets it)."""
        for batch in [b for b in self._bulk if b.cancelled and b.steps is None and b.lease_state != "waiting"]:
            self._end_batch(batch, None)

    def _refused(self, reason: str) -> Overloaded:
        self.metrics.rejected(reason)
        return Overloaded(reason, REFUSALS[reason])

    def _refuse(self, future: concurrent.futures.Future, reason: str) -> None:
        if future.set_running_or_notify_cancel():
            self.metrics.rejected(reason)
            future.set_exception(Overloaded(reason, REFUSALS[reason]))
