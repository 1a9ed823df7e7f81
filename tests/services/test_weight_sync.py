"""Seed-only weight sync between the optimizer and a worker, over real gRPC on loopback.

The optimizer and reward servicers run as gRPC servers in this process and a
real inference Worker talks to them, so the test can count every serialized
message and tamper with the worker's weights.
"""

import grpc
import pytest
import torch

from hatchery.bench.sync import loopback_run, run_sync_bench, run_to_end
from hatchery.core.config import parse_config
from hatchery.core.model import load_model
from hatchery.core.start import prepare_start
from hatchery.service.serving import channel
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import optimizer_pb2_grpc
from optimizer_svc.coordinator import Coordinator
from optimizer_svc.server import optimizer_server
from reference import run_reference

GENERATIONS = 4


def _config(model_dir, run_dir):
    return parse_config({
        "run_dir": str(run_dir), "model": {"source": str(model_dir)}, "grader": "length",
        "task": {"name": "arith", "heldout_size": 4, "max_new_tokens": 6},
        "es": {"population": 4, "rank": 2, "sigma": 0.05, "lr": 0.05},
        "train": {"generations": GENERATIONS, "prompts_per_member": 2, "eval_every": 2, "members_per_lease": 2,
                  "checkpoint_every": 2}})


def _train(model_dir, run_dir, tamper: bool = False):
    """One run with one in-process Worker; returns (coordinator, byte counter, worker)."""
    with loopback_run(_config(model_dir, run_dir)) as (coordinator, worker, counter):
        if tamper:
            with torch.no_grad():
                worker.evaluator.targets[0].weight.mul_(1.5)
        run_to_end(coordinator, worker, timeout=300)
    return coordinator, counter, worker


def test_traffic_per_generation_does_not_grow_with_the_model():
    """`hatchery bench-sync` on two random Llamas, one four times the other."""
    report = run_sync_bench(widths=(32, 64), smollm2=False, generations=GENERATIONS)
    small, large, dataset = report["rows"]
    assert large["parameters"] >= 3.9 * small["parameters"]
    assert small["updates_received"] == large["updates_received"] == GENERATIONS  # records, never weights
    def fixed(row):  # all but the held-out completions, whose text is whatever each model says
        return row["bytes_per_generation"] - row["completion_bytes_per_generation"]

    assert fixed(small) == fixed(large) > 0 and small["completion_bytes_per_generation"] > 0
    assert small["worker_update_seconds_median"] > 0 and large["optimizer_update_seconds_median"] > 0
    # a dataset's longer prompts and columns cost what they weigh, on the same model: nothing else moves
    assert (dataset["task"], dataset["parameters"]) == ("dataset", small["parameters"])
    assert dataset["prompt_bytes_per_generation"] > small["prompt_bytes_per_generation"] > 0
    assert abs((fixed(dataset) - dataset["prompt_bytes_per_generation"])
               - (fixed(small) - small["prompt_bytes_per_generation"])) <= 8


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
    server = optimizer_server(coordinator, prepare_start(coordinator.cfg, coordinator.run_dir))
    server.start()
    try:
        stub = optimizer_pb2_grpc.OptimizerServiceStub(channel(server.address))
        with pytest.raises(grpc.RpcError) as err:
            list(stub.FetchCheckpoint(pb.FetchCheckpointRequest(generation=7), timeout=10))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no checkpoint for generation 7" in err.value.details()
    finally:
        server.stop()


def test_a_worker_reports_the_device_it_runs_on(tiny_llama_dir, tmp_path):
    """The worker picks its device before it joins and says which in Join; GetStatus lists it
    throughout the run, not only until the worker's first GetWork."""
    with loopback_run(_config(tiny_llama_dir, tmp_path / "run")) as (coordinator, worker, _):
        (status,) = coordinator.status().workers
        assert status.worker_id == "w" and status.device == str(worker.device) == "cpu"  # auto: no CUDA here
        assert all(t.weight.device == worker.device for t in worker.evaluator.targets)
        run_to_end(coordinator, worker)
        (status,) = coordinator.status().workers
        assert status.device == "cpu" and status.leases_completed > 0
