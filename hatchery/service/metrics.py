"""Prometheus metrics: what every service exports, named by Prometheus rules
(`hatchery_` prefix, base units, `_total` counters, histograms for durations).

Each service process holds one set (the default registry) and serves it on
`--metrics-port` (0: off). The gRPC series come from a server interceptor; the
optimizer's run state is read at scrape time by a collector.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LONG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

GRPC_REQUESTS = Counter("hatchery_grpc_server_requests", "gRPC requests handled, by method and status code",
                        ["method", "code"])
GRPC_DURATION = Histogram("hatchery_grpc_server_request_duration_seconds", "Time to handle a gRPC request",
                          ["method"], buckets=LATENCY_BUCKETS)

# optimizer, per generation
GENERATION_DURATION = Histogram("hatchery_generation_duration_seconds", "Wall time of one training generation",
                                buckets=LONG_BUCKETS)
PERTURBATIONS = Counter("hatchery_perturbations_evaluated", "Population members evaluated, over all generations")
FAILED_SAMPLES = Counter("hatchery_failed_samples", "Samples whose reward came back not OK")

# inference
INFERENCE_BATCH = Histogram("hatchery_inference_batch_size", "Rows in one batched generate()", ["kind"],
                            buckets=BATCH_BUCKETS)
INFERENCE_GENERATE = Histogram("hatchery_inference_generate_duration_seconds",
                               "Wall time of one batched generate(), prefill included", ["kind"],
                               buckets=LONG_BUCKETS)
INFERENCE_PREFILL = Histogram("hatchery_inference_prefill_duration_seconds",
                              "Tokenising and the first forward pass of one batched generate()", ["kind"],
                              buckets=LATENCY_BUCKETS)
INFERENCE_TOKENS = Counter("hatchery_inference_generated_tokens", "Tokens generated, up to each row's end", ["kind"])
INFERENCE_LEASES = Counter("hatchery_inference_leases", "Leases evaluated and reported, by whether accepted",
                           ["accepted"])
INFERENCE_DEVICE = Gauge("hatchery_inference_device", "1 for the device and dtype this worker runs the model on",
                         ["device", "dtype"])

# reward
REWARD_SAMPLES = Counter("hatchery_reward_samples", "Samples scored, by grader and status", ["grader", "status"])
REWARD_DURATION = Histogram("hatchery_reward_score_duration_seconds", "Time to score one Score request's batch",
                            ["grader"], buckets=LATENCY_BUCKETS)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Serves /metrics on port (0: not at all)."""
    if port:
        start_http_server(port, addr=host)


class GrpcMetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every unary and server-streaming call by method and final status code."""

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        method = details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _observed(method, handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        return grpc.unary_stream_rpc_method_handler(
            _observed(method, handler.unary_stream, streaming=True), handler.request_deserializer,
            handler.response_serializer)


def _observed(method: str, behaviour: Callable, streaming: bool = False) -> Callable:
    def record(context, started: float, failed: bool) -> None:
        code = context.code() or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
        GRPC_REQUESTS.labels(method, code.name).inc()
        GRPC_DURATION.labels(method).observe(time.perf_counter() - started)

    def unary(request, context):
        started, failed = time.perf_counter(), True
        try:
            reply = behaviour(request, context)
            failed = False
            return reply
        finally:
            record(context, started, failed)

    def stream(request, context):
        started, failed = time.perf_counter(), True
        try:
            yield from behaviour(request, context)
            failed = False
        finally:
            record(context, started, failed)

    return stream if streaming else unary


class RunCollector(Collector):
    """The optimizer's run state at scrape time: generation, last generation's rewards,
    held-out reward, update norm, throughput, workers and the coordinator's counters."""

    def __init__(self, coordinator):
        self.coordinator = coordinator

    def collect(self):
        c = self.coordinator
        yield GaugeMetricFamily("hatchery_generation", "Training generations completed", value=c.generation)
        yield GaugeMetricFamily("hatchery_workers", "Workers seen within twice the lease timeout",
                                value=len(c.workers))
        yield CounterMetricFamily("hatchery_lease_reassignments", "Leases handed out again after their deadline",
                                  value=c.leases.reassignments)
        yield CounterMetricFamily("hatchery_lease_releases", "Leases handed back unfinished by a stopping worker",
                                  value=c.leases.releases)
        yield CounterMetricFamily("hatchery_fingerprint_mismatches", "Results dropped: the worker's weights differed",
                                  value=c.fingerprint_mismatches)
        trained = [s for s in c.history if s.trained]
        if trained:
            last = trained[-1]
            for name, value, what in (("reward_mean", last.reward_mean, "Mean reward"),
                                      ("reward_max", last.reward_max, "Best reward"),
                                      ("reward_std", last.reward_std, "Standard deviation of rewards"),
                                      ("update_norm", last.update_norm, "Norm of the weight update"),
                                      ("tokens_per_second", last.tokens_per_second, "Tokens generated per second")):
                yield GaugeMetricFamily(f"hatchery_{name}", f"{what} of the last training generation", value=value)
        evaluated = [s.heldout_reward for s in c.history if s.heldout_reward is not None]
        if evaluated:
            yield GaugeMetricFamily("hatchery_heldout_reward", "Mean reward on the held-out prompts, last evaluation",
                                    value=evaluated[-1])
        drifted = [s for s in c.history if s.drift_kl is not None]
        if drifted:
            yield GaugeMetricFamily("hatchery_drift_kl", "KL(current || start model) per token of general text, "
                                    "last evaluation", value=drifted[-1].drift_kl)
            yield GaugeMetricFamily("hatchery_probe_loglik", "Mean log-likelihood per token of that text, "
                                    "last evaluation", value=drifted[-1].probe_loglik)


def watch_run(coordinator) -> None:
    REGISTRY.register(RunCollector(coordinator))
