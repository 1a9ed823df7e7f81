"""The optimizer as a real gRPC server on loopback: leases, guards, status."""

import json
import subprocess
import sys
import threading

import grpc
import pytest
import torch

from hatchery.core.config import parse_config
from hatchery.core.model import load_model
from hatchery.core.start import prepare_start
from hatchery.core.update_log import read_log
from hatchery.service.prompts import struct_values
from hatchery.service.serving import channel
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import optimizer_pb2_grpc, reward_pb2
from optimizer_svc.control import RunControl
from optimizer_svc.coordinator import MAX_WORKERS, STATUS_WORKERS, Coordinator
from optimizer_svc.server import optimizer_server


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def optimizer(tiny_llama_dir, tmp_path):
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)},
                        "task": {"heldout_size": 4}, "es": {"population": 4},
                        "train": {"generations": 2, "prompts_per_member": 2, "eval_every": 100,
                                  "members_per_lease": 2, "lease_timeout_seconds": 30}})
    clock = Clock()
    coordinator = Coordinator(cfg, load_model(tiny_llama_dir), tmp_path / "run", clock=clock)
    server = optimizer_server(coordinator, prepare_start(coordinator.cfg, coordinator.run_dir))
    server.start()
    stub = optimizer_pb2_grpc.OptimizerServiceStub(channel(server.address))
    stub.address = server.address
    yield stub, coordinator, clock
    server.stop()


def _result(lease, fingerprint, worker="w1", count=None, reward=1.0):
    rows = lease.member_end - lease.member_start if lease.kind == pb.LEASE_KIND_TRAIN else 1
    n = count if count is not None else rows * len(lease.prompts)
    return pb.ReportResultRequest(worker_id=worker, lease_id=lease.lease_id, generation=lease.generation,
                                  rewards=[reward] * n, statuses=[reward_pb2.SCORE_STATUS_OK] * n,
                                  weights_fingerprint=fingerprint)


def _invalid(call, *args):
    with pytest.raises(grpc.RpcError) as err:
        call(*args, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.details()


def test_join_and_leases_cover_the_population(optimizer):
    stub, coordinator, clock = optimizer
    joined = stub.Join(pb.JoinRequest(worker_id="w1"), timeout=10)
    assert joined.es.population == 4 and joined.grader == "first_integer" and joined.base_model_path
    fp = coordinator.weights_fingerprint
    evaluation = stub.GetWork(pb.GetWorkRequest(worker_id="w1"), timeout=10).lease
    assert evaluation.kind == pb.LEASE_KIND_EVAL and len(evaluation.prompts) == 4  # held-out, at generation 0
    # The evaluation runs alone (its time is kept off the training clock): no training lease until it is in.
    assert not stub.GetWork(pb.GetWorkRequest(worker_id="w1"), timeout=10).HasField("lease")
    clock.now += 5.0
    assert stub.ReportResult(_result(evaluation, fp, reward=0.0), timeout=10).accepted
    leases = [stub.GetWork(pb.GetWorkRequest(worker_id="w1"), timeout=10).lease for _ in range(2)]
    assert {lease.sampling.stop_rule for lease in [evaluation, *leases]} == {"first_integer"}  # arith's early stop
    assert [(lease.kind, lease.member_start, lease.member_end) for lease in leases] == [
        (pb.LEASE_KIND_TRAIN, 0, 2), (pb.LEASE_KIND_TRAIN, 2, 4)]
    assert not stub.GetWork(pb.GetWorkRequest(worker_id="w1"), timeout=10).HasField("lease")
    clock.now += 7.0
    for lease in leases:
        assert stub.ReportResult(_result(lease, fp, reward=float(lease.member_start)), timeout=10).accepted
    work = stub.GetWork(pb.GetWorkRequest(worker_id="w1", applied_generation=0), timeout=10)
    assert [u.generation for u in work.updates] == [0] and len(work.updates[0].fitness) == 4
    assert work.lease.generation == 1
    status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert status.generation == 1 and status.workers[0].leases_completed == 3
    assert status.history[0].heldout_reward == 0.0 and status.history[0].reward_mean == 1.0
    first = coordinator.history[0]
    assert (first.seconds, first.heldout_seconds, first.heldout_stderr) == (7.0, 5.0, 0.0)


@pytest.mark.parametrize("overrides", [{"task": {"heldout_size": 4, "early_stop": False}}, {"grader": "numeric"}])
def test_early_stop_only_with_the_task_grader(tiny_llama_dir, tmp_path, overrides):
    """Another grader may read past the first integer, so its rows run to the end."""
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)},
                        "task": {"heldout_size": 4}, **overrides})
    coordinator = Coordinator(cfg, load_model(tiny_llama_dir), tmp_path / "run")
    assert coordinator.get_work("w1", 0).lease.sampling.stop_rule == ""


