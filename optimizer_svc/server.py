"""hatchery.v1.OptimizerService: the gRPC face of a Coordinator."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import grpc

from hatchery.core.config import RunConfig
from hatchery.core.model import load_model
from hatchery.core.run_files import RunFilesError, writing
from hatchery.core.run_metrics import WORKER_TIME_SPLIT, GenerationStats
from hatchery.core.start import StartPoint, prepare_start
from hatchery.service.metrics import FAILED_SAMPLES, GENERATION_DURATION, PERTURBATIONS, serve_metrics, watch_run
from hatchery.service.security import Tls, service_token
from hatchery.service.serving import Server, invalid_argument_on_value_error, stop_event_on_signals
from hatchery.service.settings import es_settings, reward_settings
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import optimizer_pb2_grpc, reward_pb2
from optimizer_svc.coordinator import Coordinator

log = logging.getLogger("hatchery.optimizer")
MAX_WORKER_ID = 256
MAX_DEVICE_CHARS = 256
CHUNK_BYTES = 1 << 20


def _check_worker_id(worker_id: str) -> None:
    if not worker_id or len(worker_id) > MAX_WORKER_ID:
        raise ValueError(f"worker_id must be 1 to {MAX_WORKER_ID} characters, got {len(worker_id)}")


SCORE_STATUSES = frozenset(reward_pb2.ScoreStatus.values()) - {reward_pb2.SCORE_STATUS_UNSPECIFIED}


def check_report(req: pb.ReportResultRequest) -> None:
    """What a report must satisfy whatever lease it names; checked before any state is touched."""
    _check_worker_id(req.worker_id)
    for name in ("lease_id", "weights_fingerprint"):
        if len(getattr(req, name)) > MAX_WORKER_ID:
            raise ValueError(f"{name} is longer than {MAX_WORKER_ID} characters")
    for i, (reward, status) in enumerate(zip(req.rewards, req.statuses)):
        if status not in SCORE_STATUSES:
            raise ValueError(f"statuses[{i}]: {status} is not a hatchery.v1.ScoreStatus")
        if status == reward_pb2.SCORE_STATUS_OK and not math.isfinite(reward):
            raise ValueError(f"rewards[{i}] is {reward} with status OK; report a non-finite score as FAILED")
    for name in (f"{part}_seconds" for part in WORKER_TIME_SPLIT):
        value = getattr(req, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _stream(f: BinaryIO) -> Iterator[pb.CheckpointChunk]:
    with f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while data := f.read(CHUNK_BYTES):
            yield pb.CheckpointChunk(offset=offset, data=data, size_bytes=size)
            offset += len(data)


class OptimizerServicer(optimizer_pb2_grpc.OptimizerServiceServicer):
    def __init__(self, coordinator: Coordinator, start: StartPoint):
        self.coordinator, self.start = coordinator, start
        self.model_files = [pb.ModelFile(name=f.name, size_bytes=f.size_bytes, sha256=f.sha256) for f in start.files]

    @invalid_argument_on_value_error
    def Join(self, request: pb.JoinRequest, context) -> pb.JoinResponse:
        _check_worker_id(request.worker_id)
        c = self.coordinator
        if len(request.device) > MAX_DEVICE_CHARS:
            raise ValueError(f"device: at most {MAX_DEVICE_CHARS} characters")
        c.join(request.worker_id, request.device)
        return pb.JoinResponse(run_id=c.run_dir.name, base_model_path=str(self.start.path),
                               es=es_settings(c.cfg), grader=c.cfg.grader or c.task.grader,
                               checkpoint=c.checkpoint_info(), reward=reward_settings(c.cfg),
                               base_model_files=self.model_files)

    @invalid_argument_on_value_error
    def GetWork(self, request: pb.GetWorkRequest, context) -> pb.GetWorkResponse:
        _check_worker_id(request.worker_id)
        return self.coordinator.get_work(request.worker_id, request.applied_generation)

    @invalid_argument_on_value_error
    def ReportResult(self, request: pb.ReportResultRequest, context) -> pb.ReportResultResponse:
        check_report(request)
        return self.coordinator.report(request)

    @invalid_argument_on_value_error
    def ReleaseLease(self, request: pb.ReleaseLeaseRequest, context) -> pb.ReleaseLeaseResponse:
        _check_worker_id(request.worker_id)
        if not request.lease_id:
            raise ValueError("lease_id is empty")
        return pb.ReleaseLeaseResponse(released=self.coordinator.release(request.worker_id, request.lease_id))

    def GetStatus(self, request, context) -> pb.GetStatusResponse:
        return self.coordinator.status()

    def FetchCheckpoint(self, request: pb.FetchCheckpointRequest, context) -> Iterator[pb.CheckpointChunk]:
        try:
            f = self.coordinator.open_checkpoint(request.generation)
        except LookupError as err:
            context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        yield from _stream(f)

    def FetchModelFile(self, request: pb.FetchModelFileRequest, context) -> Iterator[pb.CheckpointChunk]:
        if request.name not in {f.name for f in self.start.files}:  # never a path of the caller's choosing
            context.abort(grpc.StatusCode.NOT_FOUND, f"the start model has no file {request.name[:200]!r}")
        yield from _stream(open(self.start.path / request.name, "rb"))


def progress_line(stats: GenerationStats, total: int) -> str:
    parts = [f"gen {stats.generation:>4}/{total}"]
    parts.append(f"reward mean {stats.reward_mean:.3f} max {stats.reward_max:.3f}" if stats.trained
                 else "final evaluation      ")
    if stats.heldout_reward is None:
        parts.append("held-out   -          ")
    else:
        parts.append(f"held-out {stats.heldout_reward:.3f}+-{stats.heldout_stderr or 0.0:.3f}")
    if stats.trained:
        parts.append(f"{stats.tokens_per_second:6.1f} tok/s  {stats.seconds:5.2f} s/gen")
    if stats.heldout_seconds:
        parts.append(f"(evaluation {stats.heldout_seconds:.2f} s)")
    if stats.failed_samples:
        parts.append(f"{stats.failed_samples} samples not scored")
    return "  ".join(parts)


def optimizer_server(coordinator: Coordinator, start: StartPoint, host: str = "127.0.0.1",
                     port: int = 0, token: str = "", tls: Tls | None = None) -> Server:
    """The OptimizerService for a coordinator, with health and reflection, bound but not started."""
    server = Server([pb.DESCRIPTOR.services_by_name["OptimizerService"].full_name], host, port, token=token, tls=tls)
    optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server(OptimizerServicer(coordinator, start),
                                                              server.grpc)
    return server


def serve(cfg: RunConfig, host: str, port: int, port_file: str | None, tls: Tls | None = None,
          metrics_port: int = 0, finish_grace_seconds: float = 3.0) -> int:
    """Trains until the run ends; writes the model, metrics and plot into the run dir."""
    run_dir = Path(cfg.run_dir)
    start = prepare_start(cfg, run_dir)
    lm = load_model(start.path, cfg.model.dtype)

    def on_generation(stats: GenerationStats) -> None:
        print(progress_line(stats, cfg.train.generations), flush=True)
        if stats.trained:
            GENERATION_DURATION.observe(stats.seconds)
            PERTURBATIONS.inc(cfg.es.population)
            FAILED_SAMPLES.inc(stats.failed_samples)

    coordinator = Coordinator(cfg, lm, run_dir, on_generation=on_generation)
    watch_run(coordinator)
    serve_metrics(metrics_port, host)
    server = optimizer_server(coordinator, start, host, port, service_token("optimizer"), tls)
    stop = stop_event_on_signals()
    server.start(port_file)
    log.info("optimizer on %s, run dir %s", server.address, run_dir)
    while not stop.is_set() and not coordinator.finished.wait(0.5):
        pass
    if coordinator.failure:
        print(f"hatchery optimizer: the run failed: {coordinator.failure}; its files in {run_dir} hold every "
              "generation before it", file=sys.stderr, flush=True)
    elif coordinator.finished.is_set():
        from hatchery.core.plot import plot_rewards  # matplotlib only once there is a plot to draw

        try:
            with writing(run_dir / "model"):
                lm.model.save_pretrained(run_dir / "model")
                lm.tokenizer.save_pretrained(run_dir / "model")
            with writing(run_dir / "rewards.png"):
                plot_rewards(run_dir / "metrics.jsonl", run_dir / "rewards.png", f"{cfg.task.name}: {run_dir.name}")
        except RunFilesError as err:
            coordinator.failure = str(err)
            print(f"hatchery optimizer: {err}; the run is complete in its update log: free space and "
                  f"resume, or `hatchery export {run_dir}`", file=sys.stderr, flush=True)
        else:
            print(f"done: model in {run_dir / 'model'}, plot {run_dir / 'rewards.png'}", flush=True)
    if coordinator.finished.is_set():
        deadline = time.monotonic() + finish_grace_seconds  # let workers hear that the run is over
        while time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.1)
    server.stop()
    return 0 if coordinator.finished.is_set() and not coordinator.failure else 1
