"""The model scheduler alone: which work goes first, what is refused or dropped, and how it stops.

The work is plain Python that records what ran and, where a test needs the worker busy, blocks on
an event the test sets. The GPU lock is the real PostgreSQL advisory lock; only the CUDA runtime
is a stand-in (``FakeCuda``), since this machine has no GPU.
"""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg
import pytest

from forecasting_pipeline.forecasting.device import GPU_LOCK_KEY, GpuLease, GpuSettings
from forecasting_pipeline.serving.api.scheduler import INTERACTIVE, BulkContext, ModelScheduler, Overloaded
from forecasting_pipeline_tests.test_gpu import FakeCuda

WAIT = 10  # seconds any single step may take here before a test fails


class Recorder:
    """Interactive calls and bulk chunks in the order the worker ran them; counts refusals like the service's metrics."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.ran: list[tuple] = []
        self.fail_with = fail_with
        self.rejections: list[str] = []
        self.waits: list[tuple[str, float]] = []

    def answer(self, items: list, lock: str) -> list:
        self.ran.append(("interactive", tuple(items), lock))
        if self.fail_with is not None:
            raise self.fail_with
        return [f"answer {item}" for item in items]

    def waited(self, lane: str, seconds: float) -> None:
        self.waits.append((lane, seconds))

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)


def bulk(recorder: Recorder, name: str, chunks: int, gates: list[threading.Event] | None = None, started=None):
    """A run's batch of ``chunks`` chunks; chunk i waits for ``gates[i]`` when given, and sets ``started[i]``."""

    def work(context: BulkContext):
        for i in range(chunks):
            if started is not None:
                started[i].set()
            if gates is not None:
                assert gates[i].wait(WAIT)
            recorder.ran.append(("bulk", name, i, context.lock))
            if i < chunks - 1:
                yield
        return f"{name} done"

    return work


def events(n: int) -> list[threading.Event]:
    return [threading.Event() for _ in range(n)]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def scheduler(recorder):
    made = ModelScheduler(recorder.answer, max_wait_s=0.0, max_series=4, max_queued=8, metrics=recorder)
    made.start()
    yield made
    made.stop(WAIT)


def test_when_on_demand_work_arrives_during_a_run_then_it_goes_before_the_runs_next_chunk(scheduler, recorder):
    gates, started = events(3), events(3)
    batch = scheduler.submit_bulk(bulk(recorder, "run", 3, gates, started))
    assert started[0].wait(WAIT)

    answered = scheduler.submit(["AAPL"], deadline_s=WAIT)
    for gate in gates:
        gate.set()

    assert answered.result(WAIT) == ["answer AAPL"]
    assert batch.result(WAIT) == "run done"
    assert recorder.ran == [("bulk", "run", 0, "wait"), ("interactive", ("AAPL",), "try"),
                            ("bulk", "run", 1, "wait"), ("bulk", "run", 2, "wait")]


def test_when_on_demand_work_keeps_coming_then_the_run_still_advances_one_chunk_per_on_demand_call(scheduler, recorder):
    gates, started = events(3), events(3)
    batch = scheduler.submit_bulk(bulk(recorder, "run", 3, gates, started))
    assert started[0].wait(WAIT)

    # Two full calls' worth (max_series 4) queued at once, as clients that send again at once would keep it.
    futures = [scheduler.submit(items, WAIT) for items in (["A", "B", "C", "D"], ["E", "F", "G", "H"])]
    for gate in gates:
        gate.set()

    assert [f.result(WAIT) for f in futures] == [[f"answer {x}" for x in "ABCD"], [f"answer {x}" for x in "EFGH"]]
    assert batch.result(WAIT) == "run done"
    assert [(entry[0], entry[1] if entry[0] == "interactive" else entry[2]) for entry in recorder.ran] == [
        ("bulk", 0), ("interactive", tuple("ABCD")), ("bulk", 1), ("interactive", tuple("EFGH")), ("bulk", 2)]


def test_when_requests_queue_while_the_model_is_busy_then_the_next_call_carries_them_together(scheduler, recorder):
    gates, started = events(1), events(1)
    scheduler.submit_bulk(bulk(recorder, "run", 1, gates, started))
    assert started[0].wait(WAIT)

    futures = [scheduler.submit(items, WAIT) for items in (["A"], ["B", "C"], ["D"], ["E"])]
    gates[0].set()

    assert [f.result(WAIT) for f in futures] == [["answer A"], ["answer B", "answer C"], ["answer D"], ["answer E"]]
    # At most max_series (4) series per call: A, B, C, D in one call, E in the next.
    assert [entry[1] for entry in recorder.ran[1:]] == [("A", "B", "C", "D"), ("E",)]


