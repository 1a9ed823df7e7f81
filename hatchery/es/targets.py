"""Which matrices of a Hugging Face causal LM evolution strategies perturbs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class Target:
    """One perturbed matrix, seen as the logical W (out x in) of y = x W^T."""

    name: str  # parameter name, the noise key: "<module>.weight"
    module: nn.Module
    out_features: int
    in_features: int
    transposed: bool  # GPT-2 Conv1D stores W^T (in x out)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    def to_stored(self, matrix: torch.Tensor) -> torch.Tensor:
        """A logical (out x in) matrix in the layout the module stores."""
        return matrix.t() if self.transposed else matrix

    def logical_weight(self) -> torch.Tensor:
        w = self.module.weight.detach()
        return w.t() if self.transposed else w


def _tied_weight_ids(model: nn.Module) -> set[int]:
    """Embeddings and whatever shares their storage (a tied LM head) stay frozen."""
    ids = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, get, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            ids.add(module.weight.data_ptr())
    return ids


def find_targets(model: nn.Module, target_modules: Sequence[str] = (".*",),
                 exclude_modules: Sequence[str] = ("lm_head",)) -> list[Target]:
    """Every nn.Linear / Conv1D whose name matches a target pattern and no exclude
    pattern, skipping embeddings and the (possibly tied) output embedding."""
    frozen = _tied_weight_ids(model)
    include = [re.compile(p) for p in target_modules]
    exclude = [re.compile(p) for p in exclude_modules]
    targets = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            out_f, in_f = module.weight.shape
            transposed = False
        elif isinstance(module, Conv1D):
            in_f, out_f = module.weight.shape
            transposed = True
        else:
            continue
        if module.weight.data_ptr() in frozen:
            continue
        if not any(p.search(name) for p in include) or any(p.search(name) for p in exclude):
            continue
        targets.append(Target(f"{name}.weight", module, out_f, in_f, transposed))
    if not targets:
        raise ValueError("no module matches target_modules / exclude_modules: nothing to perturb")
    return targets
