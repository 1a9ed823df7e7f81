"""The reward service as a real gRPC server on loopback."""

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hatchery.launcher import loopback_service
from hatchery.service.serving import channel
from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc
from reward_svc.server import MAX_MESSAGES, MAX_METADATA_ENTRIES, MAX_SAMPLES, reward_server


@pytest.fixture(scope="module")
def stub():
    server = reward_server()
    server.start()
    ch = channel(server.address)
    yield reward_pb2_grpc.RewardServiceStub(ch), ch
    server.stop()


def test_scores_a_batch_in_order_with_statuses(stub):
    rewards, _ = stub
    samples = [pb.Sample(completion="The answer is 7", reference="7"),
               pb.Sample(completion="3 + 4 = 7", reference="7"),
               pb.Sample(completion="7", reference="")]  # no reference: not applicable, not 0
    out = rewards.Score(pb.ScoreRequest(samples=samples, grader="first_integer"), timeout=10).results
    assert [r.status for r in out] == [pb.SCORE_STATUS_OK, pb.SCORE_STATUS_OK, pb.SCORE_STATUS_NOT_APPLICABLE]
    assert [r.score for r in out[:2]] == [1.0, 0.0]
    assert "reference" in out[2].error


def test_countdown_sub_scores(stub):
    rewards, _ = stub
    sample = pb.Sample(completion="x</think>\n<answer>3 * 5 + 7</answer>",
                       metadata={"numbers": "3,5,7", "target": "22"})
    (result,) = rewards.Score(pb.ScoreRequest(samples=[sample], grader="countdown"), timeout=10).results
    assert result.score == pytest.approx(1.1)
    assert dict(result.sub_scores) == {"format": 1.0, "answer": 1.0}


