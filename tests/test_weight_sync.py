"""Seed-only weight sync between the optimizer and a worker, over real gRPC on loopback.

The optimizer and reward servicers run as gRPC servers in this process and a
real inference Worker talks to them, so the test can count every serialized
message and tamper with the worker's weights.
"""

import threading

import grpc
import pytest
import torch

import tiny
from hatchery.config import parse_config
from hatchery.model import load_model
from hatchery.serving import channel
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import optimizer_pb2_grpc
from inference_svc.server import Worker
from optimizer_svc.coordinator import Coordinator
from optimizer_svc.server import optimizer_server
from reference import run_reference
from reward_svc.server import reward_server

GENERATIONS = 4


def _config(model_dir, run_dir):
    return parse_config({
        "run_dir": str(run_dir), "model": {"source": str(model_dir)}, "grader": "length",
        "task": {"name": "arith", "heldout_size": 4, "max_new_tokens": 6},
        "es": {"population": 4, "rank": 2, "sigma": 0.05, "lr": 0.05},
        "train": {"generations": GENERATIONS, "prompts_per_member": 2, "eval_every": 2, "members_per_lease": 2,
                  "checkpoint_every": 2}})


class ByteCounter(grpc.UnaryUnaryClientInterceptor):
    """Serialized sizes of the optimizer traffic that carries a generation's work:
    leases, update records and results (empty polls and the one-off Join aside)."""

    def __init__(self):
        self.bytes = 0
        self.updates_received = 0

    def intercept_unary_unary(self, continuation, details, request):
        outcome = continuation(details, request)
        response = outcome.result()
        if details.method.endswith("/ReportResult"):
            self.bytes += request.ByteSize() + response.ByteSize()
        elif details.method.endswith("/GetWork") and (response.HasField("lease") or response.updates):
            self.bytes += request.ByteSize() + response.ByteSize()
            self.updates_received += len(response.updates)
        return outcome


def _train(model_dir, run_dir, tamper: bool = False):
    """One run with one in-process Worker; returns (coordinator, byte counter, worker)."""
    cfg = _config(model_dir, run_dir)
    coordinator = Coordinator(cfg, load_model(model_dir), run_dir)
    optimizer, reward = optimizer_server(coordinator, model_dir), reward_server()
    optimizer.start()
    reward.start()
    try:
        worker = Worker("w", optimizer.address, reward.address)
        counter = ByteCounter()
        worker.optimizer = optimizer_pb2_grpc.OptimizerServiceStub(
            grpc.intercept_channel(channel(optimizer.address), counter))
        worker.join()
        if tamper:
            with torch.no_grad():
                worker.evaluator.targets[0].weight.mul_(1.5)
        thread = threading.Thread(target=worker.run, args=(threading.Event(),), daemon=True)
        thread.start()
        assert coordinator.finished.wait(300), "the run did not finish"
        thread.join(30)
    finally:
        optimizer.stop()
        reward.stop()
    return coordinator, counter, worker


def test_traffic_per_generation_does_not_grow_with_the_model(tmp_path):
    small = tiny.save("llama", tmp_path / "small")
    large = tiny.save("llama", tmp_path / "large", width=2)
    sizes = {name: sum(p.numel() for p in load_model(d).model.model.layers.parameters())
             for name, d in (("small", small), ("large", large))}
    assert sizes["large"] >= 3.9 * sizes["small"]
    _, small_bytes, _ = _train(small, tmp_path / "run-small")
    _, large_bytes, _ = _train(large, tmp_path / "run-large")
    assert small_bytes.updates_received == GENERATIONS  # every update arrived as a record, never as weights
    assert small_bytes.bytes == large_bytes.bytes > 0


def test_a_tampered_worker_is_caught_resynced_and_changes_nothing(tiny_llama_dir, tmp_path):
    coordinator, _, worker = _train(tiny_llama_dir, tmp_path / "run", tamper=True)
    assert coordinator.fingerprint_mismatches >= 1
    assert worker.evaluator.fingerprint() == coordinator.weights_fingerprint
    reference = run_reference(_config(tiny_llama_dir, tmp_path / "reference"), tmp_path / "reference")
    assert [list(r.fitness) for r in coordinator.log.records] == [list(r.fitness) for r in reference.log.records]
    assert [s.heldout_reward for s in coordinator.history] == [s.heldout_reward for s in reference.history]
    for ours, theirs in zip(coordinator.targets, reference.targets):
        torch.testing.assert_close(ours.weight, theirs.weight, atol=0, rtol=0)
    assert coordinator.status().fingerprint_mismatches == coordinator.fingerprint_mismatches


def test_fetch_checkpoint_of_an_unknown_generation_is_not_found(tiny_llama_dir, tmp_path):
    coordinator = Coordinator(_config(tiny_llama_dir, tmp_path / "run"), load_model(tiny_llama_dir), tmp_path / "run")
    server = optimizer_server(coordinator, tiny_llama_dir)
    server.start()
    try:
        stub = optimizer_pb2_grpc.OptimizerServiceStub(channel(server.address))
        with pytest.raises(grpc.RpcError) as err:
            list(stub.FetchCheckpoint(pb.FetchCheckpointRequest(generation=7), timeout=10))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no checkpoint for generation 7" in err.value.details()
    finally:
        server.stop()