def test_training_samples_with_noise_the_members_share_and_evaluation_is_greedy(tiny_llama_dir, tmp_path):
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)},
                        "task": {"heldout_size": 4}, "es": {"population": 4},
                        "train": {"temperature": 0.7, "members_per_lease": 2, "prompts_per_member": 1}})
    coordinator = Coordinator(cfg, load_model(tiny_llama_dir), tmp_path / "run")
    evaluation = coordinator.get_work("w1", 0).lease
    assert evaluation.sampling.temperature == 0 and not evaluation.sampling.HasField("sampling_seed")
    coordinator.report(_result(evaluation, coordinator.weights_fingerprint))
    seeds = []
    for generation in (0, 1):
        leases = [coordinator.get_work("w1", generation).lease for _ in range(2)]
        assert [(lease.generation, lease.sampling.temperature) for lease in leases] == [(generation, 0.7)] * 2
        seeds.append({lease.sampling.sampling_seed for lease in leases})
        for lease in leases:
            coordinator.report(_result(lease, coordinator.weights_fingerprint))
    assert len(seeds[0]) == len(seeds[1]) == 1 and seeds[0] != seeds[1]  # one draw per generation


def test_time_budget_counts_training_not_evaluation(tiny_llama_dir, tmp_path):
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)},
                        "task": {"heldout_size": 4}, "es": {"population": 2},
                        "train": {"time_budget_seconds": 10, "eval_every": 1, "prompts_per_member": 1}})
    clock = Clock()
    coordinator = Coordinator(cfg, load_model(tiny_llama_dir), tmp_path / "run", clock=clock)
    while not coordinator.finished.is_set():
        lease = coordinator.get_work("w1", coordinator.generation).lease
        clock.now += 100.0 if lease.kind == pb.LEASE_KIND_EVAL else 6.0
        assert coordinator.report(_result(lease, coordinator.weights_fingerprint)).accepted
    assert [s.seconds for s in coordinator.history] == [6.0, 6.0, 0.0]  # two generations pass 10 s; final eval
    assert [s.heldout_seconds for s in coordinator.history] == [100.0] * 3


@pytest.mark.parametrize(("budget", "spent"), [({"time_budget_seconds": 10, "generations": 100}, [0, 0.4, 0.8]),
                                              ({"time_budget_seconds": 0, "generations": 4}, [0, 0.25, 0.5, 0.75])])
def test_a_linear_lr_schedule_decays_over_the_training_budget(tiny_llama_dir, tmp_path, budget, spent):
    """Time or generations, whichever runs out first; evaluations are not on that clock."""
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)},
                        "task": {"heldout_size": 4}, "es": {"population": 2, "lr": 0.5, "lr_schedule": "linear"},
                        "train": {"eval_every": 2, "prompts_per_member": 1, **budget}})
    clock = Clock()
    coordinator = Coordinator(cfg, load_model(tiny_llama_dir), tmp_path / "run", clock=clock)
    while not coordinator.finished.is_set():
        lease = coordinator.get_work("w1", coordinator.generation).lease
        clock.now += 100.0 if lease.kind == pb.LEASE_KIND_EVAL else 4.0
        assert coordinator.report(_result(lease, coordinator.weights_fingerprint, reward=float(lease.member_start)))
    assert [r.lr for r in read_log(tmp_path / "run" / "updates.jsonl")] == pytest.approx([0.5 * (1 - s) for s in spent])


def test_late_duplicate_and_mismatched_results_are_dropped(optimizer):
    stub, coordinator, _ = optimizer
    lease = stub.GetWork(pb.GetWorkRequest(worker_id="w1"), timeout=10).lease
    reply = stub.ReportResult(_result(lease, "not-the-weights"), timeout=10)
    assert not reply.accepted and "fingerprint" in reply.reason and coordinator.fingerprint_mismatches == 1
    again = stub.GetWork(pb.GetWorkRequest(worker_id="w2"), timeout=10).lease
    assert again.lease_id == lease.lease_id  # handed out again, not lost
    assert stub.ReportResult(_result(again, coordinator.weights_fingerprint), timeout=10).accepted
    duplicate = stub.ReportResult(_result(again, coordinator.weights_fingerprint), timeout=10)
    assert not duplicate.accepted and "duplicate" in duplicate.reason


