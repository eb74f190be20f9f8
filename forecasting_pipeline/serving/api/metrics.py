"""The service's Prometheus metrics, in a registry of its own (``GET /metrics``).

Requests by endpoint and status with their latency; per model call the series it carried, where
it ran, how long it took and whether it fell back to the CPU, by where the batch came from
(``http``: this service's requests; ``socket``: Dagster runs); and the batching settings.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from forecasting_pipeline.forecasting.runner import Prediction

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SERIES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServiceMetrics:
    def __init__(self, batch_wait_s: float, batch_max_series: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("forecast_http_requests", "HTTP requests answered, by endpoint and status.",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("forecast_http_request_seconds", "HTTP request latency, by endpoint.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_calls = Counter("forecast_model_calls", "Model calls, by where the batch came from and the device used.",
                                   ["source", "device"], registry=r)
        self.call_series = Histogram("forecast_model_call_series", "Series per model call (the batch size).",
                                     ["source"], buckets=SERIES_BUCKETS, registry=r)
        self.call_seconds = Histogram("forecast_model_call_seconds", "Wall time of one model call, device placement included.",
                                      ["source"], buckets=LATENCY_BUCKETS, registry=r)
        self.cpu_fallbacks = Counter("forecast_cpu_fallbacks", "Model calls that ran on the CPU instead of the GPU.",
                                     ["source"], registry=r)
        self.ready = Gauge("forecast_model_ready", "1 once the model is loaded.", registry=r)
        Gauge("forecast_batch_max_wait_seconds", "Longest a request waits for others to share its model call.",
              registry=r).set(batch_wait_s)
        Gauge("forecast_batch_max_series", "Most series in one model call.", registry=r).set(batch_max_series)

    def record_call(self, source: str, series: int, done: Prediction) -> None:
        run = done.device_run
        self.model_calls.labels(source, run.device).inc()
        self.call_series.labels(source).observe(series)
        self.call_seconds.labels(source).observe(run.wall_seconds)
        if run.fell_back:
            self.cpu_fallbacks.labels(source).inc()

    def record_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
