"""The inference worker: joins an optimizer, pulls leases, generates, gets rewards, reports.

It also serves hatchery.v1.InferenceService (state and plain generation) with
health checking: NOT_SERVING until its replica of the weights is ready.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import grpc

from hatchery.core.failpoints import failpoint
from hatchery.core.model import (
    GenerationInterrupted,
    check_device_dtype,
    check_temperature,
    describe_device,
    generate,
    load_model,
    pick_device,
)
from hatchery.service.metrics import (
    INFERENCE_BATCH,
    INFERENCE_DEVICE,
    INFERENCE_GENERATE,
    INFERENCE_LEASES,
    INFERENCE_PREFILL,
    INFERENCE_TOKENS,
    serve_metrics,
)
from hatchery.service.prompts import reward_sample
from hatchery.service.reward_client import Endpoint, RewardClient, Scored
from hatchery.service.security import Tls, service_token
from hatchery.service.serving import Server, channel, invalid_argument_on_value_error, stop_event_on_signals
from hatchery.v1 import inference_pb2, inference_pb2_grpc, optimizer_pb2_grpc, reward_pb2
from hatchery.v1 import optimizer_pb2 as pb
from inference_svc import fetch
from inference_svc.evaluator import Evaluator

log = logging.getLogger("hatchery.inference")
RPC_TIMEOUT = 30.0
RELEASE_TIMEOUT = 5.0  # a stopping worker does not wait long: the lease's deadline is the fallback
JOIN_ATTEMPTS = 3
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
REWARD_RETRY_SECONDS = 5.0  # between rounds of the reward client's own retries
MAX_GENERATE_PROMPTS = 256
MAX_GENERATE_TOKENS = 4096
MAX_PROMPT_CHARS = 1 << 16


class Worker:
    """The pull loop. Owns the Evaluator; the gRPC servicer only reads its state."""

    def __init__(self, worker_id: str, optimizer_address: str, reward_address: str, fetch_files: bool = False,
                 outage_limit_seconds: float = 600.0, tls: Tls | None = None, device: str = "auto"):
        self.worker_id = worker_id
        self.device = pick_device(device)  # model, factors and replica live there; noise is drawn on the CPU
        self.outage_limit_seconds = outage_limit_seconds  # give up after the optimizer is gone this long
        self.fetch_files = fetch_files  # stream the start model and checkpoints even when their paths are visible
        self.tls = tls  # for the optimizer and every reward service
        self.optimizer = optimizer_pb2_grpc.OptimizerServiceStub(
            channel(optimizer_address, tls, service_token("optimizer")))
        self.reward_address = reward_address  # used when the run names no reward services
        self.rewards: RewardClient | None = None
        self.evaluator: Evaluator | None = None
        self.run_id = ""
        self.leases_completed = 0
        self.update_seconds = 0.0  # applying update records since the last report
        self.lock = threading.Lock()  # one generate() at a time on the replica

    def join(self) -> None:
        """Waits for the optimizer, then builds the replica: base model, newest checkpoint;
        GetWork then brings the update records after it."""
        for attempt in range(JOIN_ATTEMPTS):
            joined = self.optimizer.Join(pb.JoinRequest(worker_id=self.worker_id,
                                                        device=describe_device(self.device)),
                                         timeout=600, wait_for_ready=True)
            check_device_dtype(self.device, joined.es.dtype)
            model = fetch.start_model(self.optimizer, joined, self.fetch_files)
            evaluator = Evaluator(load_model(model, joined.es.dtype, self.device), joined.es)
            if joined.HasField("checkpoint"):
                try:
                    with fetch.checkpoint(self.optimizer, joined.checkpoint, self.fetch_files) as ckpt:
                        evaluator.restore(ckpt.generation, *ckpt.load())
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.NOT_FOUND or attempt + 1 == JOIN_ATTEMPTS:
                        raise
                    log.info("checkpoint %d was replaced while joining; joining again", joined.checkpoint.generation)
                    continue
            break
        rewards = reward_client(joined.reward, self.reward_address, joined.grader, self.tls)
        with self.lock:
            self.evaluator = evaluator
            self.run_id = joined.run_id
            if self.rewards:
                self.rewards.close()
            self.rewards = rewards
        log.info("worker %s joined run %s at generation %d, on %s in %s", self.worker_id, self.run_id,
                 evaluator.applied_generation, describe_device(self.device), joined.es.dtype)
        INFERENCE_DEVICE.clear()
        INFERENCE_DEVICE.labels(describe_device(self.device), joined.es.dtype).set(1)

    def run(self, stop: threading.Event) -> None:
        """Pulls work until the run is over. An optimizer or reward service that is
        briefly unreachable (a restart, a resume) costs the lease in hand, not the worker."""
        outage_since: float | None = None
        while not stop.is_set():
            try:
                if self._step(stop):
                    return
                outage_since = None
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE:
                    raise
                outage_since = outage_since or time.monotonic()
                if time.monotonic() - outage_since > self.outage_limit_seconds:
                    raise
                log.warning("optimizer or reward service unreachable (%s: %s); retrying",
                            err.code().name, err.details())
                stop.wait(1.0)

    def _release(self, lease_id: str) -> None:
        """Hands an unfinished lease back so that another worker gets it now; should the optimizer
        not answer (or predate ReleaseLease), the lease still goes out again at its deadline."""
        try:
            self.optimizer.ReleaseLease(pb.ReleaseLeaseRequest(worker_id=self.worker_id, lease_id=lease_id),
                                        timeout=RELEASE_TIMEOUT)
            log.info("lease %s handed back unfinished: the worker is stopping", lease_id)
        except grpc.RpcError as err:
            log.info("lease %s dropped unfinished (release failed: %s); it goes out again at its deadline",
                     lease_id, err.code().name)

    def _step(self, stop: threading.Event) -> bool:
        """One GetWork and, when it brings a lease, its evaluation and report; True once the run is over."""
        work = self.optimizer.GetWork(pb.GetWorkRequest(
            worker_id=self.worker_id, applied_generation=self.evaluator.applied_generation),
            timeout=RPC_TIMEOUT, wait_for_ready=True)
        started = time.perf_counter()
        with self.lock:
            for record in work.updates:
                self.evaluator.apply(record)
        self.update_seconds += time.perf_counter() - started
        if work.finished:
            return True
        if work.resync:
            log.info("the optimizer is behind this worker's weights (it restarted): joining again")
            self.join()
            return False
        if not work.HasField("lease"):
            stop.wait(work.retry_after_seconds)
            return False
        failpoint("lease_received", work.lease.generation)
        try:
            result = self.evaluate(work.lease, stop)
        except GenerationInterrupted:  # told to stop: partial completions are never scored
            self._release(work.lease.lease_id)
            return False
        result.update_seconds, self.update_seconds = self.update_seconds, 0.0
        reply = self.optimizer.ReportResult(result, timeout=RPC_TIMEOUT)
        INFERENCE_LEASES.labels(str(reply.accepted).lower()).inc()
        if reply.accepted:
            self.leases_completed += 1
        else:
            log.warning("lease %s dropped: %s", work.lease.lease_id, reply.reason)
        if reply.resync:
            self.join()
        return False

    def _score(self, samples: list[reward_pb2.Sample], stop: threading.Event) -> Scored:
        """Scores the completions in hand; a reward service that is down past the client's
        own retries is waited for (up to the outage limit, or until the worker is told to
        stop), so its crash costs no generation."""
        down_since = time.monotonic()
        while True:
            try:
                return self.rewards.score(samples, stop)
            except grpc.RpcError as err:
                out_of_time = time.monotonic() - down_since > self.outage_limit_seconds
                if err.code() not in RETRYABLE or out_of_time or stop.is_set():
                    raise
                log.warning("reward service unreachable (%s); scoring this lease's completions again in %.0f s",
                            err.code().name, REWARD_RETRY_SECONDS)
                stop.wait(REWARD_RETRY_SECONDS)

    def evaluate(self, lease: pb.Lease, stop: threading.Event) -> pb.ReportResultRequest:
        with self.lock:
            completions = self.evaluator.evaluate(lease, stop)
            fp = self.evaluator.fingerprint()
            noise_seconds = self.evaluator.noise_seconds
        kind = "eval" if lease.kind == pb.LEASE_KIND_EVAL else "train"
        INFERENCE_BATCH.labels(kind).observe(len(completions.texts))
        INFERENCE_GENERATE.labels(kind).observe(completions.seconds)
        INFERENCE_PREFILL.labels(kind).observe(completions.prefill_seconds)
        INFERENCE_TOKENS.labels(kind).inc(completions.new_tokens)
        started = time.perf_counter()
        per_prompt = len(lease.prompts)
        samples = [reward_sample(p, text)
                   for text, p in zip(completions.texts, list(lease.prompts) * (len(completions.texts) // per_prompt))]
        rewards, statuses, parts = self._score(samples, stop)
        unscored = sum(s != reward_pb2.SCORE_STATUS_OK for s in statuses)
        if unscored:
            log.warning("lease %s: %d of %d samples not scored (%s)", lease.lease_id, unscored, len(statuses),
                        ", ".join(sorted({reward_pb2.ScoreStatus.Name(s) for s in statuses} - {"SCORE_STATUS_OK"})))
        return pb.ReportResultRequest(
            worker_id=self.worker_id, lease_id=lease.lease_id, generation=lease.generation,
            rewards=rewards, statuses=statuses,
            weights_fingerprint=fp, generated_tokens=completions.new_tokens,
            generate_seconds=completions.seconds, reward_seconds=time.perf_counter() - started,
            noise_seconds=noise_seconds, completions=completions.texts[:lease.return_completions],
            sub_score_sums={name: total for name, (total, _) in parts.items()},
            sub_score_counts={name: count for name, (_, count) in parts.items()})


def reward_client(settings: pb.RewardSettings, local_address: str, local_grader: str,
                  tls: Tls | None = None) -> RewardClient:
    """The run's reward services; with none named, the worker's own --reward-address.
    Tokens are read from this worker's environment, by the names the run gives."""
    endpoints = [Endpoint(list(e.addresses), e.grader, e.weight, _token(e.token_env)) for e in settings.services]
    if not endpoints:
        if not local_address:
            raise ValueError("the run names no reward services and this worker has no --reward-address")
        endpoints = [Endpoint([local_address], local_grader, token=service_token("reward"))]
    return RewardClient(endpoints, settings.timeout_seconds or RPC_TIMEOUT, settings.retries,
                        settings.batch_size or 256, tls=tls)


