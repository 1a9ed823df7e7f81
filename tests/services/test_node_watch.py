"""The Node.js run watcher (examples/watch-node) against a real optimizer server: the run-control
contract is the proto's, whatever the client's language. Needs node and its packages (see node.py)."""

import json
import subprocess
import time
from pathlib import Path

from node import EXAMPLES, node_for

from hatchery.core.config import parse_config
from hatchery.core.model import load_model
from hatchery.core.start import prepare_start
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import reward_pb2
from optimizer_svc.coordinator import Coordinator
from optimizer_svc.server import optimizer_server


def _answer_until(coordinator: Coordinator, generation: int) -> None:
    """Plays a worker in process: every lease answered with reward 1 until `generation` is reached."""
    while coordinator.generation < generation and not coordinator.finished.is_set():
        lease = coordinator.get_work("w", coordinator.generation).lease
        if not lease.lease_id:
            time.sleep(0.01)
            continue
        rows = lease.member_end - lease.member_start if lease.kind == pb.LEASE_KIND_TRAIN else 1
        n = rows * len(lease.prompts)
        assert coordinator.report(pb.ReportResultRequest(
            worker_id="w", lease_id=lease.lease_id, generation=lease.generation, rewards=[1.0] * n,
            statuses=[reward_pb2.SCORE_STATUS_OK] * n, weights_fingerprint=coordinator.weights_fingerprint,
            completions=["seven"] * lease.return_completions)).accepted


def test_the_node_watcher_sees_every_generation_once_across_an_optimizer_restart(tiny_llama_dir, tmp_path: Path):
    node = node_for("watch-node")
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)},
                        "task": {"heldout_size": 2}, "es": {"population": 2},
                        "train": {"generations": 4, "prompts_per_member": 1, "eval_every": 2}})
    coordinator = Coordinator(cfg, load_model(tiny_llama_dir), tmp_path / "run")
    start = prepare_start(cfg, tmp_path / "run")
    server = optimizer_server(coordinator, start)
    server.start()
    watcher = subprocess.Popen([node, str(EXAMPLES / "watch-node" / "watch.js"), server.address],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _answer_until(coordinator, 2)
        time.sleep(1.0)  # the watcher has printed generations 0 and 1
        server.stop()  # the optimizer goes away mid-stream and comes back on the same port
        time.sleep(1.5)
        server = optimizer_server(coordinator, start, port=server.port)
        server.start()
        _answer_until(coordinator, 5)
        out, err = watcher.communicate(timeout=60)
    finally:
        watcher.kill()
        server.stop()
    lines = [json.loads(line) for line in out.splitlines()]
    assert watcher.returncode == 0, err
    assert [line.get("generation") for line in lines[:-1]] == [0, 1, 2, 3, 4]  # once each, in order
    assert lines[-1] == {"state": "finished", "generations": 4}
    assert [line["heldout_reward"] for line in lines[:-1]] == [1.0, None, 1.0, None, 1.0]
    assert lines[0]["sample"] == "seven" and lines[1]["reward_mean"] == 1.0
