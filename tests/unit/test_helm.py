"""The Helm chart, rendered and linted with real Helm (helm-python-sdk binds Helm's Go SDK,
offline) and every object validated strictly against the Kubernetes 1.30 schemas
(kubernetes-validate); the args and env it gives each container are accepted by that
service's own command-line parser, and the run config it writes by the config parser."""

import json
import re
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from hatchery.cli import build_parser
from hatchery.core.config import parse_config
from hatchery.core.grader_specs import parse_specs

CHART = str(Path(__file__).resolve().parents[2] / "helm" / "hatchery")
KUBERNETES = "1.30"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

VALUE_SETS = {
    "default": {},
    "gpu-inference-x4": {
        "image": {"tag": "0.1.0-cpu"}, "inference": {
            "replicas": 4, "gpus": 1, "image": {"tag": "0.1.0-cuda"},
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "32Gi"}}},
        "run": {"model": {"dtype": "bfloat16"}, "es": {"population": 256, "rank": 4}}},
    "external-reward": {
        "reward": {"builtin": {"enabled": True, "weight": 0.5, "grader": "first_integer"}, "external": [
            {"addresses": ["judge-0.judges:50060", "judge-1.judges:50060"], "grader": "exact", "weight": 1.0,
             "tokenSecret": {"name": "judge-token", "key": "token"}}]}},
    "external-only": {"reward": {"builtin": {"enabled": False}, "external": [{"addresses": ["rm.example:443"]}]}},
    "tls-on": {"tls": {"enabled": True, "secretName": "hatchery-tls", "requireClientCert": True},
               "auth": {"existingSecret": "hatchery-tokens"},
               "networkPolicy": {"controlFrom": [{"podSelector": {"matchLabels": {"app": "dashboard"}}}]}},
    "dataset-on-a-claim": {"data": {"existingClaim": "prompts", "subPath": "gsm", "train": "train.jsonl",
                                    "heldout": "test.jsonl"},
                           "run": {"grader": "numeric", "task": {"reference_key": "answer"}}},
    "dataset-in-a-configmap": {"data": {"configMap": "small-prompts", "mountPath": "/prompts/", "train": "train.jsonl"},
                               "run": {"grader": "numeric", "task": {"heldout_size": 2}}},
    "hub-model-with-token": {"run": {"model": {"source": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "main"}},
                             "model": {"tokenSecret": {"name": "hf", "key": "token"}}},
    "model-on-a-claim": {"model": {"existingClaim": "models", "subPath": "llm"},
                         "run": {"model": {"source": "/models/qwen2.5-0.5b"}}},
    "service-monitor-on": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                                       "prometheusRule": {"enabled": True},
                                       "dashboard": {"enabled": True}},
                           "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {
                               "kubernetes.io/metadata.name": "monitoring"}}}]}},
}


def render(values: dict) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="demo", namespace="ml")
    return [doc for path, text in sorted(manifests.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def pods(objects: list[dict]) -> list[tuple[str, dict]]:
    """(object name, pod spec) of every workload and test pod."""
    out = []
    for obj in objects:
        spec = obj["spec"] if obj["kind"] == "Pod" else obj.get("spec", {}).get("template", {}).get("spec")
        if spec:
            out.append((obj["metadata"]["name"], spec))
    return out


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_lints_strictly_and_every_object_validates(name):
    values = VALUE_SETS[name]
    report = helm.lint(CHART, values=values, strict=True, kube_version=f"v{KUBERNETES}.0", namespace="ml")
    assert report["errors"] == [], report
    objects = render(values)
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            assert obj["spec"], obj  # no schema bundled for CRDs; the metrics test checks their queries
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_pod_is_hardened(name):
    for pod, spec in pods(render(VALUE_SETS[name])):
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] and ctx["seccompProfile"]["type"] == "RuntimeDefault", pod
        for container in spec["containers"] + spec.get("initContainers", []):
            c = container["securityContext"]
            assert c["readOnlyRootFilesystem"] and not c["allowPrivilegeEscalation"], pod
            assert c["capabilities"]["drop"] == ["ALL"], pod
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), pod


