"""hatchery.v1.RewardService over the built-in graders."""

from __future__ import annotations

import logging
import math

from hatchery import __version__
from hatchery.serving import Server, invalid_argument_on_value_error, stop_event_on_signals
from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc
from reward_svc.graders import GRADERS, SUB_SCORES, Grader, NotApplicable

MAX_SAMPLES = 4096
MAX_TEXT_CHARS = 1 << 20

log = logging.getLogger("hatchery.reward")


def score_sample(grader: Grader, sample: pb.Sample) -> pb.SampleScore:
    """One sample's result; a grader error is a FAILED status, never a 0."""
    try:
        grade = grader(sample.prompt, sample.completion, sample.reference, sample.metadata)
    except NotApplicable as err:
        return pb.SampleScore(status=pb.SCORE_STATUS_NOT_APPLICABLE, error=str(err))
    except Exception as err:  # a grader bug costs one sample, not the batch
        return pb.SampleScore(status=pb.SCORE_STATUS_FAILED, error=f"{type(err).__name__}: {err}")
    if not math.isfinite(grade.score):
        return pb.SampleScore(status=pb.SCORE_STATUS_FAILED, error=f"grader returned {grade.score}")
    return pb.SampleScore(score=grade.score, status=pb.SCORE_STATUS_OK, sub_scores=grade.sub_scores)


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, graders: dict[str, Grader] = GRADERS, default: str = "first_integer"):
        if default not in graders:
            raise ValueError(f"default grader {default!r} is not one of {sorted(graders)}")
        self.graders, self.default = graders, default

    @invalid_argument_on_value_error
    def Score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        name = request.grader or self.default
        if name not in self.graders:
            raise ValueError(f"unknown grader {name!r}; this server has {sorted(self.graders)}")
        if len(request.samples) > MAX_SAMPLES:
            raise ValueError(f"{len(request.samples)} samples in one request; the limit is {MAX_SAMPLES}")
        for i, s in enumerate(request.samples):
            if max(len(s.prompt), len(s.completion), len(s.reference)) > MAX_TEXT_CHARS:
                raise ValueError(f"sample {i}: a text field is longer than {MAX_TEXT_CHARS} characters")
        grader = self.graders[name]
        return pb.ScoreResponse(results=[score_sample(grader, s) for s in request.samples])

    def Describe(self, request: pb.DescribeRequest, context) -> pb.DescribeResponse:
        names = [self.default] + sorted(set(self.graders) - {self.default})
        return pb.DescribeResponse(name="hatchery-builtin", version=__version__, graders=names,
                                   sub_score_names=list(SUB_SCORES))


def reward_server(default_grader: str = "first_integer", host: str = "127.0.0.1", port: int = 0) -> Server:
    """The RewardService with health and reflection, bound but not started."""
    server = Server([pb.DESCRIPTOR.services_by_name["RewardService"].full_name], host, port)
    reward_pb2_grpc.add_RewardServiceServicer_to_server(RewardServicer(default=default_grader), server.grpc)
    return server


def serve(host: str, port: int, port_file: str | None, default_grader: str) -> None:
    server = reward_server(default_grader, host, port)
    stop = stop_event_on_signals()
    server.start(port_file)
    log.info("reward service on %s", server.address)
    stop.wait()
    server.stop()
