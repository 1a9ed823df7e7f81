"""The reward service as a real gRPC server on loopback."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hatchery.service.serving import channel
from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc
from reward_svc.server import MAX_METADATA_ENTRIES, MAX_SAMPLES, reward_server


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
