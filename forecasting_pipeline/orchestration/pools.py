"""Dagster concurrency pools. Every asset that runs a model on the GPU is in the ``gpu`` pool."""

from __future__ import annotations

import dagster as dg

GPU_POOL = "gpu"
# One GPU, where the instance says nothing: hourly runs, daily runs and backfills (UI ones
# included) never share it.
GPU_POOL_LIMIT = 1


def ensure_gpu_pool_limit(instance: dg.DagsterInstance) -> tuple[int, str]:
    """The ``gpu`` pool's limit on ``instance`` and where it comes from, setting GPU_POOL_LIMIT only when none is set.

    A limit the deployment chose is never lowered: an explicit one (``dagster instance concurrency
    set``) stays, and so does the instance's default pool limit (``concurrency.pools.default_limit``
    in dagster.yaml, ``concurrency.pools.defaultLimit`` in the Helm chart), which also follows later
    changes of that default. Without either, the pool would be unlimited, so it gets one slot.
    """
    explicit = {pool.name: pool for pool in instance.event_log_storage.get_pool_limits()}.get(GPU_POOL)
    if explicit is not None and not explicit.from_default:
        return explicit.limit, "set on the instance"
    default = instance.global_op_concurrency_default_limit
    if default is not None:
        return default, "the instance's default pool limit"
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, GPU_POOL_LIMIT)
    return GPU_POOL_LIMIT, "set now: the instance had no limit for it"
