"""Starting points: a run from a base model plus a PEFT adapter, recorded by content hash,
exported against the base, and streamed to workers that cannot see the optimizer's disk."""

import hashlib
import json
import shutil

import grpc
import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from hatchery.core.config import parse_config
from hatchery.core.model import load_model, read_lora_adapter
from hatchery.core.schema import ConfigError
from hatchery.core.start import prepare_start
from hatchery.export import export_peft_lora, weights_at
from hatchery.service.serving import channel
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import optimizer_pb2_grpc
from inference_svc import fetch
from optimizer_svc.coordinator import Coordinator
from optimizer_svc.server import optimizer_server
from reference import run_reference

IDS = torch.tensor([[1, 5, 9, 2, 7, 3]])


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama_dir, tmp_path_factory):
    """A LoRA adapter with non-zero B (peft's default init would make it a no-op)."""
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter") / "lora"
    model.save_pretrained(out)
    return out


def _config(model_dir, adapter, run_dir, generations=3):
    return parse_config({"run_dir": str(run_dir), "model": {"source": str(model_dir), "adapter": str(adapter)},
                         "grader": "length", "task": {"heldout_size": 4, "max_new_tokens": 6},
                         "es": {"population": 4, "rank": 2, "sigma": 0.05, "lr": 0.05},
                         "train": {"generations": generations, "prompts_per_member": 2, "eval_every": 10}})


@pytest.fixture(scope="module")
def adapter_run(tiny_llama_dir, adapter_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("start") / "run"
    return run_dir, run_reference(_config(tiny_llama_dir, adapter_dir, run_dir), run_dir)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _merged(base_dir, adapter_dir):
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).merge_and_unload()


def test_the_run_dir_records_base_and_adapter_by_content_hash(adapter_run, tiny_llama_dir, adapter_dir):
    run_dir, _ = adapter_run
    start = json.loads((run_dir / "start.json").read_text())
    for part, folder, name in (("base", tiny_llama_dir, "model.safetensors"),
                               ("adapter", adapter_dir, "adapter_model.safetensors")):
        assert start[part]["path"] == str(folder.resolve())
        assert start[part]["files"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert start["model"]["path"] == str((run_dir / "start-model").resolve())


def test_training_starts_from_the_base_with_the_adapter_merged(adapter_run, tiny_llama_dir, adapter_dir):
    run_dir, coordinator = adapter_run
    start = weights_at(run_dir, 0).lm.model
    merged, base = _merged(tiny_llama_dir, adapter_dir), AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.testing.assert_close(_logits(start), _logits(merged), rtol=0, atol=1e-6)
    assert not torch.allclose(_logits(start), _logits(base), atol=1e-3)  # the adapter did change the model
    assert not torch.allclose(_logits(coordinator.lm.model), _logits(start), atol=1e-5)  # and training moved on


def test_lora_export_holds_the_adapter_and_the_es_change_against_the_base(adapter_run, tiny_llama_dir, tmp_path):
    run_dir, coordinator = adapter_run
    report = export_peft_lora(run_dir, tmp_path / "lora", rank=10_000)
    start = json.loads((run_dir / "start.json").read_text())
    assert report["base_model_path"] == str(tiny_llama_dir.resolve())
    assert report["base_model_sha256"] == start["base"]["sha256"]
    assert report["start_adapter"]["sha256"] == start["adapter"]["sha256"]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "lora")
    torch.testing.assert_close(_logits(adapted), _logits(coordinator.lm.model), rtol=1e-4, atol=1e-4)


def test_a_changed_base_or_start_model_is_refused(tiny_llama_dir, adapter_dir, tmp_path):
    base = shutil.copytree(tiny_llama_dir, tmp_path / "base")
    cfg = _config(base, adapter_dir, tmp_path / "run")
    prepare_start(cfg, tmp_path / "run")
    assert prepare_start(cfg, tmp_path / "run").path == tmp_path / "run" / "start-model"  # a resume: same start
    original = (base / "config.json").read_text()
    (base / "config.json").write_text(json.dumps({**json.loads(original), "rms_norm_eps": 1e-5}))
    with pytest.raises(ConfigError, match="the base this run started from changed"):
        prepare_start(cfg, tmp_path / "run")
    (base / "config.json").write_text(original)
    with open(tmp_path / "run" / "start-model" / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(ConfigError, match="no longer holds the model this run started from"):
        prepare_start(cfg, tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))  # as a run writes it
    with pytest.raises(ValueError, match="no longer holds the model"):  # nor exported from it
        weights_at(tmp_path / "run", 0)


def test_an_adapter_folder_that_is_not_one_is_refused(tiny_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="model.adapter: must be a PEFT adapter folder"):
        _config(tiny_llama_dir, tmp_path, tmp_path / "run")


