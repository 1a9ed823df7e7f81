"""Prometheus metrics: scraped from all three services, as processes, during a short real run."""

import json
import re
import socket
import time
import urllib.request
from pathlib import Path

import grpc
import helm_python as helm
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hatchery.launcher import spawn_service, wait_for_port
from hatchery.service.serving import channel
from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc
from reward_svc.server import reward_server

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "hatchery" / "dashboards" / "hatchery.json"
EXPECTED = {  # family name -> type, per service (besides the gRPC series every service has)
    "optimizer": {"hatchery_generation": "gauge", "hatchery_workers": "gauge", "hatchery_reward_mean": "gauge",
                  "hatchery_reward_max": "gauge", "hatchery_reward_std": "gauge", "hatchery_heldout_reward": "gauge",
                  "hatchery_update_norm": "gauge", "hatchery_tokens_per_second": "gauge",
                  "hatchery_generation_duration_seconds": "histogram", "hatchery_perturbations_evaluated": "counter",
                  "hatchery_failed_samples": "counter", "hatchery_lease_reassignments": "counter",
                  "hatchery_lease_releases": "counter", "hatchery_fingerprint_mismatches": "counter"},
    "inference": {"hatchery_inference_batch_size": "histogram",
                  "hatchery_inference_generate_duration_seconds": "histogram",
                  "hatchery_inference_prefill_duration_seconds": "histogram",
                  "hatchery_inference_generated_tokens": "counter", "hatchery_inference_leases": "counter",
                  "hatchery_inference_device": "gauge"},
    "reward": {"hatchery_reward_samples": "counter", "hatchery_reward_score_duration_seconds": "histogram"},
}
GRPC = {"hatchery_grpc_server_requests": "counter", "hatchery_grpc_server_request_duration_seconds": "histogram"}