@pytest.mark.parametrize("name", VALUE_SETS)
def test_containers_get_args_and_env_their_service_accepts(name, monkeypatch, tmp_path, tiny_llama_dir):
    objects = render(VALUE_SETS[name])
    for pod, spec in pods(objects):
        for container in spec["containers"] + spec.get("initContainers", []):
            for var in container.get("env", []):
                if var["name"].startswith("HATCHERY_"):  # secrets resolve at run time: any value will do
                    monkeypatch.setenv(var["name"], var.get("value", "from-a-secret"))
            args = build_parser().parse_args(container["args"])  # SystemExit(2) on anything it refuses
            assert args.command in ("optimizer", "inference", "reward", "health", "fetch-model"), pod
            for var in container.get("env", []):
                monkeypatch.delenv(var["name"], raising=False)
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-run")]
    run = yaml.safe_load(config_map["data"]["config.yaml"])
    data = VALUE_SETS[name].get("data")
    if data:  # the files the volume would hold, here where the test can read them
        mount = data.get("mountPath", "/data").rstrip("/")
        for key in ("train", "heldout"):
            if key in run["task"]:
                assert run["task"][key] == f"{mount}/{data[key]}" and run["task"]["name"] == "dataset"
                run["task"][key] = str(tmp_path / data[key])
                (tmp_path / data[key]).write_text("".join(json.dumps({"prompt": f"{key} {i} + {i}?", "answer": 2 * i})
                                                          + "\n" for i in range(6)))
    if "model" in run:  # the model the claim or the hub would give, here where the test can load it
        assert run["model"] == VALUE_SETS[name]["run"]["model"]
        run["model"] = {"source": str(tiny_llama_dir)}
    cfg = parse_config(run)
    parse_specs(yaml.safe_load(config_map["data"]["graders.yaml"]) or {})
    assert re.fullmatch(r"/var/lib/hatchery/runs/demo-[0-9a-f]{8}", cfg.run_dir)
    external = VALUE_SETS[name].get("reward", {}).get("external", [])
    assert len(cfg.reward.services) == (len(external) + 1 if external and VALUE_SETS[name]["reward"]["builtin"][
        "enabled"] else len(external))