def test_a_worker_without_the_optimizers_disk_streams_the_start_model(tiny_llama_dir, adapter_dir, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("HATCHERY_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    cfg = _config(tiny_llama_dir, adapter_dir, run_dir)
    start = prepare_start(cfg, run_dir)
    server = optimizer_server(Coordinator(cfg, load_model(start.path), run_dir), start)
    server.start()
    try:
        stub = optimizer_pb2_grpc.OptimizerServiceStub(channel(server.address))
        joined = stub.Join(pb.JoinRequest(worker_id="w"))
        assert {f.name for f in joined.base_model_files} >= {"config.json", "model.safetensors"}
        assert fetch.start_model(stub, joined) == start.path  # the optimizer's folder is visible here
        copy = fetch.start_model(stub, joined, always_fetch=True)
        assert copy.parent == tmp_path / "cache" / "models"
        for f in joined.base_model_files:
            assert (copy / f.name).read_bytes() == (start.path / f.name).read_bytes()
        torch.testing.assert_close(_logits(load_model(copy).model), _logits(load_model(start.path).model),
                                   rtol=0, atol=0)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.FetchModelFile(pb.FetchModelFileRequest(name="../config.yaml")))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


def _lora_config(model_dir, adapter, run_dir, **es):
    return parse_config({"run_dir": str(run_dir), "model": {"source": str(model_dir), "adapter": str(adapter)},
                         "grader": "length", "task": {"heldout_size": 4, "max_new_tokens": 6},
                         "es": {"space": "lora", "lora_rank": 4, "lora_alpha": 8, "population": 4, "sigma": 0.3,
                                "lr": 0.3, **es},
                         "train": {"generations": 5, "prompts_per_member": 2, "eval_every": 5,
                                   "checkpoint_every": 2, "checkpoints_kept": 1}})


@pytest.fixture(scope="module")
def lora_adapter_run(tiny_llama_dir, adapter_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lora-start") / "run"
    return run_dir, run_reference(_lora_config(tiny_llama_dir, adapter_dir, run_dir), run_dir)


def test_a_lora_space_run_trains_the_start_adapter_on(lora_adapter_run, tiny_llama_dir, adapter_dir, tmp_path):
    from hatchery.core.checkpoint import list_checkpoints
    from hatchery.evaluation import heldout_reward

    run_dir, coordinator = lora_adapter_run
    start = json.loads((run_dir / "start.json").read_text())
    assert start["model"]["path"] == str(tiny_llama_dir.resolve())  # the base, not a merged copy
    # the adapter is checkpoint 0, kept beside the newest (checkpoints_kept 1)
    assert [c.generation for c in list_checkpoints(run_dir / "checkpoints")] == [0, 4]
    at_start = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), adapter_dir)
    torch.testing.assert_close(_logits(weights_at(run_dir, 0).lm.model), _logits(at_start), atol=1e-5, rtol=1e-5)
    scored = heldout_reward(str(adapter_dir), heldout_size=4, grader="length", max_new_tokens=6)
    assert coordinator.history[0].heldout_reward == pytest.approx(scored["heldout_reward"])
    resumed = weights_at(run_dir)  # checkpoint 4, then record 5
    for name, tensor in coordinator.updater.state_dict().items():
        assert torch.equal(resumed.updater.state_dict()[name], tensor), name
    export_peft_lora(run_dir, tmp_path / "trained")
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "trained")
    torch.testing.assert_close(_logits(trained), _logits(coordinator.lm.model), atol=1e-5, rtol=1e-5)
    q_proj = "model.layers.0.self_attn.q_proj"
    assert not torch.equal(coordinator.updater.adapter[f"{q_proj}.weight"]["lora_B"],
                           read_lora_adapter(adapter_dir)[q_proj]["lora_B"]), "training did not move the start adapter"


def test_a_worker_joins_a_lora_space_run_at_the_start_adapter(tiny_llama_dir, adapter_dir, tmp_path):
    from inference_svc.evaluator import Evaluator

    run_dir = tmp_path / "run"
    cfg = _lora_config(tiny_llama_dir, adapter_dir, run_dir)
    start = prepare_start(cfg, run_dir)
    coordinator = Coordinator(cfg, load_model(start.path), run_dir)
    server = optimizer_server(coordinator, start)
    server.start()
    try:
        stub = optimizer_pb2_grpc.OptimizerServiceStub(channel(server.address))
        joined = stub.Join(pb.JoinRequest(worker_id="w"))
        assert joined.checkpoint.generation == 0
        evaluator = Evaluator(load_model(fetch.start_model(stub, joined)), joined.es)
        with fetch.checkpoint(stub, joined.checkpoint, always_fetch=True) as ckpt:
            evaluator.restore(ckpt.generation, *ckpt.load())
        assert evaluator.fingerprint() == coordinator.weights_fingerprint
        assert evaluator.fingerprint() != Evaluator(load_model(start.path), joined.es).fingerprint()
    finally:
        server.stop()


def test_a_start_adapter_lora_space_cannot_train_is_refused_by_name(tiny_llama_dir, adapter_dir, tmp_path):
    with pytest.raises(ConfigError, match="model.adapter: must match es.lora_rank 8 and es.lora_alpha 8"):
        _lora_config(tiny_llama_dir, adapter_dir, tmp_path / "run", lora_rank=8)
    rslora = tmp_path / "rslora"
    shutil.copytree(adapter_dir, rslora)
    shape = json.loads((rslora / "adapter_config.json").read_text())
    (rslora / "adapter_config.json").write_text(json.dumps({**shape, "use_rslora": True}))
    with pytest.raises(ConfigError, match="model.adapter: use_rslora True is not trained in lora space"):
        _lora_config(tiny_llama_dir, rslora, tmp_path / "run")
    cfg = _lora_config(tiny_llama_dir, adapter_dir, tmp_path / "run", exclude_modules=["lm_head", "v_proj"])
    left_out = r"trains model\.layers\.0\.self_attn\.v_proj and 1 more modules, which .* leave out: include it"
    with pytest.raises(ValueError, match=left_out):
        Coordinator(cfg, load_model(prepare_start(cfg, tmp_path / "run").path), tmp_path / "run")
