"""Driving and watching a run from outside, every service its own process on loopback:
watchers across an optimizer SIGKILL and resume, pause and resume against an unpaused
reference, a restart after the run ended, `hatchery stop` and `hatchery watch`."""

import socket
import subprocess
import sys
import threading
import time

import yaml

from hatchery.client import RunClient
from hatchery.core.config import parse_config
from hatchery.core.update_log import read_log
from hatchery.launcher import spawn_service, wait_for_port
from hatchery.v1 import optimizer_pb2 as pb
from reference import run_reference

GENERATIONS = 8
LEASE_TIMEOUT = 1.0


def _config(model_dir, run_dir, generations=GENERATIONS) -> dict:
    return {"run_dir": str(run_dir), "model": {"source": str(model_dir)}, "grader": "length",
            "task": {"name": "arith", "heldout_size": 6, "max_new_tokens": 6},
            "es": {"population": 4, "rank": 2, "sigma": 0.05, "lr": 0.05},
            "train": {"generations": generations, "prompts_per_member": 2, "eval_every": 3, "members_per_lease": 2,
                      "checkpoint_every": 2, "lease_timeout_seconds": LEASE_TIMEOUT}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, timeout=120.0, what="the run"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_watch_pause_crash_resume_and_restart_after_the_end(tiny_llama_dir, tmp_path, procs):
    config = _config(tiny_llama_dir, tmp_path / "run")
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = _free_port()  # a restarted optimizer comes back on the same address, as behind a Service
    address = f"127.0.0.1:{port}"

    def optimizer(name, *flags, env=None):
        procs["optimizer"] = spawn_service(["optimizer", *flags, "--port", str(port), "--keep-serving"],
                                           tmp_path / f"{name}.log", env)

    procs["reward"] = spawn_service(["reward", "--port", "0", "--port-file", str(tmp_path / "reward.port")],
                                    tmp_path / "reward.log")
    reward = f"127.0.0.1:{wait_for_port(tmp_path / 'reward.port', procs['reward'], 'reward')}"
    optimizer("optimizer", "--config", str(config_path), env={"HATCHERY_FAILPOINT": "log_appended:5"})
    client = RunClient(address)
    _wait(lambda: _state(client) == pb.RUN_STATE_RUNNING, what="the optimizer")
    watched = []
    watcher = threading.Thread(target=lambda: watched.extend(client.watch(reconnect_for=120.0)), daemon=True)
    watcher.start()
    assert client.pause() == "paused"  # before any worker: the whole run is held
    procs["worker"] = spawn_service(["inference", "--port", "0", "--optimizer-address", address,
                                     "--reward-address", reward, "--worker-id", "w"], tmp_path / "worker.log")
    _wait(lambda: client.status().workers, what="the worker to join")
    for _ in range(int(3 * LEASE_TIMEOUT / 0.1)):  # three lease timeouts of polling: nothing moves
        time.sleep(0.1)
        now = client.status()
        assert (now.state, now.generation, len(watched)) == (pb.RUN_STATE_PAUSED, 0, 0)
        assert now.workers[0].last_seen_seconds_ago < 2.0  # the worker keeps asking, healthy
    assert client.resume() == "running"

    assert procs["optimizer"].wait(timeout=300) == -9  # SIGKILLed after generation 5's record
    optimizer("resumed", "--config", str(config_path), "--resume-if-exists")
    watcher.join(300)
    assert not watcher.is_alive()
    assert procs["worker"].wait(timeout=60) == 0

    # Every generation once, in order, across the pause and the crash; then the end.
    assert [e.generation for e in watched] == [*range(GENERATIONS + 1), GENERATIONS]
    assert watched[-1].state == "finished" and watched[GENERATIONS].row["final"]
    # drift from the start model, at each held-out evaluation: none at the start, some once trained
    assert watched[0].row["drift_kl"] < 1e-3 < watched[GENERATIONS].row["drift_kl"]
    evaluated = [e for e in watched if e.evaluation is not None]
    assert [e.generation for e in evaluated] == [0, 3, 6, GENERATIONS]
    sample = evaluated[-1].evaluation.samples[0]
    assert sample.prompt and sample.completion and sample.reward <= 0  # the length grader: minus the length

    # Paused, killed and resumed, the run is the unpaused reference run, update for update.
    reference = run_reference(parse_config(_config(tiny_llama_dir, tmp_path / "reference")), tmp_path / "reference")
    assert (tmp_path / "run" / "updates.jsonl").read_bytes() == (tmp_path / "reference" / "updates.jsonl").read_bytes()
    assert client.status().weights_fingerprint == reference.weights_fingerprint
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()

    # Restarted after the end (as a StatefulSet restarts its pod): no training, no evaluation, finished.
    files = {name: (tmp_path / "run" / name).read_bytes() for name in ("updates.jsonl", "metrics.jsonl")}
    procs["optimizer"].terminate()
    assert procs["optimizer"].wait(timeout=60) == 0
    optimizer("after-the-end", "--config", str(config_path), "--resume-if-exists")
    _wait(lambda: _state(client) == pb.RUN_STATE_FINISHED, what="the restarted optimizer")
    again = list(client.watch())
    assert [e.generation for e in again] == [e.generation for e in watched]
    assert {name: (tmp_path / "run" / name).read_bytes() for name in files} == files
    assert procs["optimizer"].poll() is None  # still serving
    client.close()


def _state(client: RunClient) -> int:
    try:
        return client.status().state
    except Exception:  # not up yet
        return pb.RUN_STATE_UNSPECIFIED


def test_hatchery_stop_ends_a_run_within_a_generation_and_watch_follows_it(tiny_llama_dir, tmp_path):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(_config(tiny_llama_dir, tmp_path / "run", generations=10_000)))
    run = subprocess.Popen([sys.executable, "-m", "hatchery.cli", "run", str(config_path)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ports = tmp_path / "run" / "ports" / "optimizer"
        _wait(lambda: ports.exists() and ports.read_text().strip(), what="the optimizer")
        address = f"127.0.0.1:{ports.read_text().strip()}"
        watch = subprocess.Popen([sys.executable, "-m", "hatchery.cli", "watch", address],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with RunClient(address) as client:
            _wait(lambda: client.status().generation >= 2, what="two generations")
            stopped = subprocess.run([sys.executable, "-m", "hatchery.cli", "stop", address],
                                     capture_output=True, text=True, timeout=60)
            at_stop = client.status().generation
        assert stopped.returncode == 0 and stopped.stdout.strip() == "the run is finishing", stopped.stderr
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, out + err
        watched, _ = watch.communicate(timeout=60)
        assert watch.returncode == 0
    finally:
        run.kill()
    rows = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = len(read_log(tmp_path / "run" / "updates.jsonl"))
    assert trained in (at_stop, at_stop + 1)  # the generation in flight, no more
    assert len(rows) == trained + 1 and '"final": true' in rows[-1]  # and the final evaluation
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file() and (tmp_path / "run" / "rewards.png").is_file()
    lines = watched.splitlines()  # piped: a plain line per generation, then the end
    assert lines[0].startswith("gen    0/10000") and lines[-1] == f"run finished after {trained} generations"
    assert len(lines) == trained + 2
