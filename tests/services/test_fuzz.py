"""Every RPC of every service driven with generated messages over real gRPC.

A service must answer each one with a result or a clean error (INVALID_ARGUMENT,
NOT_FOUND), never crash (UNKNOWN, INTERNAL) or hang (DEADLINE_EXCEEDED), keep
serving, and change no state when it rejects a message. Bounded: a fixed number
of examples per RPC, so CI time is bounded too (derandomised under CI, so a
failure reproduces).
"""

import math
import os

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import inference_svc.server as inference_server
from hatchery.core.config import parse_config
from hatchery.core.model import load_model
from hatchery.core.start import prepare_start
from hatchery.service.serving import Server, channel
from hatchery.v1 import inference_pb2, inference_pb2_grpc, optimizer_pb2_grpc, reward_pb2, reward_pb2_grpc
from hatchery.v1 import optimizer_pb2 as pb
from inference_svc.server import InferenceServicer, Worker
from optimizer_svc.coordinator import Coordinator
from optimizer_svc.server import optimizer_server
from proto_strategies import messages
from reward_svc.server import reward_server

FUZZ = settings(max_examples=int(os.environ.get("HATCHERY_FUZZ_EXAMPLES", "120")), deadline=None,
                derandomize=bool(os.environ.get("CI")), suppress_health_check=list(HealthCheck))
STATUSES = [reward_pb2.SCORE_STATUS_OK] * 3 + [reward_pb2.SCORE_STATUS_FAILED, reward_pb2.SCORE_STATUS_UNSPECIFIED, 17]
CLEAN_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


@pytest.fixture(scope="module")
def services(tiny_llama_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fuzz") / "run"
    cfg = parse_config({"run_dir": str(run_dir), "model": {"source": str(tiny_llama_dir)}, "grader": "length",
                        "task": {"heldout_size": 4, "max_new_tokens": 2}, "es": {"population": 4},
                        "train": {"generations": 1000, "prompts_per_member": 1, "members_per_lease": 2,
                                  "eval_every": 1000, "time_budget_seconds": 0}})
    coordinator = Coordinator(cfg, load_model(tiny_llama_dir), run_dir)
    servers = {"optimizer": optimizer_server(coordinator, prepare_start(cfg, run_dir)), "reward": reward_server()}
    for server in servers.values():
        server.start()
    worker = Worker("fuzz-worker", servers["optimizer"].address, servers["reward"].address)
    worker.join()
    servers["inference"] = Server([inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name])
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(worker), servers["inference"].grpc)
    servers["inference"].start()
    stubs = {"optimizer": optimizer_pb2_grpc.OptimizerServiceStub(channel(servers["optimizer"].address)),
             "reward": reward_pb2_grpc.RewardServiceStub(channel(servers["reward"].address)),
             "inference": inference_pb2_grpc.InferenceServiceStub(channel(servers["inference"].address))}
    health = {name: health_pb2_grpc.HealthStub(channel(s.address)) for name, s in servers.items()}
    yield stubs, coordinator, health
    for server in servers.values():
        server.stop(grace=0)


def snapshot(c: Coordinator) -> tuple:
    """The optimizer's run state, all of it that a message could change."""
    with c._lock:
        return (c.generation, sorted(c.leases.outstanding), [lease.lease_id for lease in c.leases.pending],
                {k: (w.leases_completed, w.fingerprint) for k, w in c.workers.items()}, c.current.rewards.tobytes(),
                c.current.heldout, c.current.tokens, c.fingerprint_mismatches, c.leases.reassignments,
                len(c.history))


def call(method, request, streaming=False):
    """The reply, or the status code of a clean error; anything else fails the test."""
    try:
        reply = method(request, timeout=30)
        return list(reply) if streaming else reply
    except grpc.RpcError as err:
        assert err.code() in CLEAN_ERRORS, f"{err.code().name}: {err.details()}"
        assert err.details(), "an error must say what was wrong"
        return err.code()


def still_serving(health):
    for name, stub in health.items():
        status = stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING, f"{name} stopped serving"


def _optimizer_rpc(services, name, request, streaming=False):
    stubs, coordinator, health = services
    before = snapshot(coordinator)
    reply = call(getattr(stubs["optimizer"], name), request, streaming)
    if isinstance(reply, grpc.StatusCode):
        assert snapshot(coordinator) == before, f"a rejected {name} changed the run"
    with coordinator._lock:  # what was accepted is usable: a failed sample is NaN, never inf
        assert not np.isinf(coordinator.current.rewards).any(), "an infinite reward was accepted"
    still_serving(health)
    return reply


@FUZZ
@given(msg=messages(pb.JoinRequest.DESCRIPTOR))
def test_join(services, msg):
    _optimizer_rpc(services, "Join", msg)


@FUZZ
@given(msg=messages(pb.GetWorkRequest.DESCRIPTOR))
def test_get_work(services, msg):
    _optimizer_rpc(services, "GetWork", msg)


