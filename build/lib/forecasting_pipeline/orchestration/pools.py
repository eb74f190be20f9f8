"""Dagster concurrency pools. Every asset that runs a model on the GPU is in the ``gpu`` pool."""

GPU_POOL = "gpu"
# One GPU: hourly runs, daily runs and backfills (UI ones included) never share it.
GPU_POOL_LIMIT = 1
