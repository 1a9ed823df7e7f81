"""`hatchery conformance` over real gRPC: the built-in reward service passes every rule,
and servers broken on purpose (each a real server on loopback) are caught by the rule
they break. The examples' servers are checked next to their own tests."""

import math
import threading
from concurrent import futures

import grpc
import pytest

from hatchery.cli import main
from hatchery.conformance import FAILED, NOT_APPLICABLE, PASSED, Probe, check
from hatchery.service.serving import Server
from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc
from reward_svc.graders import builtin_graders
from reward_svc.server import RewardServicer, reward_server


def outcomes(report) -> dict[str, str]:
    return {f.rule: f.outcome for f in report.findings}


@pytest.mark.parametrize("grader", ["", "countdown"])
def test_the_builtin_service_passes_every_rule(grader):
    server = reward_server()
    server.start()
    try:
        report = check(Probe(server.address, grader))
    finally:
        server.stop()
    assert not report.failed, "\n".join(report.lines())
    seen = outcomes(report)
    assert seen["reflection"] == seen["one-result-per-sample"] == seen["batch-limit"] == PASSED
    assert seen["auth"] == NOT_APPLICABLE  # no token given


def test_a_service_with_a_token_refuses_calls_without_it(monkeypatch, capsys):
    server = reward_server(token="s3cret")
    server.start()
    try:
        monkeypatch.setenv("CONFORMANCE_TOKEN", "s3cret")
        assert main(["conformance", server.address, "--token-env", "CONFORMANCE_TOKEN", "--grader", "numeric"]) == 0
        out = capsys.readouterr().out
        assert "passed         auth" in out and "FAILED" not in out
        assert main(["conformance", server.address]) == 1  # without the token, the service refuses the kit
        assert "UNAUTHENTICATED" in capsys.readouterr().out
        assert main(["conformance", server.address, "--token-env", "NOT_SET_ANYWHERE"]) == 2
    finally:
        server.stop()


class Broken(RewardServicer):
    """The built-in graders behind a fault of one kind."""

    def __init__(self, fault: str):
        super().__init__(builtin_graders(), "first_integer")
        self.fault = fault
        self.release = threading.Event()

    def Score(self, request, context):
        if self.fault == "hang":  # ignores its deadline; released when the test ends
            self.release.wait(60)
        if self.fault == "truncates" and len(request.samples) > 100:
            request = pb.ScoreRequest(samples=request.samples[:100], grader=request.grader)
        results = list(super().Score(request, context).results)
        if self.fault == "wrong-count" and len(results) > 1:
            results = results[:-1]
        elif self.fault == "reordered":
            results = results[::-1]
        elif self.fault == "nan-ok":
            results = [pb.SampleScore(score=math.nan, status=pb.SCORE_STATUS_OK) if r.score == 0 else r
                       for r in results]
        elif self.fault == "silent-failures":
            results = [pb.SampleScore(score=r.score, status=r.status, sub_scores=r.sub_scores) for r in results]
        return pb.ScoreResponse(results=results)

    def Describe(self, request, context):
        return pb.DescribeResponse(name="broken", version="0", graders=["first_integer"], max_samples=4096)


@pytest.mark.parametrize(("fault", "rule"), [
    ("wrong-count", "one-result-per-sample"),
    ("reordered", "one-result-per-sample"),
    ("nan-ok", "finite-ok-scores"),
    ("truncates", "batch-limit"),
    ("silent-failures", "errors-explained"),
    ("hang", "deadline"),
])
def test_each_broken_server_is_caught_by_the_rule_it_breaks(fault, rule):
    servicer = Broken(fault)
    server = Server([pb.DESCRIPTOR.services_by_name["RewardService"].full_name], max_workers=32)
    reward_pb2_grpc.add_RewardServiceServicer_to_server(servicer, server.grpc)
    server.start()
    try:
        report = check(Probe(server.address, timeout=0.5 if fault == "hang" else 10.0))
    finally:
        servicer.release.set()
        server.stop()
    finding = next(f for f in report.findings if f.rule == rule)
    assert finding.outcome == FAILED, "\n".join(report.lines())
    assert outcomes(report)["health"] == PASSED  # the kit tells the broken rule apart from the rest
    if fault != "hang":
        assert outcomes(report)["describe"] == outcomes(report)["unknown-grader"] == PASSED


def test_a_server_without_health_or_reflection_is_told_so():
    server = grpc.server(futures.ThreadPoolExecutor(4))
    reward_pb2_grpc.add_RewardServiceServicer_to_server(RewardServicer(builtin_graders()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        report = check(Probe(f"127.0.0.1:{port}"))
    finally:
        server.stop(0)
    findings = {f.rule: f for f in report.findings}
    assert findings["health"].outcome == FAILED and "no grpc.health.v1" in findings["health"].detail
    assert findings["reflection"].outcome == "warning"  # a warning, not a failure
    assert findings["one-result-per-sample"].outcome == PASSED


def test_an_authors_own_samples_join_the_kits(tmp_path, capsys):
    server = reward_server()
    server.start()
    try:
        mine = tmp_path / "mine.jsonl"
        mine.write_text('{"completion": "abc", "reference": "abcdef"}\n{"completion": "x", "metadata": {"k": "v"}}\n')
        assert main(["conformance", server.address, "--grader", "length", "--samples", str(mine), "--json"]) == 0
        assert '"failed": false' in capsys.readouterr().out
        mine.write_text('{"completion": "abc", "score": 1}\n')
        assert main(["conformance", server.address, "--samples", str(mine)]) == 2
        assert "mine.jsonl, line 1: not a Sample" in capsys.readouterr().err
    finally:
        server.stop()