def _token(env: str) -> str:
    if env and env not in os.environ:
        raise ValueError(f"the run's reward service needs a token from ${env}, which is not set on this worker")
    return os.environ.get(env, "") if env else ""


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, worker: Worker):
        self.worker = worker

    def GetState(self, request, context) -> inference_pb2.GetStateResponse:
        w = self.worker
        ev = w.evaluator
        return inference_pb2.GetStateResponse(
            worker_id=w.worker_id, run_id=w.run_id, leases_completed=w.leases_completed,
            applied_generation=ev.applied_generation if ev else 0, weights_fingerprint=ev.fingerprint() if ev else "")

    @invalid_argument_on_value_error
    def Generate(self, request: inference_pb2.GenerateRequest, context) -> inference_pb2.GenerateResponse:
        if self.worker.evaluator is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the worker has not loaded its model yet")
        if not request.prompts or len(request.prompts) > MAX_GENERATE_PROMPTS:
            raise ValueError(f"prompts: need 1 to {MAX_GENERATE_PROMPTS}, got {len(request.prompts)}")
        if any(len(p) > MAX_PROMPT_CHARS for p in request.prompts):
            raise ValueError(f"prompts: each must be at most {MAX_PROMPT_CHARS} characters")
        if not 1 <= request.max_new_tokens <= MAX_GENERATE_TOKENS:
            raise ValueError(f"max_new_tokens: need 1 to {MAX_GENERATE_TOKENS}, got {request.max_new_tokens}")
        check_temperature(request.temperature)
        with self.worker.lock:
            out = generate(self.worker.evaluator.lm, list(request.prompts), request.max_new_tokens,
                           request.temperature, request.chat_template)
        return inference_pb2.GenerateResponse(completions=out.texts)


def serve(host: str, port: int, port_file: str | None, optimizer_address: str, reward_address: str,
          worker_id: str, fetch_files: bool = False, tls: Tls | None = None, metrics_port: int = 0,
          device: str = "auto") -> None:
    device = str(pick_device(device))  # a device this machine lacks is refused before anything starts
    serve_metrics(metrics_port, host)
    server = Server([inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name], host, port,
                    token=service_token("inference"), tls=tls)
    worker = Worker(worker_id or f"{socket.gethostname()}-{server.port}", optimizer_address, reward_address,
                    fetch_files, tls=tls, device=device)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(worker), server.grpc)
    stop = stop_event_on_signals()
    server.start(port_file, serving=False)
    log.info("inference service on %s", server.address)
    worker.join()
    server.set_serving(True)
    worker.run(stop)
    log.info("worker %s done after %d leases", worker.worker_id, worker.leases_completed)
    server.stop()