def test_expired_lease_goes_to_another_worker(optimizer):
    stub, coordinator, clock = optimizer
    first = stub.GetWork(pb.GetWorkRequest(worker_id="slow"), timeout=10).lease
    clock.now += 31
    again = stub.GetWork(pb.GetWorkRequest(worker_id="fast"), timeout=10).lease
    assert again.lease_id == first.lease_id
    assert coordinator.leases.reassignments == 1
    late = stub.ReportResult(_result(first, coordinator.weights_fingerprint, worker="slow"), timeout=10)
    assert late.accepted  # the first answer wins; the reassigned copy's answer will be the duplicate


def test_a_released_lease_goes_to_the_next_worker_at_once(optimizer):
    stub, coordinator, clock = optimizer
    first = stub.GetWork(pb.GetWorkRequest(worker_id="stopping"), timeout=10).lease
    not_its_own = pb.ReleaseLeaseRequest(worker_id="other", lease_id=first.lease_id)
    assert not stub.ReleaseLease(not_its_own, timeout=10).released  # only its holder may hand it back
    assert first.lease_id in coordinator.leases.outstanding
    assert stub.ReleaseLease(pb.ReleaseLeaseRequest(worker_id="stopping", lease_id=first.lease_id),
                             timeout=10).released
    again = stub.GetWork(pb.GetWorkRequest(worker_id="next"), timeout=10).lease  # no time has passed
    assert again.lease_id == first.lease_id
    status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert (status.lease_releases, status.lease_reassignments) == (1, 0)
    twice = pb.ReleaseLeaseRequest(worker_id="stopping", lease_id=first.lease_id)
    assert not stub.ReleaseLease(twice, timeout=10).released  # now out with "next": nothing changes
    assert stub.ReportResult(_result(again, coordinator.weights_fingerprint, worker="next"), timeout=10).accepted


def test_malformed_rpcs_get_invalid_argument_and_change_nothing(optimizer):
    stub, coordinator, _ = optimizer
    assert "worker_id" in _invalid(stub.Join, pb.JoinRequest())
    assert "ahead" in _invalid(stub.GetWork, pb.GetWorkRequest(worker_id="w", applied_generation=5))
    lease = stub.GetWork(pb.GetWorkRequest(worker_id="w"), timeout=10).lease
    fp = coordinator.weights_fingerprint
    assert "needs 4 rewards" in _invalid(stub.ReportResult, _result(lease, fp, count=3))
    assert "with status OK" in _invalid(stub.ReportResult, _result(lease, fp, reward=float("inf")))
    assert "with status OK" in _invalid(stub.ReportResult, _result(lease, fp, reward=float("nan")))
    unknown = _result(lease, fp)
    unknown.statuses[1] = 9
    assert "statuses[1]: 9" in _invalid(stub.ReportResult, unknown)
    greedy = _result(lease, fp)
    greedy.generated_tokens = 10**9
    assert "generated_tokens" in _invalid(stub.ReportResult, greedy)
    negative = _result(lease, fp)
    negative.generate_seconds = -1.0
    assert "generate_seconds" in _invalid(stub.ReportResult, negative)
    assert "lease_id is empty" in _invalid(stub.ReleaseLease, pb.ReleaseLeaseRequest(worker_id="w"))
    assert "worker_id" in _invalid(stub.ReleaseLease, pb.ReleaseLeaseRequest(lease_id=lease.lease_id))
    assert lease.lease_id in coordinator.leases.outstanding and coordinator.generation == 0
    assert not coordinator.workers["w"].leases_completed


