"""The caller's side: weighted services, replicas, retries, tokens, over real gRPC on loopback."""

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hatchery.service.reward_client import Endpoint, RewardClient
from hatchery.service.serving import Server, channel
from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc
from reward_svc.graders import PerSample, builtin_graders
from reward_svc.server import reward_server


class Counting(PerSample):
    """first_integer, counting the samples this replica scored."""

    def __init__(self):
        super().__init__(builtin_graders()["first_integer"].grader)
        self.count = 0
        self.lock = threading.Lock()

    def score(self, samples):
        with self.lock:
            self.count += len(samples)
        return super().score(samples)


def start(token=None):
    counting = Counting()
    server = reward_server(graders={**builtin_graders(), "first_integer": counting}, token=token)
    server.start()
    return server, counting


SAMPLES = [pb.Sample(completion=f"{i}", reference="3") for i in range(8)]


def test_replicas_share_the_work_and_a_dead_replica_costs_nothing():
    (a, count_a), (b, count_b) = start(), start()
    client = RewardClient([Endpoint([a.address, b.address])], timeout_seconds=5, retries=3, batch_size=2,
                          backoff_seconds=0.01)
    rewards, statuses, _ = client.score(SAMPLES)
    assert rewards == [0, 0, 0, 1, 0, 0, 0, 0] and statuses == [pb.SCORE_STATUS_OK] * 8
    assert count_a.count == count_b.count == 4  # four calls of two, round robin
    a.stop(grace=0)
    for _ in range(3):  # every call that lands on the dead replica is retried on the live one
        assert client.score(SAMPLES)[:2] == (rewards, statuses)
    assert count_b.count == 4 + 3 * 8
    b.stop(grace=0)
    with pytest.raises(grpc.RpcError) as err:
        client.score(SAMPLES)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    client.close()


def test_services_are_weighted_and_a_failed_sample_keeps_its_status():
    server, _ = start()
    client = RewardClient([Endpoint([server.address], "first_integer", 2.0),
                           Endpoint([server.address], "length", 0.5)], batch_size=3)
    samples = [pb.Sample(completion="3", reference="3"), pb.Sample(completion="333", reference="3"),
               pb.Sample(completion="3", reference="")]  # first_integer: not applicable without a reference
    rewards, statuses, _ = client.score(samples)
    assert rewards[:2] == [2.0 * 1 + 0.5 * 0, 2.0 * 0 + 0.5 * -2]
    assert statuses == [pb.SCORE_STATUS_OK, pb.SCORE_STATUS_OK, pb.SCORE_STATUS_NOT_APPLICABLE]
    assert rewards[2] == 0.0  # meaningless, and never mistaken for a score: the status says so
    client.close()
    server.stop()


def test_bearer_token():
    server, _ = start(token="t0ken")
    for token, code in (("", grpc.StatusCode.UNAUTHENTICATED), ("wrong", grpc.StatusCode.PERMISSION_DENIED)):
        client = RewardClient([Endpoint([server.address], token=token)], retries=2, backoff_seconds=0.01)
        with pytest.raises(grpc.RpcError) as err:  # refused at once: not retried
            client.score(SAMPLES)
        assert err.value.code() == code
        client.close()
    client = RewardClient([Endpoint([server.address], token="t0ken")])
    assert client.score(SAMPLES)[1] == [pb.SCORE_STATUS_OK] * 8
    client.close()
    health = health_pb2_grpc.HealthStub(channel(server.address))  # probes carry no credentials
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    server.stop()


class Misbehaving(reward_pb2_grpc.RewardServiceServicer):
    """A third-party reward service that answers with junk: an undeclared status, an
    unspecified one, a NaN scored OK."""

    def Score(self, request, context):
        return pb.ScoreResponse(results=[pb.SampleScore(status=17), pb.SampleScore(),
                                         pb.SampleScore(status=pb.SCORE_STATUS_OK, score=float("nan")),
                                         pb.SampleScore(status=pb.SCORE_STATUS_OK, score=0.5)])


def test_junk_from_a_remote_service_becomes_failed_samples():
    server = Server(["hatchery.v1.RewardService"])
    reward_pb2_grpc.add_RewardServiceServicer_to_server(Misbehaving(), server.grpc)
    server.start()
    client = RewardClient([Endpoint([server.address])])
    rewards, statuses, _ = client.score(SAMPLES[:4])
    assert statuses == [pb.SCORE_STATUS_FAILED] * 3 + [pb.SCORE_STATUS_OK] and rewards[3] == 0.5
    client.close()
    server.stop()


class Unavailable(reward_pb2_grpc.RewardServiceServicer):
    """A reward service that is up but answers every call UNAVAILABLE (restarting), counting them."""

    def __init__(self):
        self.calls = 0

    def Score(self, request, context):
        self.calls += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")


def test_a_client_told_to_stop_gives_up_its_retries():
    """A worker shutting down must not sit out the backoff of a reward service that is down."""
    unavailable = Unavailable()
    server = Server([pb.DESCRIPTOR.services_by_name["RewardService"].full_name])
    reward_pb2_grpc.add_RewardServiceServicer_to_server(unavailable, server.grpc)
    server.start()
    client = RewardClient([Endpoint([server.address])], retries=3, backoff_seconds=0.01)
    with pytest.raises(grpc.RpcError):
        client.score(SAMPLES[:1])
    assert unavailable.calls == 4  # not stopped: every retry
    stop = threading.Event()
    stop.set()
    with pytest.raises(grpc.RpcError) as err:
        client.score(SAMPLES[:1], stop)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and unavailable.calls == 5  # stopped: one attempt
    slow = RewardClient([Endpoint([server.address])], retries=3, backoff_seconds=60)
    stop.clear()
    threading.Timer(0.5, stop.set).start()  # told to stop while it backs off (5-10 s before its first retry)
    with pytest.raises(grpc.RpcError):
        slow.score(SAMPLES[:1], stop)
    assert unavailable.calls == 6  # no retry after the stop
    client.close()
    slow.close()
    server.stop(grace=0)
