"""Where a run starts: a base model folder, optionally with a PEFT adapter merged in
(a lora-space run keeps the base and trains the adapter on).

The run dir records the start in start.json by path and content hash, so a resumed
run refuses a base that changed under it and an export names exactly what it builds
on. With an adapter, the merged model is written once into the run dir
(start-model/); that folder is what the optimizer and every worker load, and workers
that cannot see it stream it from the optimizer, file by file, checked by hash. A
dataset run records its data files' hashes too, and a resume refuses changed data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hatchery.core.config import RunConfig
from hatchery.core.model import is_hub_snapshot, load_model, merge_adapter, resolve_model
from hatchery.core.prompt_data import data_files
from hatchery.core.run_files import replace_text
from hatchery.core.schema import ConfigError

START_RECORD = "start.json"
MERGED_FOLDER = "start-model"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelFile:
    name: str
    size_bytes: int
    sha256: str


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def folder_files(folder: Path) -> list[ModelFile]:
    """Every visible file directly in a Hugging Face folder: what loading it reads."""
    return [ModelFile(p.name, p.stat().st_size, file_sha256(p))
            for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]


def folder_sha256(files: list[ModelFile]) -> str:
    """One hash naming a folder's content: its files' names and hashes."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        h.update(f"{f.name}\0{f.sha256}\n".encode())
    return h.hexdigest()


def _describe(folder: Path) -> dict:
    files = folder_files(folder)
    return {"path": str(folder.resolve()), "sha256": folder_sha256(files),
            "files": {f.name: f.sha256 for f in files}}


@dataclass(frozen=True)
class StartPoint:
    path: Path  # the Hugging Face folder the optimizer and the workers load
    files: list[ModelFile]  # that folder's content
    record: dict  # what start.json holds: base, adapter and model, each with path and sha256


def read_start(run_dir: Path) -> dict | None:
    """start.json of a run; None for runs made before it was recorded."""
    path = run_dir / START_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def recorded_start(run_dir: Path, cfg: RunConfig) -> dict:
    """A finished or running run's start.json, its base and start model checked against
    their recorded hashes (for readers such as export, which must not write a start)."""
    start = read_start(run_dir)
    if start is None:  # a run from before start.json: the base as the config names it
        base = resolve_model(cfg.model.source)
        return {"source": cfg.model.source, "base": {"path": str(base)}, "adapter": None,
                "model": {"path": str(base)}}
    for part in ("base", "model"):
        folder = Path(start[part]["path"])
        if not folder.is_dir() or folder_sha256(folder_files(folder)) != start[part]["sha256"]:
            raise ValueError(f"{folder} no longer holds the {part} this run started from "
                             f"(sha256 {start[part]['sha256'][:12]}...)")
    return start


def _data_record(cfg: RunConfig) -> dict | None:
    """A dataset run's files by path and SHA-256 (a save_to_disk folder by its files' hash)."""
    if cfg.task.name != "dataset":
        return None
    return {key: {p: folder_sha256(folder_files(Path(p))) if Path(p).is_dir() else file_sha256(Path(p))
                  for p in data_files(spec, f"task.{key}")}
            for key, spec in (("train", cfg.task.train), ("heldout", cfg.task.heldout)) if spec}


def _check_data(recorded: dict, now: dict | None) -> None:
    """A resumed run's prompts must be the ones it started with: the schedule replays onto them."""
    before = recorded.get("data")  # absent in runs recorded before datasets
    if before is None or before == now:
        return
    for key in ("train", "heldout"):
        for path, sha in (before.get(key) or {}).items():
            if (now or {}).get(key, {}).get(path) != sha:
                raise ConfigError(f"task.{key}: {path} changed (or is gone) since this run started; "
                                  "restore it or start a new run")
    raise ConfigError("task: the run's data files are not the ones it started with; restore them or start a new run")


def start_revision(cfg: RunConfig, run_dir: Path) -> str:
    """The revision a run's hub model loads at: a started run's recorded commit, wherever its
    branch has moved since; else model.revision."""
    return (read_start(run_dir) or {}).get("commit") or cfg.model.revision


def prepare_start(cfg: RunConfig, run_dir: Path) -> StartPoint:
    """The start of cfg's run in run_dir: merged and recorded on first call, checked
    against the record when the run resumes."""
    recorded = read_start(run_dir)
    base = resolve_model(cfg.model.source, start_revision(cfg, run_dir))
    record = {"source": cfg.model.source, "base": _describe(base),
              "adapter": _describe(Path(cfg.model.adapter)) if cfg.model.adapter else None}
    if is_hub_snapshot(base):
        record.update(revision=cfg.model.revision or "main", commit=base.name)
    data = _data_record(cfg)
    if data is not None:
        record["data"] = data
    if recorded is not None:
        _check_data(recorded, data)
        for part in ("base", "adapter"):
            if (recorded[part] or {}).get("sha256") != (record[part] or {}).get("sha256"):
                raise ConfigError(f"model: the {part} this run started from changed since "
                                  f"({(recorded[part] or {}).get('path')}); restore it or start a new run")
    path = base
    if cfg.model.adapter and cfg.es.space == "weights":  # in lora space the run trains it on (its checkpoint 0)
        path = run_dir / MERGED_FOLDER
        if not path.is_dir():
            _write_merged(base, Path(cfg.model.adapter), path)
    files = folder_files(path)
    record["model"] = {"path": str(path.resolve()), "sha256": folder_sha256(files)}
    if recorded is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        replace_text(run_dir / START_RECORD, json.dumps(record, indent=2) + "\n")
    elif recorded["model"]["sha256"] != record["model"]["sha256"]:
        raise ConfigError(f"model: {path} no longer holds the model this run started from")
    return StartPoint(path, files, record)


def _write_merged(base: Path, adapter: Path, out: Path) -> None:
    """base + adapter as a float32 Hugging Face folder, written whole or not at all."""
    try:
        merged = merge_adapter(load_model(base), adapter)
    except (ValueError, RuntimeError, KeyError, OSError) as err:
        raise ConfigError(f"model.adapter: {adapter} cannot be merged into {base}: {err}") from None
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.model.save_pretrained(tmp)
    merged.tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