def test_status_command_prints_the_run(optimizer):
    stub, coordinator, _ = optimizer
    stub.GetWork(pb.GetWorkRequest(worker_id="w7"), timeout=10)
    out = subprocess.run([sys.executable, "-m", "hatchery.cli", "status", stub.address], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    status = json.loads(out)
    assert status["run_id"] == coordinator.run_dir.name and status["workers"][0]["worker_id"] == "w7"


def _finish_generation(stub, coordinator, worker="w1", rewards=(1.0, 1.0)):
    """Reports the evaluation and both training leases of generation 0, member m's rewards rewards[m % 2]."""
    fp = coordinator.weights_fingerprint
    evaluation = stub.GetWork(pb.GetWorkRequest(worker_id=worker), timeout=10).lease
    assert stub.ReportResult(_result(evaluation, fp, worker), timeout=10).accepted
    for lease in [stub.GetWork(pb.GetWorkRequest(worker_id=worker), timeout=10).lease for _ in range(2)]:
        report = _result(lease, fp, worker)
        del report.rewards[:]
        members = range(lease.member_start, lease.member_end)
        report.rewards.extend(rewards[m % 2] for m in members for _ in lease.prompts)
        assert stub.ReportResult(report, timeout=10).accepted


def test_a_huge_finite_reward_shapes_like_any_other(optimizer):
    """Issue 24, finding 2: a reward of 1.7e308 with status OK overflowed the shaping's mean, the
    record's fitness became NaN and so did the weights. Fails before the fix (NaN fitness)."""
    stub, coordinator, _ = optimizer
    _finish_generation(stub, coordinator, rewards=(1.7e308, 0.0))
    (record,) = read_log(coordinator.run_dir / "updates.jsonl")
    assert record.fitness == (1.0, -1.0, 1.0, -1.0)  # exactly what rewards of 1 and 0 give
    assert all(bool(t.weight.isfinite().all()) for t in coordinator.targets)


def test_an_update_that_would_not_stay_finite_fails_the_run_and_writes_nothing(tiny_llama_dir, tmp_path):
    """Issue 24, finding 2: per-prompt centring keeps the rewards' units, so rewards of 1e300 make a step
    no float32 weight holds. The generation is refused, naming it and the cause; the log keeps what
    it had, the weights are untouched and workers hear that the run is over. Fails before the fix."""
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)},
                        "task": {"heldout_size": 4}, "es": {"population": 4, "shaping": "centered"},
                        "train": {"prompts_per_member": 2, "eval_every": 100, "members_per_lease": 2}})
    coordinator = Coordinator(cfg, load_model(tiny_llama_dir), tmp_path / "run", clock=Clock())
    server = optimizer_server(coordinator, prepare_start(cfg, coordinator.run_dir))
    server.start()
    try:
        stub = optimizer_pb2_grpc.OptimizerServiceStub(channel(server.address))
        before = [t.weight.clone() for t in coordinator.targets]
        _finish_generation(stub, coordinator, rewards=(1e300, -1e300))
        assert coordinator.failure.startswith("generation 0: refusing an update")
        assert "1e+300" in coordinator.failure and "centered" in coordinator.failure
        assert read_log(tmp_path / "run" / "updates.jsonl") == []
        assert all(torch.equal(a, t.weight) for a, t in zip(before, coordinator.targets))
        assert stub.GetWork(pb.GetWorkRequest(worker_id="w1", applied_generation=0), timeout=10).finished
    finally:
        server.stop()


def test_only_a_worker_the_lease_was_handed_to_may_report_it(optimizer):
    """Issue 24, finding 2: any worker could report a lease another held. Fails before the fix."""
    stub, coordinator, _ = optimizer
    lease = stub.GetWork(pb.GetWorkRequest(worker_id="w1"), timeout=10).lease  # the held-out evaluation
    intruder = stub.ReportResult(_result(lease, coordinator.weights_fingerprint, worker="intruder"), timeout=10)
    assert not intruder.accepted and "'intruder'" in intruder.reason
    assert lease.lease_id in coordinator.leases.outstanding and "intruder" not in coordinator.workers
    assert stub.ReportResult(_result(lease, coordinator.weights_fingerprint), timeout=10).accepted


@pytest.mark.parametrize("method", ["Join", "GetWork", "ReportResult", "ReleaseLease", "GetStatus",
                                    "FetchCheckpoint", "FetchModelFile"])
def test_undecodable_bytes_get_invalid_argument(optimizer, method):
    """Issue 24, finding 6: bytes that are no message got INTERNAL ("Exception deserializing request!")."""
    stub, coordinator, _ = optimizer
    ch = channel(stub.address)
    streaming = method.startswith("Fetch")
    call = (ch.unary_stream if streaming else ch.unary_unary)(f"/hatchery.v1.OptimizerService/{method}")
    with pytest.raises(grpc.RpcError) as err:
        reply = call(b"\xff\xff\xff\xff", timeout=10)
        list(reply) if streaming else reply
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert method in err.value.details() and coordinator.generation == 0


