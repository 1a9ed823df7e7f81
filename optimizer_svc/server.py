"""hatchery.v1.OptimizerService: the gRPC face of a Coordinator."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import grpc
from google.protobuf import struct_pb2

from hatchery.core.config import RunConfig, trackers
from hatchery.core.model import LoadedModel, load_model
from hatchery.core.run_files import RunFilesError, writing
from hatchery.core.run_metrics import WORKER_TIME_SPLIT, GenerationStats, progress_line
from hatchery.core.start import StartPoint, prepare_start
from hatchery.service.metrics import FAILED_SAMPLES, GENERATION_DURATION, PERTURBATIONS, serve_metrics, watch_run
from hatchery.service.security import TOKEN_ENV, Access, Tls, service_token
from hatchery.service.serving import Server, invalid_argument_on_value_error, stop_event_on_signals
from hatchery.service.settings import es_settings, reward_settings
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import optimizer_pb2_grpc, reward_pb2
from optimizer_svc.coordinator import Coordinator, FinishingError
from optimizer_svc.tracking import TrackerFeed

log = logging.getLogger("hatchery.optimizer")
MAX_WORKER_ID = 256
MAX_DEVICE_CHARS = 256
MAX_SUB_SCORES = 64
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
    if len(req.sub_score_sums) > MAX_SUB_SCORES or set(req.sub_score_counts) != set(req.sub_score_sums):
        raise ValueError(f"sub_score_sums and sub_score_counts: at most {MAX_SUB_SCORES} names, the same in both")
    for name, total in req.sub_score_sums.items():
        if len(name) > MAX_WORKER_ID or not math.isfinite(total):
            raise ValueError(f"sub_score_sums[{name[:40]!r}]: a name of at most {MAX_WORKER_ID} characters "
                             f"and a finite sum, got {total}")
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

    def WatchRun(self, request: pb.WatchRunRequest, context) -> Iterator[pb.RunEvent]:
        c, sent = self.coordinator, request.from_generation
        while context.is_active():
            with c.changed:
                rows = c.rows_since(sent)
                state = c.state()
                if not rows and state not in (pb.RUN_STATE_FINISHED, pb.RUN_STATE_FAILED):
                    c.changed.wait(timeout=WATCH_POLL_SECONDS)  # also notices a client that went away
                    continue
            for stats in rows:
                yield run_event(stats)
                sent = stats.generation + 1
            if not rows:
                yield pb.RunEvent(generation=c.generation, state=state, failure=c.failure)
                return

    def PauseRun(self, request, context) -> pb.RunControlResponse:
        return self._control(self.coordinator.pause, context)

    def ResumeRun(self, request, context) -> pb.RunControlResponse:
        return self._control(self.coordinator.resume, context)

    def StopRun(self, request, context) -> pb.RunControlResponse:
        return self._control(self.coordinator.stop, context)

    @staticmethod
    def _control(change, context) -> pb.RunControlResponse:
        try:
            return pb.RunControlResponse(state=change())
        except FinishingError as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        except RunFilesError as err:  # control.json could not be written: nothing changed
            context.abort(grpc.StatusCode.UNAVAILABLE, str(err))


WATCH_POLL_SECONDS = 1.0


def run_event(stats: GenerationStats) -> pb.RunEvent:
    """A metrics row as WatchRun sends it: the row itself, and its held-out evaluation typed."""
    row = struct_pb2.Struct()
    row.update(json.loads(stats.to_json()))
    event = pb.RunEvent(generation=stats.generation, row=row)
    if stats.heldout_reward is not None:
        nan = float("nan")
        event.evaluation.CopyFrom(pb.HeldOutEvaluation(
            mean=stats.heldout_reward, stderr=nan if stats.heldout_stderr is None else stats.heldout_stderr,
            samples=[pb.EvaluatedSample(prompt=s["prompt"], reference=s["reference"], completion=s["completion"],
                                        reward=nan if s["reward"] is None else s["reward"])
                     for s in stats.heldout_samples]))
    return event


SERVICE = pb.DESCRIPTOR.services_by_name["OptimizerService"].full_name
READ_METHODS = ("GetStatus", "WatchRun")
CONTROL_METHODS = ("PauseRun", "ResumeRun", "StopRun")


def access(token: str, control: str) -> Access:
    """Workers' calls take the workers' token; status and watch, theirs or the control token;
    pause, resume and stop, the control token alone. No token set: all open (a local run)."""
    if not token and not control:
        return Access(None)
    name = TOKEN_ENV["control"]
    why = (f"a worker's token cannot control a run: send ${name}" if control
           else f"run control is off: set ${name} on the optimizer to allow it")
    methods = {f"/{SERVICE}/{m}": tuple(t for t in (token, control) if t) if token else None for m in READ_METHODS}
    methods |= {f"/{SERVICE}/{m}": (control,) if control else () for m in CONTROL_METHODS}
    return Access((token,) if token else None, methods, {f"/{SERVICE}/{m}": why for m in CONTROL_METHODS})


def optimizer_server(coordinator: Coordinator, start: StartPoint, host: str = "127.0.0.1",
                     port: int = 0, token: str = "", tls: Tls | None = None, control: str = "") -> Server:
    """The OptimizerService for a coordinator, with health and reflection, bound but not started;
    `token` is the workers', `control` the token of the run-control calls."""
    server = Server([SERVICE], host, port, access=access(token, control), tls=tls)
    optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server(OptimizerServicer(coordinator, start),
                                                              server.grpc)
    return server


