"""The README's examples work: the minimal Python reward service, and TRL-style plug-ins."""

import subprocess
import sys
from pathlib import Path

from hatchery.launcher import wait_for_port
from hatchery.service.reward_client import Endpoint, RewardClient
from hatchery.v1 import reward_pb2 as pb
from reward_svc.specs import build_graders, close_graders

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_minimal_python_reward_service(tmp_path):
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "reward-python" / "server.py"), "--port", "0",
                             "--port-file", str(tmp_path / "port")])
    try:
        client = RewardClient([Endpoint([f"127.0.0.1:{wait_for_port(tmp_path / 'port', proc, 'example')}"])])
        rewards, statuses, _ = client.score([pb.Sample(completion=" 7 ", reference="7"),
                                          pb.Sample(completion="8", reference="7"), pb.Sample(completion="7")])
        assert rewards[:2] == [1.0, 0.0]
        assert statuses == [pb.SCORE_STATUS_OK, pb.SCORE_STATUS_OK, pb.SCORE_STATUS_NOT_APPLICABLE]
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_trl_style_plugins_from_the_examples():
    graders = build_graders({
        "accuracy": {"type": "python", "function": "trl_rewards:accuracy_reward", "path": str(EXAMPLES / "plugins"),
                     "processes": 1},
        "brevity": {"type": "python", "function": "trl_rewards:brevity_reward", "path": str(EXAMPLES / "plugins"),
                    "processes": 1}})
    try:
        samples = [pb.Sample(completion="It is 12.", reference="12"), pb.Sample(completion="13", reference="12"),
                   pb.Sample(completion="12")]
        accuracy = graders["accuracy"].score(samples)
        assert [(o.status.value, o.score) for o in accuracy] == [("ok", 1.0), ("ok", 0.0), ("not_applicable", 0.0)]
        assert [o.score for o in graders["brevity"].score(samples)] == [1 - 9 / 200, 1 - 2 / 200, 1 - 2 / 200]
    finally:
        close_graders(graders)


def test_the_minimal_python_reward_service_passes_conformance(tmp_path):
    from hatchery.conformance import Probe, check

    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "reward-python" / "server.py"), "--port", "0",
                             "--port-file", str(tmp_path / "port")])
    try:
        report = check(Probe(f"127.0.0.1:{wait_for_port(tmp_path / 'port', proc, 'example')}"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert not report.failed, "\n".join(report.lines())
    assert {f.rule: f.outcome for f in report.findings}["reflection"] == "passed"
