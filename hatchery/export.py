"""`hatchery export`: a run's weights at any logged generation, as a Hugging Face folder
or as a PEFT LoRA adapter over the base model.

The learned change is a sum of low-rank updates, so it compresses: each matrix's
change from the base is cut to a truncated SVD, of a fixed rank or of the rank that
keeps a share of its energy (sum of squared singular values), and the export
reports how much of the change it kept.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from hatchery.core.checkpoint import replay
from hatchery.core.config import RunConfig, resumed_config
from hatchery.core.model import LoadedModel, load_model, lora_key
from hatchery.core.start import recorded_start
from hatchery.core.update_log import read_log
from hatchery.es import EsUpdater, find_targets
from hatchery.es.lora import LoraUpdater
from hatchery.service.settings import make_updater


@dataclass
class RunWeights:
    cfg: RunConfig
    start: dict  # start.json: base, adapter and the model training started from, with hashes
    generation: int
    lm: LoadedModel
    updater: EsUpdater | LoraUpdater  # replayed to `generation`

    @property
    def base_path(self) -> Path:
        return Path(self.start["base"]["path"])


def weights_at(run_dir: str | Path, generation: int | None = None) -> RunWeights:
    """The model after `generation` update records (default: all of them)."""
    run_dir = Path(run_dir)
    cfg = resumed_config(run_dir)
    start = recorded_start(run_dir, cfg)
    lm = load_model(start["model"]["path"], cfg.model.dtype)
    records = read_log(run_dir / "updates.jsonl")
    generation = len(records) if generation is None else generation
    targets = find_targets(lm.model, cfg.es.target_modules, cfg.es.exclude_modules)
    updater = make_updater(targets, cfg.es)
    replay(updater, run_dir / "checkpoints", records, generation)
    return RunWeights(cfg, start, generation, lm, updater)


def _provenance(weights: RunWeights, run_dir: Path) -> dict:
    start = weights.start
    return {"run_dir": str(run_dir.resolve()), "generation": weights.generation,
            "base_model": start["source"], "base_model_path": start["base"]["path"],
            "base_model_sha256": start["base"].get("sha256"),
            "start_adapter": start["adapter"] and {k: start["adapter"][k] for k in ("path", "sha256")}}


def export_hf(run_dir: str | Path, out: str | Path, generation: int | None = None) -> dict:
    """A Hugging Face folder (config, tokenizer, safetensors, generation config)."""
    weights = weights_at(run_dir, generation)
    out = Path(out)
    weights.lm.model.save_pretrained(out)
    weights.lm.tokenizer.save_pretrained(out)
    report = {"format": "hf", **_provenance(weights, Path(run_dir))}
    (out / "hatchery-export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def truncated(delta: torch.Tensor, rank: int | None, energy: float | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(B, A) with B @ A the best rank-k approximation of delta (out x in), and what it keeps.
    k is `rank`, or the smallest rank keeping `energy` of the squared singular values."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    total = float((s**2).sum())
    if rank is not None:
        k = min(rank, len(s))
    else:
        kept_share = torch.cumsum(s**2, 0) / total
        k = int(torch.searchsorted(kept_share, torch.tensor(energy, dtype=kept_share.dtype)).item()) + 1
        k = min(k, len(s))
    kept = float((s[:k] ** 2).sum())
    b, a = (u[:, :k] * s[:k]).float(), vh[:k].float()
    return b, a, {"rank": k, "energy_kept": kept / total, "energy": total}


def export_peft_lora(run_dir: str | Path, out: str | Path, generation: int | None = None, rank: int | None = None,
                     energy: float | None = None) -> dict:
    """A PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors) over the base model.

    A lora-space run's adapter is written as it is (rank and energy do not apply). A
    weights-space run's change is cut to `rank` per matrix, or to the smallest rank keeping
    `energy` of it (default 0.99), with scaling 1 (alpha = rank); a run started from base +
    adapter exports both changes in one adapter."""
    if resumed_config(run_dir).es.space == "lora":
        if rank is not None or energy is not None:
            raise ValueError("a lora-space run exports its adapter as it is (rank es.lora_rank): "
                             "leave out rank and energy")
        return _export_run_adapter(weights_at(run_dir, generation), Path(run_dir), Path(out))
    if rank is not None and energy is not None:
        raise ValueError("give at most one of rank and energy")
    if rank is None and energy is None:
        energy = 0.99
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    weights = weights_at(run_dir, generation)
    cfg = weights.cfg
    base = load_model(weights.base_path, cfg.model.dtype)
    tuned = {t.name: t for t in find_targets(weights.lm.model, exclude_modules=())}
    _refuse_changes_outside(base, weights.lm, set(tuned))
    tensors, ranks, matrices = {}, {}, {}
    transposed = False
    for t in find_targets(base.model, exclude_modules=()):  # every linear layer: a start adapter may reach any
        delta = tuned[t.name].logical_weight().float() - t.logical_weight().float()
        if not delta.any():
            continue
        b, a, kept = truncated(delta, rank, energy)
        module = t.name.removesuffix(".weight")
        tensors[lora_key(module, "lora_A")] = a.contiguous()
        tensors[lora_key(module, "lora_B")] = b.contiguous()
        ranks[module], matrices[module] = kept["rank"], kept
        transposed = transposed or t.transposed
    if not tensors:
        raise ValueError("the weights at this generation equal the base model's: nothing to export")
    top = max(ranks.values())
    pattern = {re.escape(module): r for module, r in ranks.items()}  # peft reads these keys as regexes
    shape = {"r": top, "lora_alpha": top, "rank_pattern": pattern, "alpha_pattern": pattern,
             "target_modules": sorted(ranks), "fan_in_fan_out": transposed}
    kept_energy = sum(m["energy_kept"] * m["energy"] for m in matrices.values())
    return _write_adapter(out, weights, Path(run_dir), shape, tensors, {
        "rank": rank, "energy": energy, "energy_kept": kept_energy / sum(m["energy"] for m in matrices.values()),
        "matrices": matrices})


def _export_run_adapter(weights: RunWeights, run_dir: Path, out: Path) -> dict:
    """The adapter a lora-space run trained, exactly: its A and B, rank and alpha."""
    updater = weights.updater
    assert isinstance(updater, LoraUpdater)
    tensors = {}
    for t in updater.targets:
        module = t.name.removesuffix(".weight")
        for part, tensor in updater.adapter[t.name].items():
            tensors[lora_key(module, part)] = tensor.contiguous()
    es = weights.cfg.es
    shape = {"r": es.lora_rank, "lora_alpha": es.lora_alpha,
             "target_modules": sorted(t.name.removesuffix(".weight") for t in updater.targets),
             "fan_in_fan_out": any(t.transposed for t in updater.targets)}
    return _write_adapter(out, weights, run_dir, shape, tensors, {"rank": es.lora_rank, "energy_kept": 1.0})


def _write_adapter(out: str | Path, weights: RunWeights, run_dir: Path, shape: dict, tensors: dict,
                   report: dict) -> dict:
    """adapter_config.json (PEFT's LORA over the base model, `shape` its rank and targets),
    adapter_model.safetensors and hatchery-export.json; returns the report."""
    adapter = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(weights.base_path),
               **shape, "lora_dropout": 0.0, "bias": "none", "inference_mode": True, "use_rslora": False,
               "init_lora_weights": True}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(adapter, indent=2) + "\n")
    save_file(tensors, str(out / "adapter_model.safetensors"))
    report = {"format": "peft-lora", **_provenance(weights, run_dir), **report,
              "adapter_bytes": (out / "adapter_model.safetensors").stat().st_size}
    (out / "hatchery-export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _refuse_changes_outside(base: LoadedModel, tuned: LoadedModel, linear: set[str]) -> None:
    """A LoRA adapter holds changes of linear layers only; anything else that differs
    from the base (a start adapter's modules_to_save, say) would be lost."""
    theirs = tuned.model.state_dict()
    changed = [name for name, w in base.model.state_dict().items()
               if name not in linear and not torch.equal(w, theirs[name])]
    if changed:
        raise ValueError(f"the run changed weights a LoRA adapter cannot hold ({', '.join(changed[:3])}"
                         f"{', ...' if len(changed) > 3 else ''}); export with --format hf")
