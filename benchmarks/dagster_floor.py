"""The least a run through Dagster's CLI costs on this machine: one asset that does nothing.

``benchmarks/run.py`` materialises it with the same CLI, executor and instance as the pipeline,
so that the pipeline's fixed cost can be split into Dagster's own and the project's.
"""

import dagster as dg


@dg.asset
def noop() -> None:
    return None


defs = dg.Definitions(assets=[noop], executor=dg.in_process_executor)
