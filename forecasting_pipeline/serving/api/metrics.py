"""The service's Prometheus metrics, in a registry of its own (``GET /metrics``).

Requests by endpoint and status with their latency; per model call the series it carried, where
it ran, how long it took and whether it fell back to the CPU, by lane (``interactive``: on-demand
requests; ``bulk``: Dagster runs' batches); the scheduler's queue depth and waits per lane and its
refusals by reason; and the scheduling settings.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from forecasting_pipeline.forecasting.runner import Prediction
from forecasting_pipeline.serving.api.config import ServiceConfig

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SERIES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LANES = ("interactive", "bulk")
REFUSAL_REASONS = ("queue_full", "deadline", "client_gone", "shutting_down", "cost")


class ServiceMetrics:
    def __init__(self, config: ServiceConfig) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("forecast_http_requests", "HTTP requests answered, by endpoint and status.",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("forecast_http_request_seconds", "HTTP request latency, by endpoint.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_calls = Counter("forecast_model_calls", "Model calls, by lane and the device used.",
                                   ["lane", "device"], registry=r)
        self.call_series = Histogram("forecast_model_call_series", "Series per model call (the batch or chunk size).",
                                     ["lane"], buckets=SERIES_BUCKETS, registry=r)
        self.call_seconds = Histogram("forecast_model_call_seconds", "Wall time of one model call, device placement included.",
                                      ["lane"], buckets=LATENCY_BUCKETS, registry=r)
        self.cpu_fallbacks = Counter("forecast_cpu_fallbacks", "Model calls that ran on the CPU instead of the GPU.",
                                     ["lane"], registry=r)
        self.queue_wait = Histogram("forecast_queue_wait_seconds", "Time from arrival to the model starting on it, by lane "
                                    "(a run's batch: to its first chunk, the GPU lock's wait included).",
                                    ["lane"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejections = Counter("forecast_rejections", "Work refused or dropped before the model, by reason.",
                                  ["reason"], registry=r)
        self.queue_depth = Gauge("forecast_queue_depth", "Waiting work: on-demand series (interactive), run batches (bulk).",
                                 ["lane"], registry=r)
        self.ready = Gauge("forecast_model_ready", "1 once the model is loaded.", registry=r)
        settings = {
            "forecast_batch_max_wait_seconds": ("Longest an on-demand request waits for others while the model is idle.",
                                                config.batch_wait_s),
            "forecast_batch_max_series": ("Most series in one on-demand model call.", config.batch_max_series),
            "forecast_queue_max_series": ("Most on-demand series waiting before 503.", config.max_queued),
            "forecast_deadline_seconds": ("Longest an on-demand request waits for the model before 503.", config.deadline_s),
            "forecast_max_request_cost": ("Most series x context x horizon in one request.", config.max_cost),
            "forecast_chunk_cost_gpu": ("Most series x context in one chunk of a run's batch on the GPU.", config.chunk_cost_gpu),
            "forecast_chunk_cost_cpu": ("Most series x context in one chunk of a run's batch on the CPU.", config.chunk_cost_cpu),
        }
        for name, (text, value) in settings.items():
            Gauge(name, text, registry=r).set(value)
        for lane in LANES:
            self.queue_wait.labels(lane)
        for reason in REFUSAL_REASONS:
            self.rejections.labels(reason)

    def watch_queues(self, depth: Callable[[str], int]) -> None:
        for lane in LANES:
            self.queue_depth.labels(lane).set_function(lambda lane=lane: depth(lane))

    def record_call(self, lane: str, series: int, done: Prediction) -> None:
        run = done.device_run
        self.model_calls.labels(lane, run.device).inc()
        self.call_series.labels(lane).observe(series)
        self.call_seconds.labels(lane).observe(run.wall_seconds)
        if run.fell_back:
            self.cpu_fallbacks.labels(lane).inc()

    def waited(self, lane: str, seconds: float) -> None:
        self.queue_wait.labels(lane).observe(seconds)

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def record_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
