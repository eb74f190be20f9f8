"""The bare model in a fresh process: import torch and chronos, load the checkpoint, one batched call as a run makes it.

This is what the model itself costs a scheduled job that starts from nothing, so the pipeline's
process-start-to-commit time can be held against it as well as against a warm call. Building
the inputs is timed apart and left out. Prints JSON on its last stdout line.

    python benchmarks/bare_process.py --checkpoint DIR --cadence 1d --window 2026-03-02 --context 1024 --horizon 10 \
        [--dtype float32|bfloat16]
    python benchmarks/bare_process.py --smoke
"""

from __future__ import annotations

import json
import sys
import time

from workload import script_arguments, window_inputs

from forecasting_pipeline.forecasting.model import use_attention
from forecasting_pipeline.forecasting.runner import Chronos2Runner, attention_for


def main() -> int:
    args, work = script_arguments(__doc__)
    started = time.perf_counter()
    _, inputs = window_inputs(work)
    data_s = time.perf_counter() - started

    started = time.perf_counter()
    import torch
    from chronos import Chronos2Pipeline

    imported = time.perf_counter()
    pipeline = Chronos2Pipeline.from_pretrained(args.checkpoint, device_map=args.device, dtype=getattr(torch, args.dtype))
    loaded = time.perf_counter()
    # As a run calls it on this device: its series per pass and its attention kernel.
    use_attention(pipeline, attention_for(args.device))
    pipeline.predict_quantiles(
        inputs, prediction_length=work.horizon, quantile_levels=[0.1, 0.5, 0.9], context_length=work.context_length,
        batch_size=Chronos2Runner().batch_size_for(args.device),
    )
    if args.device == "cuda":
        torch.cuda.synchronize()
    done = time.perf_counter()
    print(json.dumps({
        "data_s": data_s, "imports_s": imported - started, "load_s": loaded - imported,
        "first_call_s": done - loaded, "model_process_s": done - started,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