@FUZZ
@given(msg=messages(pb.ReportResultRequest.DESCRIPTOR), data=st.data())
def test_report_result(services, msg, data):
    """Random reports, and reports aimed at a real outstanding lease with random contents."""
    _, coordinator, _ = services
    if data.draw(st.booleans()):
        with coordinator._lock:
            leases = [out.lease for _, out in sorted(coordinator.leases.outstanding.items())]
            generation, fingerprint = coordinator.generation, coordinator.weights_fingerprint
        if not leases:  # a lease to aim at (setup, not under test)
            leases = [coordinator.get_work("fuzz-holder", generation).lease]
        lease = leases[data.draw(st.integers(0, 7)) % len(leases)]
        msg.lease_id, msg.generation = lease.lease_id, generation
        if data.draw(st.booleans()):  # well-formed apart from what follows
            msg.worker_id, msg.generated_tokens, msg.generate_seconds, msg.reward_seconds = "fuzzer", 1, 0.1, 0.1
        if data.draw(st.booleans()):
            msg.weights_fingerprint = fingerprint
        if data.draw(st.booleans()):  # the right number of entries, any values
            rows = lease.member_end - lease.member_start if lease.kind == pb.LEASE_KIND_TRAIN else 1
            n = rows * len(lease.prompts)
            values = st.one_of(st.floats(), st.sampled_from([math.inf, -math.inf, math.nan, 0.5]))
            del msg.rewards[:], msg.statuses[:]
            msg.rewards.extend(data.draw(st.lists(values, min_size=8, max_size=8))[:n])
            msg.statuses.extend(data.draw(st.lists(st.sampled_from(STATUSES), min_size=8, max_size=8))[:n])
    reply = _optimizer_rpc(services, "ReportResult", msg)
    if isinstance(reply, pb.ReportResultResponse) and reply.accepted:  # only a well-formed report is taken
        assert all(status in STATUSES[:4] for status in msg.statuses)
        assert all(math.isfinite(r) for r, status in zip(msg.rewards, msg.statuses)
                   if status == reward_pb2.SCORE_STATUS_OK)


@FUZZ
@given(msg=messages(pb.ReleaseLeaseRequest.DESCRIPTOR), data=st.data())
def test_release_lease(services, msg, data):
    """Random releases, and releases of a real outstanding lease by its holder or by another
    worker: only the holder's release queues it again, and no lease is ever lost or doubled."""
    _, coordinator, _ = services

    def leases() -> list[str]:
        return sorted([lease.lease_id for lease in coordinator.leases.pending] + list(coordinator.leases.outstanding))

    if data.draw(st.booleans()):
        with coordinator._lock:
            held = [(lease_id, out.worker_id) for lease_id, out in sorted(coordinator.leases.outstanding.items())]
        if not held:  # a lease to aim at (setup, not under test)
            held = [(coordinator.get_work("fuzz-holder", coordinator.generation).lease.lease_id, "fuzz-holder")]
        msg.lease_id, holder = held[data.draw(st.integers(0, 7)) % len(held)]
        msg.worker_id = data.draw(st.sampled_from([holder, "fuzzer"]))
    with coordinator._lock:
        before, out = leases(), coordinator.leases.outstanding.get(msg.lease_id)
    reply = _optimizer_rpc(services, "ReleaseLease", msg)
    with coordinator._lock:
        assert leases() == before
    if isinstance(reply, pb.ReleaseLeaseResponse):
        assert reply.released == (out is not None and out.worker_id == msg.worker_id)


@FUZZ
@given(msg=messages(pb.FetchCheckpointRequest.DESCRIPTOR))
def test_fetch_checkpoint(services, msg):
    _optimizer_rpc(services, "FetchCheckpoint", msg, streaming=True)


@FUZZ
@given(msg=messages(pb.GetStatusRequest.DESCRIPTOR))
def test_get_status(services, msg):
    assert isinstance(_optimizer_rpc(services, "GetStatus", msg), pb.GetStatusResponse)


@FUZZ
@given(msg=messages(reward_pb2.ScoreRequest.DESCRIPTOR))
def test_score(services, msg):
    stubs, _, health = services
    reply = call(stubs["reward"].Score, msg)
    if not isinstance(reply, grpc.StatusCode):
        assert len(reply.results) == len(msg.samples)
        assert all(r.status != reward_pb2.SCORE_STATUS_UNSPECIFIED for r in reply.results)
        assert all(bool(r.error) == (r.status != reward_pb2.SCORE_STATUS_OK) for r in reply.results)
    still_serving(health)


@FUZZ
@given(msg=messages(reward_pb2.DescribeRequest.DESCRIPTOR))
def test_describe(services, msg):
    stubs, _, health = services
    assert call(stubs["reward"].Describe, msg).graders
    still_serving(health)


@FUZZ
@given(msg=messages(inference_pb2.GenerateRequest.DESCRIPTOR))
def test_generate(services, msg, monkeypatch_module):
    stubs, _, health = services
    reply = call(stubs["inference"].Generate, msg)
    if not isinstance(reply, grpc.StatusCode):
        assert len(reply.completions) == len(msg.prompts)
    still_serving(health)


@FUZZ
@given(msg=messages(inference_pb2.GetStateRequest.DESCRIPTOR))
def test_get_state(services, msg):
    stubs, _, health = services
    assert call(stubs["inference"].GetState, msg).worker_id == "fuzz-worker"
    still_serving(health)


@pytest.fixture(scope="module")
def monkeypatch_module():
    """Valid Generate calls are real generations: keep them small enough for CI (the
    limits' checks are what the fuzz test drives, not the model's speed)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inference_server, "MAX_GENERATE_TOKENS", 4)
        mp.setattr(inference_server, "MAX_GENERATE_PROMPTS", 4)
        mp.setattr(inference_server, "MAX_PROMPT_CHARS", 200)
        yield