def test_the_worker_registry_and_status_stay_bounded(optimizer):
    """Issue 24, finding 4: 260,000 worker ids grew the optimizer by 100 MB and made GetStatus larger
    than a message may be. Fails before the fix (every id kept and listed)."""
    stub, coordinator, clock = optimizer
    for i in range(MAX_WORKERS + 50):  # ids as many as a misbehaving client sends (setup, in process)
        coordinator.join(f"w{i}")
    stub.Join(pb.JoinRequest(worker_id="newest"), timeout=10)
    status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert status.workers_total == len(coordinator.workers) == MAX_WORKERS
    assert len(status.workers) == STATUS_WORKERS and status.workers[0].worker_id == "newest"
    assert "w0" not in coordinator.workers  # the least recently seen went first
    clock.now += 2 * 30 + 1  # twice the lease timeout: everyone is gone but whoever calls now
    stub.GetWork(pb.GetWorkRequest(worker_id="back"), timeout=10)
    assert [w.worker_id for w in stub.GetStatus(pb.GetStatusRequest(), timeout=10).workers] == ["back"]


def _drive(stub, coordinator, clock, seconds_per_lease=1.0):
    """Answers leases, as many completions as each asks for, until none is handed out; the last GetWork."""
    while (work := stub.GetWork(pb.GetWorkRequest(worker_id="w1", applied_generation=coordinator.generation),
                                timeout=10)).HasField("lease"):
        clock.now += seconds_per_lease
        result = _result(work.lease, coordinator.weights_fingerprint, reward=float(work.lease.member_start))
        result.completions.extend(f"answer {i}" for i in range(work.lease.return_completions))
        assert stub.ReportResult(result, timeout=10).accepted
    return work


def test_pause_holds_every_lease_and_keeps_paused_time_off_the_clock(optimizer):
    stub, coordinator, clock = optimizer
    evaluation = stub.GetWork(pb.GetWorkRequest(worker_id="w1"), timeout=10).lease
    clock.now += 5.0
    stub.ReportResult(_result(evaluation, coordinator.weights_fingerprint), timeout=10)
    first = stub.GetWork(pb.GetWorkRequest(worker_id="w1"), timeout=10).lease  # out when the pause comes
    assert stub.PauseRun(pb.PauseRunRequest(), timeout=10).state == pb.RUN_STATE_PAUSED
    for _ in range(30):  # three lease timeouts of polling: no lease, no error, the same generation
        clock.now += 3.0
        work = stub.GetWork(pb.GetWorkRequest(worker_id="w1"), timeout=10)
        assert not work.HasField("lease") and work.retry_after_seconds == 1.0 and not work.finished
    assert stub.ReportResult(_result(first, coordinator.weights_fingerprint), timeout=10).accepted  # in flight: kept
    status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert (status.state, status.generation) == (pb.RUN_STATE_PAUSED, 0)
    assert RunControl.load(coordinator.run_dir) == RunControl(paused=True)  # what a restarted optimizer reads
    assert stub.ResumeRun(pb.ResumeRunRequest(), timeout=10).state == pb.RUN_STATE_RUNNING
    clock.now += 2.0
    second = stub.GetWork(pb.GetWorkRequest(worker_id="w1"), timeout=10).lease
    assert stub.ReportResult(_result(second, coordinator.weights_fingerprint), timeout=10).accepted
    assert coordinator.generation == 1
    assert coordinator.rows_since(0)[0].seconds == 2.0  # the 90 paused seconds are not training time
    assert stub.ResumeRun(pb.ResumeRunRequest(), timeout=10).state == pb.RUN_STATE_RUNNING  # not paused: no-op