def _save_model(lm: LoadedModel, folder: Path) -> None:
    """The trained model as a Hugging Face folder, whole or not at all."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(folder):
        lm.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)


def serve(cfg: RunConfig, host: str, port: int, port_file: str | None, tls: Tls | None = None,
          metrics_port: int = 0, finish_grace_seconds: float = 3.0, keep_serving: bool = False) -> int:
    """Trains until the run ends; writes the model, metrics and plot into the run dir. With
    `keep_serving`, goes on answering status and watch calls until told to stop (a pod that
    exited would be restarted, over and over)."""
    run_dir = Path(cfg.run_dir)
    start = prepare_start(cfg, run_dir)
    lm = load_model(start.path, cfg.model.dtype)

    def write_outputs() -> None:
        from hatchery.core.plot import plot_rewards  # matplotlib only once there is a plot to draw

        if not (run_dir / "model").is_dir():  # a restart after the run ended: written already
            _save_model(lm, run_dir / "model")
        with writing(run_dir / "rewards.png"):
            plot_rewards(run_dir / "metrics.jsonl", run_dir / "rewards.png", f"{cfg.task.name}: {run_dir.name}")

    feed = TrackerFeed(cfg, run_dir) if trackers(cfg.tracking) else None

    def on_generation(stats: GenerationStats) -> None:
        print(progress_line(stats, cfg.train.generations), flush=True)
        if feed:
            feed.put(stats)
        if stats.trained:
            GENERATION_DURATION.observe(stats.seconds)
            PERTURBATIONS.inc(cfg.es.population)
            FAILED_SAMPLES.inc(stats.failed_samples)

    coordinator = Coordinator(cfg, lm, run_dir, on_generation=on_generation, write_outputs=write_outputs)
    watch_run(coordinator)
    serve_metrics(metrics_port, host)
    server = optimizer_server(coordinator, start, host, port, service_token("optimizer"), tls, service_token("control"))
    stop = stop_event_on_signals()
    server.start(port_file)
    log.info("optimizer on %s, run dir %s", server.address, run_dir)
    while not stop.is_set() and not coordinator.completed.wait(0.5):
        pass
    if feed:
        feed.close("failed" if coordinator.failure else "finished" if coordinator.completed.is_set() else
                   "interrupted")
    if coordinator.failure:
        print(f"hatchery optimizer: the run failed: {coordinator.failure}; its files in {run_dir} hold every "
              "generation before it: fix the cause and resume, or `hatchery export` what is there",
              file=sys.stderr, flush=True)
    elif coordinator.completed.is_set():
        print(f"done: model in {run_dir / 'model'}, plot {run_dir / 'rewards.png'}", flush=True)
    if coordinator.completed.is_set():
        deadline = time.monotonic() + finish_grace_seconds  # let workers hear that the run is over
        while not stop.is_set() and (keep_serving or time.monotonic() < deadline):
            stop.wait(0.1)
    server.stop()
    return 0 if coordinator.completed.is_set() and not coordinator.failure else 1
