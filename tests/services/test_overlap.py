"""The optimizer's own update beside the next generation (train.overlap_update).

The in-process reference run drives the same Coordinator and Evaluator the services
wrap: with the overlap on and off the update log and the weights are the same bytes,
and a worker that applied a record an optimizer dropped on restart joins again and the
run still ends identical.
"""

import json

import torch

from hatchery.core.config import parse_config
from hatchery.core.model import load_model
from hatchery.core.start import prepare_start
from hatchery.core.update_log import read_log
from hatchery.service.settings import es_settings
from hatchery.v1 import optimizer_pb2 as pb
from inference_svc.evaluator import Evaluator
from optimizer_svc.coordinator import Coordinator
from reference import report_lease, run_reference


def _config(model_dir, run_dir, overlap=True):
    return parse_config({
        "run_dir": str(run_dir), "model": {"source": str(model_dir)}, "grader": "length",
        "task": {"name": "arith", "heldout_size": 4, "max_new_tokens": 6},
        "es": {"population": 4, "rank": 2, "sigma": 0.05, "lr": 0.05, "optimizer": "adam"},
        "train": {"generations": 6, "prompts_per_member": 2, "eval_every": 3, "checkpoint_every": 2,
                  "overlap_update": overlap}})


def _weights(coordinator):
    return [t.weight.clone() for t in coordinator.targets]


def test_overlapped_and_sequential_updates_give_the_same_bytes(tiny_llama_dir, tmp_path):
    runs = {overlap: run_reference(_config(tiny_llama_dir, tmp_path / str(overlap), overlap), tmp_path / str(overlap))
            for overlap in (True, False)}
    overlapped, sequential = runs[True], runs[False]
    assert [r.fitness for r in overlapped.log.records] == [r.fitness for r in sequential.log.records]
    assert (tmp_path / "True" / "updates.jsonl").read_bytes() == (tmp_path / "False" / "updates.jsonl").read_bytes()
    for a, b in zip(_weights(overlapped), _weights(sequential)):
        assert torch.equal(a, b)
    assert [s.heldout_reward for s in overlapped.history] == [s.heldout_reward for s in sequential.history]
    assert [s.drift_kl for s in overlapped.history] == [s.drift_kl for s in sequential.history]
    trained = [s for s in overlapped.history if s.trained]
    # the update ran beside the next generation: its seconds are reported, not in the generation's time
    assert all("optimizer_update_overlapped" in s.time_split for s in trained)
    assert not any("optimizer_update_overlapped" in s.time_split for s in sequential.history)
    assert [p.name for p in (tmp_path / "True" / "checkpoints").iterdir()] == \
        [p.name for p in (tmp_path / "False" / "checkpoints").iterdir()]


def test_a_worker_ahead_of_a_restarted_optimizer_joins_again_and_the_run_ends_the_same(tiny_llama_dir, tmp_path):
    """A SIGKILL after generation 2's record went out with generation 3's lease and before
    the optimizer wrote generation 2's row leaves the log one record past the rows: that is
    the run dir made here. The restarted optimizer reruns generation 2; the worker, which
    applied its record, is told to resync, joins again and the run ends as the reference."""
    reference = run_reference(_config(tiny_llama_dir, tmp_path / "reference"), tmp_path / "reference")
    cfg = _config(tiny_llama_dir, tmp_path / "run")
    run_dir = tmp_path / "run"
    start = prepare_start(cfg, run_dir).path
    first = Coordinator(cfg, load_model(start), run_dir)
    worker = Evaluator(load_model(start), es_settings(cfg))
    while worker.applied_generation < 3:
        work = first.get_work("reference", worker.applied_generation)
        for record in work.updates:
            worker.apply(record)
        if worker.applied_generation < 3:
            report_lease(first, worker, work.lease)
    first.weights_ready.wait()
    rows = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert json.loads(rows[-1])["generation"] == 2 and len(read_log(run_dir / "updates.jsonl")) == 3
    (run_dir / "metrics.jsonl").write_text("".join(rows[:-1]))  # generation 2's row never written

    restarted = Coordinator(cfg, load_model(start), run_dir)
    assert restarted.generation == 2
    assert restarted.get_work("reference", worker.applied_generation) == pb.GetWorkResponse(resync=True)
    worker = Evaluator(load_model(start), es_settings(cfg))  # joining again: the newest checkpoint, then records
    checkpoint = restarted.checkpoint
    worker.restore(checkpoint.generation, *checkpoint.load())
    while True:
        work = restarted.get_work("reference", worker.applied_generation)
        for record in work.updates:
            worker.apply(record)
        if work.finished:
            break
        report_lease(restarted, worker, work.lease)
    restarted.completed.wait(60)
    assert (run_dir / "updates.jsonl").read_bytes() == (tmp_path / "reference" / "updates.jsonl").read_bytes()
    for a, b in zip(_weights(restarted), _weights(reference)):
        assert torch.equal(a, b)
    assert [s.heldout_reward for s in restarted.history] == [s.heldout_reward for s in reference.history]