def test_when_the_model_is_idle_then_a_request_waits_at_most_the_batch_window_for_company(recorder):
    patient = ModelScheduler(recorder.answer, max_wait_s=0.3, max_series=4, max_queued=8, metrics=recorder)
    patient.start()
    try:
        first = patient.submit(["A"], WAIT)
        second = patient.submit(["B"], WAIT)
        assert first.result(WAIT) == ["answer A"] and second.result(WAIT) == ["answer B"]
    finally:
        patient.stop(WAIT)

    assert [entry[1] for entry in recorder.ran] == [("A", "B")]


def test_when_a_request_is_not_started_by_its_deadline_then_it_is_refused_and_never_computed(scheduler, recorder):
    gates, started = events(1), events(1)
    scheduler.submit_bulk(bulk(recorder, "run", 1, gates, started))
    assert started[0].wait(WAIT)

    late = scheduler.submit(["LATE"], deadline_s=0.05)
    time.sleep(0.1)
    gates[0].set()

    with pytest.raises(Overloaded, match="not started within its deadline") as refused:
        late.result(WAIT)
    assert refused.value.reason == "deadline"
    assert scheduler.submit(["NEXT"], WAIT).result(WAIT) == ["answer NEXT"]
    assert [entry for entry in recorder.ran if entry[0] == "interactive"] == [("interactive", ("NEXT",), "try")]
    assert recorder.rejections == ["deadline"]


def test_when_an_awaited_request_passes_its_deadline_then_the_caller_gets_overloaded_at_the_deadline(scheduler, recorder):
    gates, started = events(1), events(1)
    scheduler.submit_bulk(bulk(recorder, "run", 1, gates, started))
    assert started[0].wait(WAIT)

    async def ask():
        begun = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            await scheduler.interactive(["LATE"], deadline_s=0.2)
        return refused.value.reason, time.monotonic() - begun

    reason, waited = asyncio.run(ask())
    gates[0].set()

    assert reason == "deadline"
    assert 0.2 <= waited < 2.0
    assert scheduler.submit(["NEXT"], WAIT).result(WAIT) == ["answer NEXT"]
    assert ("interactive", ("LATE",), "try") not in recorder.ran


def test_when_the_queue_is_full_then_a_request_is_refused_at_once(recorder):
    small = ModelScheduler(recorder.answer, max_wait_s=0.0, max_series=4, max_queued=2, metrics=recorder)
    small.start()
    gates, started = events(1), events(1)
    try:
        small.submit_bulk(bulk(recorder, "run", 1, gates, started))
        assert started[0].wait(WAIT)
        queued = small.submit(["A", "B"], WAIT)

        with pytest.raises(Overloaded, match="queue is full") as refused:
            small.submit(["C"], WAIT)
        gates[0].set()

        assert refused.value.reason == "queue_full"
        assert queued.result(WAIT) == ["answer A", "answer B"]
        assert recorder.rejections == ["queue_full"]
    finally:
        gates[0].set()
        small.stop(WAIT)


def test_when_a_caller_goes_away_then_its_queued_request_is_dropped_before_the_model(scheduler, recorder):
    gates, started = events(1), events(1)
    scheduler.submit_bulk(bulk(recorder, "run", 1, gates, started))
    assert started[0].wait(WAIT)

    async def ask_and_leave():
        asking = asyncio.ensure_future(scheduler.interactive(["GONE"], deadline_s=WAIT))
        await asyncio.sleep(0.05)
        asking.cancel()  # what the service does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await asking

    asyncio.run(ask_and_leave())
    kept = scheduler.submit(["KEPT"], WAIT)
    gates[0].set()

    assert kept.result(WAIT) == ["answer KEPT"]
    assert [entry[1] for entry in recorder.ran if entry[0] == "interactive"] == [("KEPT",)]
    assert recorder.rejections == ["client_gone"]


def test_when_a_runs_client_goes_away_then_its_remaining_chunks_are_not_computed(scheduler, recorder):
    gates, started = events(3), events(3)
    batch = scheduler.submit_bulk(bulk(recorder, "run", 3, gates, started))
    assert started[0].wait(WAIT)

    scheduler.cancel_bulk(batch)
    gates[0].set()

    with pytest.raises(Overloaded, match="went away"):
        batch.result(WAIT)
    assert scheduler.submit(["NEXT"], WAIT).result(WAIT) == ["answer NEXT"]
    assert [entry[:3] for entry in recorder.ran if entry[0] == "bulk"] == [("bulk", "run", 0)]


def test_when_a_call_fails_then_every_request_in_it_gets_the_error_and_the_worker_goes_on():
    failing = Recorder(fail_with=RuntimeError("the model broke"))
    made = ModelScheduler(failing.answer, max_wait_s=0.0, max_series=8, max_queued=8, metrics=failing)
    made.start()
    gates, started = events(1), events(1)
    try:
        made.submit_bulk(bulk(failing, "run", 1, gates, started))
        assert started[0].wait(WAIT)
        futures = [made.submit([name], WAIT) for name in ("A", "B", "C")]
        gates[0].set()

        for future in futures:
            with pytest.raises(RuntimeError, match="the model broke"):
                future.result(WAIT)
        failing.fail_with = None
        assert made.submit(["D"], WAIT).result(WAIT) == ["answer D"]
        assert [entry[1] for entry in failing.ran if entry[0] == "interactive"] == [("A", "B", "C"), ("D",)]
    finally:
        gates[0].set()
        made.stop(WAIT)