def _free_ports(count: int) -> list[int]:
    """Distinct free ports: all held open until all are chosen."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def scrape(port: int) -> dict:
    """{family name: (type, {(sample name, labels): value})}"""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {f.name: (f.type, {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples})
            for f in text_string_to_metric_families(text)}


def value(families: dict, family: str, sample: str | None = None, **labels) -> float:
    _, samples = families[family]
    return sum(v for (name, lab), v in samples.items()
               if name == (sample or family) and all(dict(lab).get(k) == w for k, w in labels.items()))


def test_all_three_services_export_their_metrics_during_a_run(tiny_llama_dir, tmp_path, procs):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)}, "grader": "length",
        "task": {"name": "arith", "heldout_size": 4, "max_new_tokens": 4}, "es": {"population": 4, "rank": 1},
        "train": {"generations": 8, "prompts_per_member": 2, "eval_every": 2}}))
    metrics = dict(zip(("reward", "optimizer", "inference"), _free_ports(3)))
    last, scrapes, generations = {}, {name: 0 for name in metrics}, []
    for name, args in (("reward", ["reward"]), ("optimizer", ["optimizer", "--config", str(config)])):
        procs[name] = spawn_service([*args, "--port", "0", "--port-file", str(tmp_path / name),
                                     "--metrics-port", str(metrics[name])], tmp_path / f"{name}.log")
    ports = {name: wait_for_port(tmp_path / name, procs[name], name) for name in ("reward", "optimizer")}
    procs["inference"] = spawn_service(
        ["inference", "--port", "0", "--metrics-port", str(metrics["inference"]),
         "--optimizer-address", f"127.0.0.1:{ports['optimizer']}",
         "--reward-address", f"127.0.0.1:{ports['reward']}"], tmp_path / "inference.log")
    deadline = time.monotonic() + 300
    while procs["optimizer"].poll() is None and time.monotonic() < deadline:
        for name, port in metrics.items():
            try:
                families = scrape(port)
            except OSError:  # not serving yet, or already gone
                continue
            scrapes[name] += 1
            if "hatchery_generation" in families and name == "optimizer":
                generations.append(value(families, "hatchery_generation"))
            last.setdefault(name, {}).update(families)  # each family as last seen
        time.sleep(0.2)
    assert procs["optimizer"].wait(timeout=60) == 0
    for name, expected in EXPECTED.items():
        families = last[name]
        for family, kind in {**expected, **GRPC}.items():
            assert families.get(family, (None,))[0] == kind, (
                f"{name}: {family} should be a {kind}; {scrapes[name]} scrapes saw {sorted(families)}")
        ours = [f for f in families if f.startswith("hatchery_")]
        for family in ours:  # Prometheus naming: base units, _total only on counters
            kind, samples = families[family]
            assert "_ms" not in family and "milliseconds" not in family
            if kind == "counter":
                assert all(s.endswith(("_total", "_created")) for s, _ in samples), family
            if kind == "histogram":
                assert family.endswith(("_seconds", "_size")), family
    opt, inf, rew = last["optimizer"], last["inference"], last["reward"]
    assert max(generations) > min(generations)  # it moved during the run
    assert value(opt, "hatchery_perturbations_evaluated", "hatchery_perturbations_evaluated_total") >= 4 * 2
    assert value(opt, "hatchery_generation_duration_seconds", "hatchery_generation_duration_seconds_count") >= 2
    assert value(opt, "hatchery_workers") == 1
    assert value(opt, "hatchery_grpc_server_requests", "hatchery_grpc_server_requests_total",
                 method="/hatchery.v1.OptimizerService/ReportResult", code="OK") >= 4
    assert value(inf, "hatchery_inference_generated_tokens", "hatchery_inference_generated_tokens_total",
                 kind="train") > 0
    # The worker exits as soon as the run is over, so its last scrape can precede its last leases
    # (on a fast CPU the whole run takes a few scrapes): these counters must have counted, not all.
    assert value(inf, "hatchery_inference_leases", "hatchery_inference_leases_total", accepted="true") >= 1
    assert value(inf, "hatchery_inference_device", device="cpu", dtype="float32") == 1
    assert value(inf, "hatchery_inference_prefill_duration_seconds",
                 "hatchery_inference_prefill_duration_seconds_count", kind="train") >= 1
    assert value(rew, "hatchery_reward_samples", "hatchery_reward_samples_total", grader="length", status="ok") > 0

    # the dashboard shipped with the chart queries only series these services exported
    exported = {sample for families in last.values() for _, samples in families.values() for sample, _ in samples}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 15
    with helm.Chart.load(str(DASHBOARD.parent.parent)) as chart:  # and so do the chart's alert rules
        manifests = chart.render({"metrics": {"prometheusRule": {"enabled": True}}}, name="demo", namespace="ml")
    (rules,) = [doc for path, text in manifests.items() if path.endswith(".yaml")
                for doc in yaml.safe_load_all(text) if doc and doc["kind"] == "PrometheusRule"]
    alerts = [rule["expr"] for group in rules["spec"]["groups"] for rule in group["rules"]]
    assert len(alerts) == 2
    for expr in exprs + alerts:
        for name in re.findall(r"hatchery_[a-z_]+", expr):
            assert name in exported, f"query {expr!r} names {name}, which no service exports"


def test_grpc_metrics_count_failed_calls_by_code():
    from prometheus_client import REGISTRY

    def invalid() -> float:
        return REGISTRY.get_sample_value("hatchery_grpc_server_requests_total", {
            "method": "/hatchery.v1.RewardService/Score", "code": "INVALID_ARGUMENT"}) or 0.0

    before = invalid()
    server = reward_server()
    server.start()
    try:
        stub = reward_pb2_grpc.RewardServiceStub(channel(server.address))
        with pytest.raises(grpc.RpcError):
            stub.Score(pb.ScoreRequest(grader="no-such-grader"), timeout=10)
        assert stub.Score(pb.ScoreRequest(samples=[pb.Sample(completion="1", reference="1")]), timeout=10)
    finally:
        server.stop()
    assert invalid() == before + 1