def test_malformed_requests_get_invalid_argument(stub):
    rewards, _ = stub
    with pytest.raises(grpc.RpcError) as err:
        rewards.Score(pb.ScoreRequest(samples=[pb.Sample()], grader="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nope" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        rewards.Score(pb.ScoreRequest(samples=[pb.Sample()] * (MAX_SAMPLES + 1)), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    crowded = pb.Sample(metadata={str(i): "x" for i in range(MAX_METADATA_ENTRIES + 1)})
    with pytest.raises(grpc.RpcError) as err:
        rewards.Score(pb.ScoreRequest(samples=[pb.Sample(), crowded]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sample 1" in err.value.details()
    wide = struct_pb2.Struct()
    wide.update({str(i): i for i in range(MAX_METADATA_ENTRIES + 1)})
    talkative = [pb.Message(role="user", content="hi")] * (MAX_MESSAGES + 1)
    for bad in (pb.Sample(columns=wide), pb.Sample(messages=talkative)):
        with pytest.raises(grpc.RpcError) as err:
            rewards.Score(pb.ScoreRequest(samples=[bad]), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sample 0: over" in err.value.details()


def test_describe_health_and_reflection(stub):
    rewards, ch = stub
    d = rewards.Describe(pb.DescribeRequest(), timeout=10)
    assert d.graders[0] == "first_integer" and "countdown" in d.graders and "format" in d.sub_score_names
    health = health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service="hatchery.v1.RewardService"), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    (reply,) = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert {"hatchery.v1.RewardService", "grpc.health.v1.Health"} <= names


def test_a_huge_number_costs_microseconds_and_health_keeps_answering(tmp_path):
    """Issue 24, finding 1 and 6: `1e999999999` held a `hatchery reward` process for minutes (the
    numeric grader formed 10**999999999), and a 4,301-digit integer reference was NOT_APPLICABLE
    (Python's int-string limit). Fails on the code before the fix: the Score call runs past its deadline."""
    big = "7" * 4301
    samples = [pb.Sample(completion="1e999999999", reference="1"),
               pb.Sample(completion="#### 1e9999999", reference="1"),
               pb.Sample(completion=f"so #### {big}", reference=big),
               pb.Sample(completion="1e5000", reference="1" + "0" * 5000)]
    with loopback_service(["reward"], tmp_path, "reward") as address:
        ch = channel(address)
        health = health_pb2_grpc.HealthStub(ch)
        with ThreadPoolExecutor(1) as pool:
            scoring = pool.submit(reward_pb2_grpc.RewardServiceStub(ch).Score,
                                  pb.ScoreRequest(samples=samples, grader="numeric"), timeout=10)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            results = scoring.result().results
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert [r.status for r in results] == [pb.SCORE_STATUS_OK] * 4
    assert [r.score for r in results] == [0.0, 0.0, 1.0, 1.0]


def test_undecodable_bytes_get_invalid_argument(stub):
    """Issue 24, finding 6: bytes that are no message got INTERNAL, for Score as for health checks."""
    _, ch = stub
    for method in ("/hatchery.v1.RewardService/Score", "/grpc.health.v1.Health/Check"):
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(method)(b"\x0a\xff\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and method in err.value.details()


def test_adversarial_completions_of_a_megabyte_are_scored_and_health_keeps_answering(tmp_path):
    """Found while bounding the built-in graders (issue 24): a million unclosed "\\text{" made the
    numeric grader's LaTeX clean-up quadratic, about two minutes for one sample. Fails before the fix
    (DEADLINE_EXCEEDED); every built-in grader takes well under a second on these now."""
    mb = 1_000_000
    texts = ["\\text{" * (mb // 6), "\\boxed{" + "{" * mb, "-" * mb, "1e" * (mb // 2), "(" * mb, "\\frac{" * (mb // 6)]
    samples = [pb.Sample(completion=t, reference="5", metadata={"numbers": "1,2", "target": "3"}) for t in texts]
    with loopback_service(["reward"], tmp_path, "reward") as address:
        ch = channel(address)
        stub = reward_pb2_grpc.RewardServiceStub(ch)
        with ThreadPoolExecutor(4) as pool:
            scoring = [pool.submit(stub.Score, pb.ScoreRequest(samples=samples, grader=g), timeout=30)
                       for g in ("numeric", "countdown", "first_integer", "length")]
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            results = [f.result().results for f in scoring]
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert all(len(r) == len(samples) and all(x.status == pb.SCORE_STATUS_OK for x in r) for r in results)


def test_a_batch_of_the_slowest_samples_starves_neither_health_nor_sigterm(tmp_path):
    """Issue 24: one completion once wedged the service (health timed out, SIGTERM ignored).
    Now the slowest shapes cost a grader milliseconds each; a batch of forty of them, several
    seconds of scoring, leaves health answering and SIGTERM stopping the process."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from hatchery.launcher import wait_for_port

    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "hatchery.cli", "reward", "--port", "0", "--port-file",
                             str(port_file)], env={k: v for k, v in os.environ.items() if k != "HATCHERY_REWARD_TOKEN"})
    try:
        ch = channel(f"127.0.0.1:{wait_for_port(port_file, proc, 'reward', 120)}")
        scoring = threading.Event()

        def score_slowly():
            scoring.set()
            try:
                reward_pb2_grpc.RewardServiceStub(ch).Score(pb.ScoreRequest(
                    samples=[pb.Sample(completion="1e" * 500_000, reference="1")] * 40, grader="numeric"), timeout=120)
            except grpc.RpcError:
                pass  # the process is stopped under it

        threading.Thread(target=score_slowly, daemon=True).start()
        scoring.wait()
        time.sleep(1.0)  # the 40 MB request is in, and being scored
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_built_in_grader_that_runs_long_costs_one_sample_and_starves_nothing(tmp_path):
    """Built-ins run in worker processes under a time limit per call (issue 24): a sample past it
    is TIMED_OUT, the rest of its batch is scored, and health answers throughout. Real processes,
    hosting a grader that sleeps on one completion (tests/slow_graders.py)."""
    from reward_svc.isolation import IsolatedGrader

    tests = Path(__file__).resolve().parents[1]
    sleepy = IsolatedGrader("sleepy", ("calls",), factory="slow_graders:graders", path=str(tests), timeout_seconds=1.0)
    server = reward_server("sleepy", graders={"sleepy": sleepy})
    server.start()
    try:
        ch = channel(server.address)
        samples = [pb.Sample(completion=c) for c in ("fast", "slow", "fast")]
        with ThreadPoolExecutor(1) as pool:
            scoring = pool.submit(reward_pb2_grpc.RewardServiceStub(ch).Score, pb.ScoreRequest(samples=samples),
                                  timeout=60)
            time.sleep(0.5)
            started = time.monotonic()
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status
            answered = time.monotonic() - started
            results = scoring.result().results
    finally:
        server.stop()
        sleepy.close()
    assert status == health_pb2.HealthCheckResponse.SERVING and answered < 1.0
    assert [r.status for r in results] == [pb.SCORE_STATUS_OK, pb.SCORE_STATUS_TIMED_OUT, pb.SCORE_STATUS_OK]
    assert "grader sleepy: no answer within 1 s" in results[1].error
    assert results[0].sub_scores == {"calls": 1.0}  # sub-scores come back from the worker process
