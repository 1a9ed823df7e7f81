"""`hatchery loadtest`: a bounded load on loopback, reported as throughput, latency
percentiles and errors.

- reward: `clients` threads, each with its own channel, send Score requests of
  `batch` Countdown samples to a `hatchery reward` process as fast as it answers;
- optimizer: `workers` simulated workers (threads, no model) join a `hatchery
  optimizer` process training a tiny random model, pull leases, and return them
  with random rewards and the optimizer's weights fingerprint, so every lease is
  accepted and generations close as fast as the optimizer can update.

Both stop by themselves after `seconds`; the processes are stopped at the end.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml

from hatchery.bench.reward import countdown_samples
from hatchery.bench.throughput import tiny_model
from hatchery.core.model import EMBEDDED, load_model, resolve_model
from hatchery.launcher import loopback_service
from hatchery.service.serving import channel
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import optimizer_pb2_grpc, reward_pb2, reward_pb2_grpc


@dataclass
class Recorder:
    """Latencies (seconds) per RPC and errors by status code, from many threads."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, name: str, method: Callable, request: object) -> object | None:
        """method(request), timed; None when it failed (the failure is counted)."""
        started = time.perf_counter()
        try:
            result = method(request, timeout=30)
        except grpc.RpcError as err:
            with self.lock:
                key = f"{name}:{err.code().name}"
                self.errors[key] = self.errors.get(key, 0) + 1
            return None
        with self.lock:
            self.latencies.setdefault(name, []).append(time.perf_counter() - started)
        return result

    def summary(self, seconds: float) -> dict:
        out = {}
        for name, values in sorted(self.latencies.items()):
            values = sorted(values)
            pct = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
            out[name] = {"requests": len(values), "per_second": round(len(values) / seconds, 1),
                         "latency_ms": {"p50": round(pct[49] * 1e3, 2), "p90": round(pct[89] * 1e3, 2),
                                        "p99": round(pct[98] * 1e3, 2), "max": round(values[-1] * 1e3, 2)}}
        return {"rpcs": out, "errors": dict(self.errors), "error_count": sum(self.errors.values())}


def _run_threads(count: int, body: Callable[[int, threading.Event], None], seconds: float) -> float:
    stop = threading.Event()
    threads = [threading.Thread(target=body, args=(i, stop), daemon=True) for i in range(count)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    return time.perf_counter() - started


def load_reward(address: str, clients: int, batch: int, seconds: float) -> dict:
    request = reward_pb2.ScoreRequest(samples=countdown_samples(batch), grader="countdown")
    recorder = Recorder()

    def client(i: int, stop: threading.Event) -> None:
        stub = reward_pb2_grpc.RewardServiceStub(channel(address))
        while not stop.is_set():
            recorder.timed("Score", stub.Score, request)

    elapsed = _run_threads(clients, client, seconds)
    report = recorder.summary(elapsed)
    scored = report["rpcs"].get("Score", {}).get("requests", 0) * batch
    return {"clients": clients, "samples_per_request": batch, "seconds": round(elapsed, 1),
            "samples_per_second": round(scored / elapsed), **report}


def load_optimizer(address: str, workers: int, seconds: float) -> dict:
    recorder = Recorder()
    rejected: dict[str, int] = {}
    status_stub = optimizer_pb2_grpc.OptimizerServiceStub(channel(address))
    fingerprints: dict[int, str] = {}  # generation -> the optimizer's weights fingerprint
    lock = threading.Lock()

    def fingerprint(generation: int) -> str:
        with lock:
            if generation not in fingerprints:
                fingerprints[generation] = status_stub.GetStatus(pb.GetStatusRequest(), timeout=30).weights_fingerprint
            return fingerprints[generation]

    def worker(i: int, stop: threading.Event) -> None:
        stub = optimizer_pb2_grpc.OptimizerServiceStub(channel(address))
        name, rng, applied = f"sim-{i}", random.Random(i), 0
        recorder.timed("Join", stub.Join, pb.JoinRequest(worker_id=name))
        while not stop.is_set():
            work = recorder.timed("GetWork", stub.GetWork,
                                  pb.GetWorkRequest(worker_id=name, applied_generation=applied))
            if work is None:
                continue
            applied += len(work.updates)
            if not work.HasField("lease"):
                stop.wait(work.retry_after_seconds)
                continue
            lease = work.lease
            rows = lease.member_end - lease.member_start if lease.kind == pb.LEASE_KIND_TRAIN else 1
            n = rows * len(lease.prompts)
            result = pb.ReportResultRequest(
                worker_id=name, lease_id=lease.lease_id, generation=lease.generation,
                rewards=[rng.random() for _ in range(n)], statuses=[reward_pb2.SCORE_STATUS_OK] * n,
                weights_fingerprint=fingerprint(lease.generation), generated_tokens=n)
            reply = recorder.timed("ReportResult", stub.ReportResult, result)
            if reply is not None and not reply.accepted:
                with lock:
                    rejected[reply.reason] = rejected.get(reply.reason, 0) + 1

    first = status_stub.GetStatus(pb.GetStatusRequest(), timeout=30).generation
    elapsed = _run_threads(workers, worker, seconds)
    generations = status_stub.GetStatus(pb.GetStatusRequest(), timeout=30).generation - first
    report = recorder.summary(elapsed)
    return {"workers": workers, "seconds": round(elapsed, 1), "generations": generations,
            "generations_per_second": round(generations / elapsed, 2),
            "leases_per_second": report["rpcs"].get("ReportResult", {}).get("per_second", 0.0),
            "rejected_reports": rejected, **report}


def run_loadtest(seconds: float, reward_clients: int, batch: int, workers: int, population: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="hatchery-loadtest-") as tmp:
        folder = Path(tmp)
        model = tiny_model(load_model(resolve_model(EMBEDDED)).tokenizer)
        model.model.save_pretrained(folder / "model")
        model.tokenizer.save_pretrained(folder / "model")
        config = folder / "run.yaml"
        config.write_text(yaml.safe_dump({
            "run_dir": str(folder / "run"), "model": {"source": str(folder / "model")}, "grader": "length",
            "task": {"heldout_size": 8}, "es": {"population": population},
            "train": {"generations": 10**6, "time_budget_seconds": 0, "prompts_per_member": 4, "eval_every": 10**6,
                      "members_per_lease": 2, "checkpoint_every": 0}}))
        with loopback_service(["reward"], folder, "reward") as reward, \
                loopback_service(["optimizer", "--config", str(config)], folder, "optimizer") as optimizer:
            return {"date": time.strftime("%Y-%m-%d"),
                    "reward": load_reward(reward, reward_clients, batch, seconds),
                    "optimizer": load_optimizer(optimizer, workers, seconds)}