def test_when_a_chunk_fails_then_its_run_gets_the_error_and_the_next_run_is_served(scheduler, recorder):
    def broken(_context):
        yield
        raise ValueError("chunk 2 of the batch is malformed")

    first = scheduler.submit_bulk(broken)
    second = scheduler.submit_bulk(bulk(recorder, "next run", 1))

    with pytest.raises(ValueError, match="chunk 2 of the batch is malformed"):
        first.result(WAIT)
    assert second.result(WAIT) == "next run done"


def test_when_the_scheduler_stops_with_work_queued_then_queued_work_is_refused_and_the_chunk_in_progress_ends(recorder):
    made = ModelScheduler(recorder.answer, max_wait_s=0.0, max_series=4, max_queued=8, metrics=recorder)
    made.start()
    gates, started = events(2), events(2)
    running = made.submit_bulk(bulk(recorder, "running", 2, gates, started))
    assert started[0].wait(WAIT)
    queued_request = made.submit(["A"], WAIT)
    queued_batch = made.submit_bulk(bulk(recorder, "queued", 1))

    stopping = threading.Thread(target=made.stop, args=(WAIT,))
    stopping.start()
    for future in (queued_request, queued_batch):
        with pytest.raises(Overloaded, match="shutting down"):
            future.result(WAIT)
    gates[0].set()
    gates[1].set()
    stopping.join(WAIT)

    with pytest.raises(Overloaded, match="shutting down"):
        running.result(WAIT)
    assert recorder.ran == [("bulk", "running", 0, "wait")]
    with pytest.raises(Overloaded, match="shutting down"):
        made.submit(["late"], WAIT)


@pytest.fixture
def kronos_holds_the_gpu(empty_database_url):
    """Another session (Kronos) holding the GPU lock in the test database."""
    with psycopg.connect(empty_database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (GPU_LOCK_KEY,))
        yield empty_database_url


def test_when_a_run_waits_for_the_gpu_lock_then_on_demand_work_runs_meanwhile_and_the_run_then_takes_the_cpu(
    kronos_holds_the_gpu, recorder
):
    settings = GpuSettings(device="auto", lock_timeout_s=1.5, lock_poll_s=0.1)
    made = ModelScheduler(recorder.answer, max_wait_s=0.0, max_series=4, max_queued=8, metrics=recorder,
                          lease=lambda: GpuLease(settings, kronos_holds_the_gpu, FakeCuda()))
    made.start()
    try:
        batch = made.submit_bulk(bulk(recorder, "run", 2))
        time.sleep(0.2)  # the run's lease is now waiting for the lock
        begun = time.monotonic()
        assert made.submit(["AAPL"], WAIT).result(WAIT) == ["answer AAPL"]
        answered_in = time.monotonic() - begun
        assert batch.result(WAIT) == "run done"
    finally:
        made.stop(WAIT)

    assert answered_in < 1.0
    assert recorder.ran == [("interactive", ("AAPL",), "try"), ("bulk", "run", 0, "try"), ("bulk", "run", 1, "try")]
    assert [lane for lane, _ in recorder.waits] == [INTERACTIVE, "bulk"]
    assert recorder.waits[1][1] >= 1.5


def test_when_a_run_holds_the_gpu_lease_then_on_demand_work_between_its_chunks_uses_it_too(empty_database_url, recorder):
    settings = GpuSettings(device="auto", lock_timeout_s=5, lock_poll_s=0.1)
    leases: list[GpuLease] = []

    def lease():
        leases.append(GpuLease(settings, empty_database_url, FakeCuda()))
        return leases[-1]

    made = ModelScheduler(recorder.answer, max_wait_s=0.0, max_series=4, max_queued=8, metrics=recorder, lease=lease)
    made.start()
    gates, started = events(2), events(2)
    try:
        batch = made.submit_bulk(bulk(recorder, "run", 2, gates, started))
        assert started[0].wait(WAIT)
        asked = made.submit(["AAPL"], WAIT)
        gates[0].set()
        gates[1].set()
        assert asked.result(WAIT) == ["answer AAPL"] and batch.result(WAIT) == "run done"
    finally:
        made.stop(WAIT)

    assert recorder.ran == [("bulk", "run", 0, "held"), ("interactive", ("AAPL",), "held"), ("bulk", "run", 1, "held")]
    # Given back with the batch: another session can take it now.
    with psycopg.connect(empty_database_url, autocommit=True) as other:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (GPU_LOCK_KEY,)).fetchone()[0]