def test_gpu_workers_tls_probes_and_external_tokens():
    objects = render(VALUE_SETS["gpu-inference-x4"])
    (inference,) = [o for o in objects if o["kind"] == "Deployment" and "inference" in o["metadata"]["name"]]
    assert inference["spec"]["replicas"] == 4
    container = inference["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and container["image"].endswith(":0.1.0-cuda")
    assert container["args"][container["args"].index("--device") + 1] == "cuda"  # the worker uses its GPU
    (cpu_worker,) = [o for o in render({}) if o["kind"] == "Deployment" and "inference" in o["metadata"]["name"]]
    args = cpu_worker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--device") + 1] == "cpu"
    assert container["startupProbe"]["grpc"]["service"] == "hatchery.v1.InferenceService"

    tls = render(VALUE_SETS["tls-on"])
    for _, spec in pods(tls):
        container = spec["containers"][0]
        env = {v["name"]: v for v in container["env"]}
        assert env["HATCHERY_TLS_REQUIRE_CLIENT_CERT"]["value"] == "true"
        assert env["HATCHERY_OPTIMIZER_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hatchery-tokens"
        if "readinessProbe" in container:  # Kubernetes' gRPC probe speaks no TLS
            assert "tcpSocket" in container["readinessProbe"]

    external = render(VALUE_SETS["external-reward"])
    (inference,) = [o for o in external if o["kind"] == "Deployment" and "inference" in o["metadata"]["name"]]
    env = {v["name"]: v for v in inference["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HATCHERY_EXTERNAL_REWARD_TOKEN_0"]["valueFrom"]["secretKeyRef"] == {"name": "judge-token",
                                                                                   "key": "token"}


def test_prompt_files_are_mounted_read_only_on_the_optimizer_alone():
    objects = render(VALUE_SETS["dataset-on-a-claim"])
    specs = dict(pods(objects))
    optimizer = specs["demo-hatchery-optimizer"]
    (volume,) = [v for v in optimizer["volumes"] if v["name"] == "data"]
    assert volume["persistentVolumeClaim"] == {"claimName": "prompts", "readOnly": True}
    (mount,) = [m for m in optimizer["containers"][0]["volumeMounts"] if m["name"] == "data"]
    assert mount == {"name": "data", "mountPath": "/data", "readOnly": True, "subPath": "gsm"}
    env = {v["name"]: v.get("value") for v in optimizer["containers"][0]["env"]}
    assert env["HF_DATASETS_CACHE"].startswith("/var/lib/hatchery/runs/")  # writable, and kept across restarts
    assert all("data" not in [v["name"] for v in spec.get("volumes", [])]
               for pod, spec in specs.items() if pod != "demo-hatchery-optimizer")
    small = dict(pods(render(VALUE_SETS["dataset-in-a-configmap"])))["demo-hatchery-optimizer"]
    assert {"name": "data", "configMap": {"name": "small-prompts"}} in small["volumes"]


def test_a_hub_model_is_downloaded_before_the_optimizer_starts_and_a_claim_is_read_in_place():
    specs = dict(pods(render(VALUE_SETS["hub-model-with-token"])))
    optimizer = specs["demo-hatchery-optimizer"]
    (fetch,) = optimizer["initContainers"]
    assert fetch["args"] == ["fetch-model", "/etc/hatchery/run/config.yaml"]
    fetch_env = {v["name"]: v for v in fetch["env"]}
    main_env = {v["name"]: v for v in optimizer["containers"][0]["env"]}
    assert fetch_env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert all("HF_TOKEN" not in {v["name"] for v in c.get("env", [])}  # the download alone holds the token
               for spec in specs.values() for c in spec["containers"])
    # Both see the same cache, on the run volume they both mount: what the download wrote, the optimizer reads.
    assert fetch_env["HF_HUB_CACHE"] == main_env["HF_HUB_CACHE"]
    assert main_env["HF_HUB_CACHE"]["value"].startswith("/var/lib/hatchery/runs/")
    assert {m["name"] for m in fetch["volumeMounts"]} >= {"runs", "run-config", "tmp"}
    assert main_env["HF_HUB_OFFLINE"]["value"] == "1"
    assert all("initContainers" not in spec for spec in dict(pods(render({}))).values())  # a local model: none

    claimed = dict(pods(render(VALUE_SETS["model-on-a-claim"])))
    for pod in ("demo-hatchery-optimizer", "demo-hatchery-inference"):
        spec = claimed[pod]
        assert {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in spec["volumes"]
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "model"]
        assert mount == {"name": "model", "mountPath": "/models", "readOnly": True, "subPath": "llm"}, pod
        assert "initContainers" not in spec


@pytest.mark.parametrize("values, complaint", [
    ({"model": {"tokenSecret": {"name": "hf", "key": "token"}}}, "model.tokenSecret: run.model.source .* is not a hub"),
    ({"model": {"tokenSecret": {"name": "hf"}}, "run": {"model": {"source": "org/name"}}}, "give both name and key"),
    ({"model": {"existingClaim": "models"}, "run": {"model": {"source": "/elsewhere/m"}}},
     "must name a folder under model.mountPath"),
    ({"data": {"train": "train.jsonl"}}, "data.train: give data.existingClaim or data.configMap"),
    ({"data": {"existingClaim": "a", "configMap": "b"}}, "not both"),
    ({"data": {"existingClaim": "a", "train": "t.jsonl"}, "run": {"task": {"train": "/data/t.jsonl"}}},
     "run.task.train is set too"),
])
def test_contradictory_data_values_are_refused(values, complaint):
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmRenderError, match=complaint):
            chart.render(values, name="demo", namespace="ml")


@pytest.mark.parametrize("values, complaint", [
    ({"inference": {"gpu": 1}}, "additional properties 'gpu' not allowed"),
    ({"replicas": 3}, "additional properties 'replicas' not allowed"),
    ({"inference": {"replicas": "4"}}, "/inference/replicas"),
    ({"inference": {"replicas": -1}}, "minimum"),
    ({"reward": {"external": [{"addresses": ["no-port"]}]}}, "/reward/external/0/addresses/0"),
    ({"tls": {"enabled": "yes"}}, "/tls/enabled"),
    ({"data": {"mountPath": "data"}}, "/data/mountPath"),
    ({"data": {"claim": "prompts"}}, "additional properties 'claim' not allowed"),
    ({"run": {"run_dir": "/elsewhere"}}, "additional properties 'run_dir' not allowed"),
])
def test_bad_values_are_refused_by_the_schema(values, complaint):
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError, match=complaint):
            chart.render(values, name="demo", namespace="ml")


def _run_dir(values: dict) -> str:
    (config_map,) = [o for o in render(values) if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-run")]
    return yaml.safe_load(config_map["data"]["config.yaml"])["run_dir"]


def test_changed_run_values_start_a_run_of_their_own():
    """The optimizer refuses to resume a run dir with another config, so a `helm upgrade` that
    changes the run would crash-loop: the run dir is named by the run's config instead."""
    default = _run_dir({})
    assert _run_dir({}) == default  # the same values: the same run, resumed after a restart
    assert _run_dir({"run": {"es": {"population": 32}}}) != default
    assert _run_dir({"reward": {"retries": 2}}) != default  # reward settings are part of the run config
    assert _run_dir({"inference": {"replicas": 8}}) == default  # more workers: the same run


def test_only_the_optimizer_holds_the_control_token_and_control_clients_may_reach_it():
    objects = render(VALUE_SETS["tls-on"])
    for pod, spec in pods(objects):
        names = {v["name"] for c in spec["containers"] for v in c.get("env", [])}
        assert ("HATCHERY_CONTROL_TOKEN" in names) == (pod == "demo-hatchery-optimizer"), pod
    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    dashboard = {"podSelector": {"matchLabels": {"app": "dashboard"}}}
    allowed = [rule for rule in policies["demo-hatchery-optimizer"]["spec"]["ingress"]
               if dashboard in rule.get("from", [])]
    assert [rule["ports"] for rule in allowed] == [[{"port": 50051, "protocol": "TCP"}]]  # gRPC, nothing else
    assert not any(dashboard in rule.get("from", []) for rule in policies["demo-hatchery-inference"]["spec"]["ingress"])


def test_a_release_without_any_reward_service_is_refused():
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmRenderError, match="reward"):
            chart.render({"reward": {"builtin": {"enabled": False}}}, name="demo", namespace="ml")