def test_stop_ends_the_run_after_the_generation_in_flight(optimizer):
    stub, coordinator, clock = optimizer
    evaluation = stub.GetWork(pb.GetWorkRequest(worker_id="w1"), timeout=10).lease
    stub.ReportResult(_result(evaluation, coordinator.weights_fingerprint), timeout=10)
    first = stub.GetWork(pb.GetWorkRequest(worker_id="w1"), timeout=10).lease
    stub.PauseRun(pb.PauseRunRequest(), timeout=10)
    assert stub.StopRun(pb.StopRunRequest(), timeout=10).state == pb.RUN_STATE_FINISHING
    assert stub.ReportResult(_result(first, coordinator.weights_fingerprint), timeout=10).accepted
    work = _drive(stub, coordinator, clock)  # the rest of generation 0 (a stop resumes), then the final evaluation
    assert work.finished and coordinator.generation == 1
    assert [(s.generation, s.trained) for s in coordinator.history] == [(0, True), (1, False)]
    assert coordinator.completed.wait(10) and coordinator.state() == pb.RUN_STATE_FINISHED
    with pytest.raises(grpc.RpcError) as err:
        stub.PauseRun(pb.PauseRunRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "finished" in err.value.details()


def test_watchers_see_every_generation_once_in_order_and_the_end(optimizer):
    """One watcher follows from the start; another leaves after two events and comes back
    from the generation after the last one it saw. Both see the same run, as metrics.jsonl has it."""
    stub, coordinator, clock = optimizer
    whole = []
    watcher = threading.Thread(target=lambda: whole.extend(stub.WatchRun(pb.WatchRunRequest(), timeout=60)))
    watcher.start()
    assert _drive(stub, coordinator, clock).finished
    watcher.join(30)
    first_two = []
    for event in (early := stub.WatchRun(pb.WatchRunRequest(), timeout=60)):
        first_two.append(event)
        if len(first_two) == 2:
            early.cancel()
            break
    rest = list(stub.WatchRun(pb.WatchRunRequest(from_generation=first_two[-1].generation + 1), timeout=60))
    rows = [json.loads(line) for line in (coordinator.run_dir / "metrics.jsonl").read_text().splitlines()]
    for events in (whole, first_two + rest):
        assert [e.generation for e in events] == [0, 1, 2, 2]  # two trained, the final evaluation, the end
        assert [struct_values(e.row) for e in events[:3]] == rows and not events[3].HasField("row")
        assert events[-1].state == pb.RUN_STATE_FINISHED
    assert [e.HasField("evaluation") for e in whole[:3]] == [True, False, True]  # at 0 and the final one
    assert rows[0]["drift_kl"] < 1e-3 and rows[2]["drift_kl"] is not None  # the start model; the final one
    assert rows[1]["drift_kl"] is None  # measured with the held-out evaluations only
    samples = whole[0].evaluation.samples
    assert [(s.prompt, s.reference, s.completion, s.reward) for s in samples] == [
        (p.text, p.reference, f"answer {i}", 0.0) for i, p in enumerate(coordinator.task.heldout[:4])]


def test_run_control_takes_its_own_token(tiny_llama_dir, tmp_path):
    """Workers' token: the workers' calls, status and watch. Control token: pause, resume, stop,
    status and watch. A worker's token cannot pause or stop a run."""
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)},
                        "task": {"heldout_size": 2}, "es": {"population": 2}})
    coordinator = Coordinator(cfg, load_model(tiny_llama_dir), tmp_path / "run")
    start = prepare_start(cfg, tmp_path / "run")
    servers = {"both": optimizer_server(coordinator, start, token="worker-t", control="control-t"),
               "workers only": optimizer_server(coordinator, start, token="worker-t")}
    for server in servers.values():
        server.start()

    def code(name, token, method, request, timeout=10.0):
        ch = channel(servers[name].address, token=token)
        try:
            reply = getattr(optimizer_pb2_grpc.OptimizerServiceStub(ch), method)(request, timeout=timeout)
            if method == "WatchRun":
                list(reply)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as err:
            return err.code(), err.details()
        finally:
            ch.close()

    pause, status = ("PauseRun", pb.PauseRunRequest()), ("GetStatus", pb.GetStatusRequest())
    work = ("GetWork", pb.GetWorkRequest(worker_id="w"))
    try:
        assert code("both", "worker-t", *pause) == (grpc.StatusCode.PERMISSION_DENIED,
                                                    "a worker's token cannot control a run: send "
                                                    "$HATCHERY_CONTROL_TOKEN")
        assert code("both", "", *pause)[0] == grpc.StatusCode.UNAUTHENTICATED
        assert code("both", "control-t", *work)[0] == grpc.StatusCode.PERMISSION_DENIED
        for token in ("worker-t", "control-t"):
            assert code("both", token, *status)[0] == grpc.StatusCode.OK
        assert code("both", "control-t", *pause)[0] == grpc.StatusCode.OK and coordinator.control.paused
        assert code("both", "control-t", "StopRun", pb.StopRunRequest())[0] == grpc.StatusCode.OK
        watch = ("WatchRun", pb.WatchRunRequest(from_generation=10))
        assert code("both", "worker-t", *watch, timeout=1.0)[0] == grpc.StatusCode.DEADLINE_EXCEEDED  # let in
        refused = code("workers only", "worker-t", *pause)
        assert refused[0] == grpc.StatusCode.PERMISSION_DENIED and "set $HATCHERY_CONTROL_TOKEN" in refused[1]
    finally:
        for server in servers.values():
            server.stop()
