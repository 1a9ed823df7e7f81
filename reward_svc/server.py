"""hatchery.v1.RewardService over the built-in graders and the graders a specs file defines."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import yaml

from hatchery import __version__
from hatchery.service.metrics import REWARD_DURATION, REWARD_SAMPLES, serve_metrics
from hatchery.service.security import Tls, service_token
from hatchery.service.serving import Server, invalid_argument_on_value_error, stop_event_on_signals
from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc
from reward_svc.graders import BatchGrader, Outcome, Status, builtin_graders
from reward_svc.isolation import isolated_builtins
from reward_svc.specs import build_graders, close_graders

MAX_SAMPLES = 4096
MAX_TEXT_CHARS = 1 << 20
MAX_METADATA_ENTRIES = 64
MAX_METADATA_CHARS = 1 << 16
MAX_MESSAGES = 256
MAX_GRADER_NAME = 256
STATUS = {Status.OK: pb.SCORE_STATUS_OK, Status.FAILED: pb.SCORE_STATUS_FAILED,
          Status.TIMED_OUT: pb.SCORE_STATUS_TIMED_OUT, Status.NOT_APPLICABLE: pb.SCORE_STATUS_NOT_APPLICABLE}

log = logging.getLogger("hatchery.reward")


def to_proto(outcome: Outcome) -> pb.SampleScore:
    return pb.SampleScore(score=outcome.score, status=STATUS[outcome.status], sub_scores=outcome.sub_scores,
                          error=outcome.error)


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, graders: Mapping[str, BatchGrader], default: str = "first_integer"):
        if default not in graders:
            raise ValueError(f"default grader {default!r} is not one of {sorted(graders)}")
        self.graders, self.default = graders, default

    @invalid_argument_on_value_error
    def Score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        name = request.grader or self.default
        if name not in self.graders:
            raise ValueError(f"unknown grader {name[:MAX_GRADER_NAME]!r}; this server has {sorted(self.graders)}")
        if len(request.samples) > MAX_SAMPLES:
            raise ValueError(f"{len(request.samples)} samples in one request; the limit is {MAX_SAMPLES}")
        for i, s in enumerate(request.samples):
            if max(len(s.prompt), len(s.completion), len(s.reference)) > MAX_TEXT_CHARS:
                raise ValueError(f"sample {i}: a text field is longer than {MAX_TEXT_CHARS} characters")
            if len(s.metadata) > MAX_METADATA_ENTRIES:
                raise ValueError(f"sample {i}: {len(s.metadata)} metadata entries; the limit is {MAX_METADATA_ENTRIES}")
            if any(len(k) + len(v) > MAX_METADATA_CHARS for k, v in s.metadata.items()):
                raise ValueError(f"sample {i}: a metadata entry is longer than {MAX_METADATA_CHARS} characters")
            if len(s.columns.fields) > MAX_METADATA_ENTRIES or s.columns.ByteSize() > MAX_TEXT_CHARS:
                raise ValueError(f"sample {i}: over {MAX_METADATA_ENTRIES} columns, or over {MAX_TEXT_CHARS} bytes "
                                 "of them")
            if len(s.messages) > MAX_MESSAGES or any(len(m.content) > MAX_TEXT_CHARS for m in s.messages):
                raise ValueError(f"sample {i}: over {MAX_MESSAGES} messages, or one longer than "
                                 f"{MAX_TEXT_CHARS} characters")
        started = time.perf_counter()
        outcomes = self.graders[name].score(request.samples)
        REWARD_DURATION.labels(name).observe(time.perf_counter() - started)
        if len(outcomes) != len(request.samples):  # a grader bug must not shift scores onto other samples
            outcomes = [Outcome.failed(f"grader {name} returned {len(outcomes)} results for "
                                       f"{len(request.samples)} samples")] * len(request.samples)
        for status, count in Counter(o.status.value for o in outcomes).items():
            REWARD_SAMPLES.labels(name, status).inc(count)
        return pb.ScoreResponse(results=[to_proto(o) for o in outcomes])

    def Describe(self, request: pb.DescribeRequest, context) -> pb.DescribeResponse:
        names = [self.default] + sorted(set(self.graders) - {self.default})
        sub_scores = sorted({sub for g in self.graders.values() for sub in g.sub_score_names})
        return pb.DescribeResponse(name="hatchery-builtin", version=__version__, graders=names,
                                   sub_score_names=sub_scores, max_samples=MAX_SAMPLES)


def reward_server(default_grader: str = "first_integer", host: str = "127.0.0.1", port: int = 0,
                  graders: Mapping[str, BatchGrader] | None = None, token: str = "", tls: Tls | None = None) -> Server:
    """The RewardService with health and reflection, bound but not started."""
    server = Server([pb.DESCRIPTOR.services_by_name["RewardService"].full_name], host, port, token=token, tls=tls)
    servicer = RewardServicer(builtin_graders() if graders is None else graders, default_grader)
    reward_pb2_grpc.add_RewardServiceServicer_to_server(servicer, server.grpc)
    return server


def load_graders_file(path: str | None) -> dict[str, BatchGrader]:
    """The built-ins, each in worker processes under a time limit, plus the graders a YAML file
    defines (a mapping of name to spec)."""
    data = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of grader name to spec")
    return build_graders(data, isolated_builtins())


def serve(host: str, port: int, port_file: str | None, default_grader: str, graders_file: str | None = None,
          tls: Tls | None = None, metrics_port: int = 0) -> None:
    graders = load_graders_file(graders_file)
    serve_metrics(metrics_port, host)
    try:
        server = reward_server(default_grader, host, port, graders, service_token("reward"), tls)
        stop = stop_event_on_signals()
        server.start(port_file)
        log.info("reward service on %s with graders %s", server.address, ", ".join(sorted(graders)))
        stop.wait()
        server.stop()
    finally:
        close_graders(graders)
