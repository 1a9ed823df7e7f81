"""Checkpoints: the ES state at a position of the update log, in safetensors.

A checkpoint named ckpt-00000040.safetensors holds the float32 master weights
of every target (and Adam's moments) after log records 0..39. It is written to
a hidden temporary file, fsynced and renamed, so a reader sees a whole
checkpoint or none; the newest `keep` are kept, and a checkpoint at generation 0
(a lora-space run's start adapter) always. Untargeted weights never change, so they
come from the base model, not from here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hatchery.core.failpoints import failpoint
from hatchery.core.run_files import writing

_NAME = re.compile(r"^ckpt-(\d{8})\.safetensors$")


@dataclass(frozen=True)
class Checkpoint:
    generation: int  # the number of log records it covers
    path: Path

    def load(self) -> tuple[dict[str, torch.Tensor], int]:
        """(state, steps) for EsUpdater.load_state_dict."""
        with safe_open(str(self.path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        if int(meta.get("generation", -1)) != self.generation:
            raise ValueError(f"{self.path}: metadata says generation {meta.get('generation')}, "
                             f"its name says {self.generation}")
        return state, int(meta["steps"])


def checkpoint_path(directory: Path, generation: int) -> Path:
    return directory / f"ckpt-{generation:08d}.safetensors"


def list_checkpoints(directory: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first (temporary files are not listed)."""
    if not directory.is_dir():
        return []
    found = [(m, p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted((Checkpoint(int(m.group(1)), p) for m, p in found), key=lambda c: c.generation)


def latest_checkpoint(directory: Path, at_most: int | None = None) -> Checkpoint | None:
    """The newest checkpoint, or the newest covering at most `at_most` records."""
    found = [c for c in list_checkpoints(directory) if at_most is None or c.generation <= at_most]
    return found[-1] if found else None


def replay(updater, directory: Path, records: Sequence, generation: int) -> Checkpoint | None:
    """Brings an EsUpdater (at the base weights) to the weights after `generation` update
    records: the newest checkpoint at or before it, then the records after that."""
    if not 0 <= generation <= len(records):
        raise ValueError(f"generation {generation} is not logged (the log holds 0 to {len(records)})")
    ckpt = latest_checkpoint(directory, at_most=generation)
    if ckpt is not None:
        updater.load_state_dict(*ckpt.load())
    for record in records[ckpt.generation if ckpt else 0:generation]:
        updater.apply(record.noise_epoch, record.lr, list(record.fitness))
    return ckpt


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(directory: Path, generation: int, state: dict[str, torch.Tensor], steps: int,
                     keep: int) -> Checkpoint:
    """Writes atomically, then prunes all but the newest `keep` checkpoints after generation 0."""
    final = checkpoint_path(directory, generation)
    tmp = directory / f".{final.name}.tmp"
    with writing(tmp):
        directory.mkdir(parents=True, exist_ok=True)
        failpoint("checkpoint_write", generation)
        save_file(state, str(tmp), metadata={"generation": str(generation), "steps": str(steps)})
        failpoint("checkpoint_written_not_renamed", generation)
        _fsync_path(tmp)
        os.replace(tmp, final)
        _fsync_path(directory)
    for old in [c for c in list_checkpoints(directory) if c.generation > 0][:-keep]:
        old.path.unlink()
    return Checkpoint(generation, final)


def remove_partial_checkpoints(directory: Path) -> None:
    """Temporary files left by a process killed while writing."""
    if directory.is_dir():
        for p in directory.glob(".ckpt-*.tmp"):
            p.unlink()
