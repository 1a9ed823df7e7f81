"""No training lost to a crash: SIGKILL and resume, dying and late-joining workers.

Every process here is a real `hatchery` service on loopback. Crashes are
injected with HATCHERY_FAILPOINT (the process SIGKILLs itself at a named
point), so each test hits the moment it names instead of racing a timer.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hatchery.core.checkpoint import latest_checkpoint, write_checkpoint
from hatchery.core.config import parse_config
from hatchery.core.update_log import UpdateLog, UpdateRecord, read_log
from hatchery.es import EsUpdater, StepRule, find_targets
from hatchery.launcher import spawn_service, wait_for_port

GENERATIONS = 6


def _config(model_dir, run_dir) -> dict:
    return {"run_dir": str(run_dir), "model": {"source": str(model_dir)}, "grader": "length",
            "task": {"name": "arith", "heldout_size": 8, "max_new_tokens": 6},
            # anchored Adam steps: the densest step rule, so every crash test replays the anchor too
            "es": {"population": 6, "rank": 2, "sigma": 0.05, "lr": 0.05, "optimizer": "adam", "anchor_decay": 2.0},
            # spread selection depends on what earlier generations observed: a resume must rebuild it;
            # the optimizer's own update runs beside the next generation, so crashes land between too
            "train": {"generations": GENERATIONS, "prompts_per_member": 2, "eval_every": 3, "overlap_update": True,
                      "prompt_selection": "spread", "members_per_lease": 2, "checkpoint_every": 2,
                      "checkpoints_kept": 2,
                      "lease_timeout_seconds": 5}}


def _hatchery(args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hatchery.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def _write_config(tmp_path, model_dir, name="run"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_config(model_dir, tmp_path / name)))
    return path, tmp_path / name


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama_dir, tmp_path_factory):
    """The single-worker run every crash test must reproduce exactly."""
    config_path, run_dir = _write_config(tmp_path_factory.mktemp("uninterrupted"), tiny_llama_dir)
    out = _hatchery(["run", str(config_path)])
    assert out.returncode == 0, out.stdout + out.stderr
    return run_dir


def _assert_same_run(run_dir, reference_dir):
    assert ([r.fitness for r in read_log(run_dir / "updates.jsonl")]
            == [r.fitness for r in read_log(reference_dir / "updates.jsonl")])
    ours, theirs = run_dir / "model" / "model.safetensors", reference_dir / "model" / "model.safetensors"
    assert ours.read_bytes() == theirs.read_bytes(), "final weights must be byte-identical"


# own_update: the record is durable and went out with the next generation's lease, the
# optimizer's own update (beside that generation) has not finished
@pytest.mark.parametrize("point", ["mid_generation:3", "log_appended:3", "own_update:3",
                                   "checkpoint_written_not_renamed:4"])
def test_sigkill_then_resume_ends_with_identical_weights(point, tiny_llama_dir, tmp_path, uninterrupted):
    config_path, run_dir = _write_config(tmp_path, tiny_llama_dir)
    crashed = _hatchery(["run", str(config_path)], env={**os.environ, "HATCHERY_FAILPOINT": point})
    assert crashed.returncode != 0
    assert "optimizer service exited with code -9" in crashed.stderr
    assert f"hatchery run --resume {run_dir}" in crashed.stderr
    logged = len(read_log(run_dir / "updates.jsonl"))
    assert logged == (3 if point.startswith("mid_generation") else 4)  # the log holds exactly what was announced
    if point.startswith("checkpoint"):
        assert (run_dir / "checkpoints" / ".ckpt-00000004.safetensors.tmp").exists()
        assert latest_checkpoint(run_dir / "checkpoints").generation == 2

    resumed = _hatchery(["run", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"gen    {logged}/{GENERATIONS}" in resumed.stdout and "gen    0/" not in resumed.stdout
    _assert_same_run(run_dir, uninterrupted)
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    kept = sorted(c.name for c in (run_dir / "checkpoints").iterdir())
    assert len(kept) == 2 and kept[-1] == "ckpt-00000006.safetensors"  # older ones pruned


def test_resume_refuses_a_folder_without_a_run(tmp_path):
    out = _hatchery(["run", "--resume", str(tmp_path)], timeout=120)
    assert out.returncode == 2 and "holds no run (config.yaml is missing)" in out.stderr


def _start(args, name, tmp_path, env=None):
    port_file = tmp_path / f"{name}.port"
    proc = spawn_service([*args, "--port", "0", "--port-file", str(port_file)], tmp_path / f"{name}.log", env)
    return proc, port_file


def test_workers_that_die_or_join_late_leave_the_result_unchanged(tiny_llama_dir, tmp_path, uninterrupted, procs):
    config_path, run_dir = _write_config(tmp_path, tiny_llama_dir)
    config = yaml.safe_load(config_path.read_text())
    config["train"]["lease_timeout_seconds"] = 20  # the stall a dead worker's lease causes: time for "late" to join
    config_path.write_text(yaml.safe_dump(config))
    procs["reward"], reward_port = _start(["reward"], "reward", tmp_path)
    procs["optimizer"], optimizer_port = _start(["optimizer", "--config", str(config_path)], "optimizer", tmp_path)
    optimizer = f"127.0.0.1:{wait_for_port(optimizer_port, procs['optimizer'], 'optimizer')}"
    reward = f"127.0.0.1:{wait_for_port(reward_port, procs['reward'], 'reward')}"

    def worker(name, *flags, env=None):
        procs[name], _ = _start(["inference", "--optimizer-address", optimizer, "--reward-address", reward,
                                 "--worker-id", name, *flags], name, tmp_path, env)

    worker("steady")
    worker("doomed", env={"HATCHERY_FAILPOINT": "lease_received:2"})  # dies holding a lease of generation >= 2
    assert procs["doomed"].wait(timeout=300) == -9
    worker("late", "--fetch-files")  # joins from a model and a checkpoint streamed over gRPC
    assert procs["optimizer"].wait(timeout=300) == 0
    assert procs["steady"].wait(timeout=60) == 0 and procs["late"].wait(timeout=60) == 0
    joined = re.search(r"worker late joined run run at generation (\d+)", (tmp_path / "late.log").read_text())
    assert joined and int(joined.group(1)) in (2, 4), "the late worker starts from a checkpoint"
    _assert_same_run(run_dir, uninterrupted)


def test_a_worker_outlives_an_optimizer_crash_and_resume(tiny_llama_dir, tmp_path, uninterrupted, procs):
    config_path, run_dir = _write_config(tmp_path, tiny_llama_dir)
    port = _free_port()  # the restarted optimizer must come back on the same address
    procs["reward"], reward_port = _start(["reward"], "reward", tmp_path)
    procs["optimizer"] = spawn_service(["optimizer", "--config", str(config_path), "--port", str(port)],
                                       tmp_path / "optimizer.log", {"HATCHERY_FAILPOINT": "log_appended:2"})
    reward = f"127.0.0.1:{wait_for_port(reward_port, procs['reward'], 'reward')}"
    procs["worker"], _ = _start(["inference", "--optimizer-address", f"127.0.0.1:{port}", "--reward-address",
                                 reward, "--worker-id", "survivor"], "worker", tmp_path)
    assert procs["optimizer"].wait(timeout=300) == -9
    procs["optimizer"] = spawn_service(["optimizer", "--resume", str(run_dir), "--port", str(port)],
                                       tmp_path / "optimizer-resumed.log")
    assert procs["optimizer"].wait(timeout=300) == 0
    assert procs["worker"].wait(timeout=60) == 0
    assert "unreachable" in (tmp_path / "worker.log").read_text()
    _assert_same_run(run_dir, uninterrupted)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_reward_service_crash_costs_no_generation(tiny_llama_dir, tmp_path, uninterrupted, procs):
    """The reward service SIGKILLed mid-run and restarted on the same address a few
    seconds later: the worker scores its completions once it is back."""
    config_path, run_dir = _write_config(tmp_path, tiny_llama_dir)
    config = yaml.safe_load(config_path.read_text())
    config["reward"] = {"retries": 1}  # the outage outlasts the client's retries: the worker waits it out
    config_path.write_text(yaml.safe_dump(config))
    reward = f"127.0.0.1:{_free_port()}"
    procs["reward"] = spawn_service(["reward", "--port", reward.split(":")[1]], tmp_path / "reward.log")
    procs["optimizer"], optimizer_port = _start(["optimizer", "--config", str(config_path)], "optimizer", tmp_path)
    optimizer = f"127.0.0.1:{wait_for_port(optimizer_port, procs['optimizer'], 'optimizer')}"
    procs["worker"], _ = _start(["inference", "--optimizer-address", optimizer, "--reward-address", reward,
                                 "--worker-id", "w"], "worker", tmp_path)
    deadline = time.monotonic() + 300
    log = run_dir / "updates.jsonl"
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    procs["reward"].kill()
    procs["reward"].wait()
    time.sleep(4)
    procs["reward"] = spawn_service(["reward", "--port", reward.split(":")[1]], tmp_path / "reward-2.log")
    assert procs["optimizer"].wait(timeout=300) == 0
    assert procs["worker"].wait(timeout=60) == 0
    assert "scoring this lease's completions again" in (tmp_path / "worker.log").read_text()
    _assert_same_run(run_dir, uninterrupted)


def test_sigterm_to_a_run_stops_its_services(tiny_llama_dir, tmp_path):
    """`kill` or a container stop of `hatchery run` must not leave its services training on their own."""
    config = _config(tiny_llama_dir, tmp_path / "run")
    config["train"]["generations"] = 10_000
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run = subprocess.Popen([sys.executable, "-m", "hatchery.cli", "run", str(config_path)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        metrics, deadline = tmp_path / "run" / "metrics.jsonl", time.monotonic() + 300
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # training under way
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        services = [int(pid) for pid in open(f"/proc/{run.pid}/task/{run.pid}/children").read().split()]
        assert len(services) == 3
        run.terminate()
        assert run.wait(timeout=60) == 128 + signal.SIGTERM
        assert [pid for pid in services if os.path.exists(f"/proc/{pid}")] == []
    finally:
        run.kill()
        run.wait()


def test_a_worker_told_to_stop_mid_lease_hands_it_back_at_the_next_token(tiny_llama_dir, tmp_path):
    """A stop (SIGTERM) cuts the forward pass in hand short: the partial completions are
    not scored or reported, and the lease goes back to the optimizer at once (ReleaseLease),
    so the next worker to ask gets it without waiting for its deadline."""
    from hatchery.bench.sync import loopback_run

    config = _config(tiny_llama_dir, tmp_path / "run")
    config["task"]["max_new_tokens"] = 64
    with loopback_run(parse_config(config)) as (coordinator, worker, _):
        stop, forwards = threading.Event(), []

        def stop_at_the_second_forward(*_):
            forwards.append(1)
            if len(forwards) == 2:
                stop.set()

        worker.evaluator.lm.model.register_forward_hook(stop_at_the_second_forward)
        held = coordinator.leases.pending[0].lease_id  # the lease the worker is about to get
        worker.run(stop)
        assert len(forwards) == 2  # not the lease's 64 tokens
        assert worker.leases_completed == 0 and coordinator.history == []  # never reported
        assert coordinator.leases.outstanding == {} and coordinator.leases.releases == 1
        successor = coordinator.get_work("w2", 0).lease  # well inside the lease's 600 s deadline
        assert successor.lease_id == held and coordinator.leases.reassignments == 0


def test_a_torn_last_log_line_is_dropped_and_a_corrupt_one_refused(tmp_path):
    path = tmp_path / "updates.jsonl"
    log = UpdateLog(path)
    for g in range(2):
        log.append(UpdateRecord(generation=g, noise_epoch=g, lr=0.1, sigma=0.0, fitness=(1.0, -1.0)))
    log.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"generation": "2", "fitn')  # a write cut short by SIGKILL
    assert len(UpdateLog(path).records) == 2 and path.read_bytes() == whole
    path.write_bytes(whole.replace(b'"generation": "1"', b'"generation": "5"'))
    with pytest.raises(ValueError, match="updates.jsonl:2: record for generation 5, expected 1"):
        UpdateLog(path)


@pytest.mark.parametrize("optimizer, moment", [("adam", "adam_m/"), ("momentum", "momentum/")])
def test_checkpoint_restores_weights_and_optimizer_state_exactly(tiny_llama_dir, tmp_path, optimizer, moment):
    from hatchery.core.model import load_model

    def updater():
        return EsUpdater(find_targets(load_model(tiny_llama_dir).model), seed=3, rank=2, rule=StepRule(optimizer))

    fitness = [[1.0, -1.0, 0.5, 0.2], [0.3, 0.1, -2.0, 1.0], [-1.0, 1.0, 0.0, 0.4]]
    straight = updater()
    for epoch, f in enumerate(fitness):
        straight.apply(epoch, 0.01, f)
    first = updater()
    for epoch, f in enumerate(fitness[:2]):
        first.apply(epoch, 0.01, f)
    for g in (1, 2):
        write_checkpoint(tmp_path, g, first.state_dict(), first.steps, keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000002.safetensors"]
    second = updater()
    ckpt = latest_checkpoint(tmp_path)
    second.load_state_dict(*ckpt.load())
    second.apply(2, 0.01, fitness[2])
    for a, b in zip(straight.targets, second.targets):
        assert torch.equal(a.weight, b.weight), a.name
    saved = load_file(ckpt.path)
    assert any(k.startswith(moment) for k in saved) and any(k.startswith("master/") for k in saved)


def test_config_refuses_bad_checkpoint_settings():
    with pytest.raises(ValueError, match="train.checkpoints_kept: must be >= 1"):
        parse_config({"train": {"checkpoints_kept": 0}})


@pytest.mark.parametrize(("point", "path"), [("log_append:3", "updates.jsonl"), ("metrics_append:3", "metrics.jsonl"),
                                             ("checkpoint_write:4", "checkpoints/.ckpt-00000004.safetensors.tmp")])
def test_a_failed_write_stops_the_run_and_resume_ends_identical(point, path, tiny_llama_dir, tmp_path, uninterrupted):
    """Issue 24, finding 3: ENOSPC while writing a run's file left the optimizer serving but stuck
    and the worker crashing with UNKNOWN. Now the optimizer stops naming the file, the worker
    exits cleanly, and once space is back the run resumes to the same bytes. Fails before the fix."""
    config_path, run_dir = _write_config(tmp_path, tiny_llama_dir)
    failed = _hatchery(["run", str(config_path)], env={**os.environ, "HATCHERY_FAILPOINT": f"{point}:enospc"})
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"cannot write {run_dir / path}: No space left on device" in failed.stderr
    assert "optimizer service exited with code 1" in failed.stderr and "Traceback" not in failed.stderr
    assert "UNKNOWN" not in (run_dir / "inference.log").read_text()
    resumed = _hatchery(["run", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _assert_same_run(run_dir, uninterrupted)


def test_a_disk_filled_to_the_brim_stops_the_run_and_resume_ends_identical(tiny_llama_dir, tmp_path, uninterrupted):
    """A real filesystem that fills up mid-run: a tmpfs with room for what a run writes when it
    starts (the drift probe's reference distributions) and one checkpoint and a half."""
    disk = tmp_path / "disk"
    disk.mkdir()
    checkpoint = max(p.stat().st_size for p in (uninterrupted / "checkpoints").iterdir())
    size = int(checkpoint * 1.5) + (uninterrupted / "drift-reference.safetensors").stat().st_size
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not permitted'}); "
                    "the failpoint test covers each write")
    try:
        config_path, run_dir = _write_config(disk, tiny_llama_dir)
        failed = _hatchery(["run", str(config_path)])
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert re.search(rf"cannot write {re.escape(str(run_dir))}/\S+: .*No space left on device", failed.stderr)
        assert len(read_log(run_dir / "updates.jsonl")) >= 1  # it filled up mid-run, not at the start
        assert "Traceback" not in failed.stderr
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space is back
        resumed = _hatchery(["run", "--resume", str(run_dir)])
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        _assert_same_run(run_dir, uninterrupted)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_service_that_exits_before_it_starts_ends_the_run_in_one_line(tiny_llama_dir, tmp_path):
    """A plug-in that cannot load stops the reward service before it serves: `hatchery run` says
    so and exits 1 without a traceback of its own."""
    config = _config(tiny_llama_dir, tmp_path / "run")
    config["reward"] = {"graders": {"broken": {"type": "python", "function": "no_such_module:score"}}}
    config["grader"] = "broken"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    done = _hatchery(["run", str(config_path)], timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"hatchery: the reward service exited with code \d+ before it started \(the services' logs "
                     rf"are in {re.escape(str(tmp_path / 'run'))}\)", done.stderr), done.stderr
    assert "no_such_module" in (tmp_path / "run" / "reward.log").read_text()  # why, in the service's own log
    assert "Traceback" not in done.stderr
