"""Prompts from your own data: `task.name: dataset`, read with Hugging Face `datasets`.

Files are JSON lines, JSON, Parquet, CSV or Arrow, a `save_to_disk` folder, a glob, or a
list of these. `datasets` keeps them as memory-mapped Arrow tables, so a large file costs
disk, not RAM: prompts are read from the table when a generation needs them. Every check
runs over whole Arrow columns before any service starts, and a problem is reported by
file, row and column (a bad row in a million is found at once, not at generation 5,000).
"""

from __future__ import annotations

import glob
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatchery.core.schema import ConfigError
from hatchery.core.tasks import Task, TaskPrompt, load_task

if TYPE_CHECKING:
    import datasets

    from hatchery.core.config import TaskConfig

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
DEFAULT_MAX_NEW_TOKENS = 256


def data_files(spec: Any, key: str) -> list[str]:
    """The paths a train/heldout value names: one, a list, or globs; each must exist."""
    entries = [spec] if isinstance(spec, str) else spec
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) and e for e in entries):
        raise ConfigError(f"{key}: expected a file, a folder, a glob or a list of these, got {spec!r}")
    found: list[str] = []
    for entry in entries:
        matches = sorted(glob.glob(entry)) if glob.has_magic(entry) else [entry] if Path(entry).exists() else []
        if not matches:
            raise ConfigError(f"{key}: {entry} does not exist")
        found += matches
    return found


def open_data(spec: Any, key: str) -> datasets.Dataset:
    """One table from the files (or save_to_disk folder) `spec` names."""
    import datasets

    paths = data_files(spec, key)
    if len(paths) == 1 and Path(paths[0]).is_dir():
        try:
            loaded = datasets.load_from_disk(paths[0])
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"{key}: {paths[0]} is not a folder written by save_to_disk: {err}") from None
        if isinstance(loaded, datasets.DatasetDict):
            raise ConfigError(f"{key}: {paths[0]} holds splits {sorted(loaded)}; name one of its folders")
        return loaded
    unknown = [p for p in paths if Path(p).suffix.lower() not in FORMATS]
    kinds = {FORMATS.get(Path(p).suffix.lower()) for p in paths}
    if unknown or len(kinds) != 1:
        raise ConfigError(f"{key}: {(unknown or paths)[0]}: files must all be one of {sorted(FORMATS)}")
    if all(Path(p).stat().st_size == 0 for p in paths):
        raise ConfigError(f"{key}: {', '.join(paths)} has no rows")
    try:
        return datasets.load_dataset(kinds.pop(), data_files=paths, split="train")
    except Exception as err:  # noqa: BLE001 - pyarrow's and datasets' parse errors have many types
        raise ConfigError(f"{key}: cannot read {', '.join(paths)}: {type(err).__name__}: {err}") from None


def _where(spec: Any) -> str:
    return spec if isinstance(spec, str) else ", ".join(spec)


def _check_columns(ds: datasets.Dataset, key: str, spec: Any, task: TaskConfig) -> list[str]:
    """The metadata columns, once the prompt and reference columns are known to exist."""
    columns = ds.column_names
    where = _where(spec)
    if len(ds) == 0:
        raise ConfigError(f"{key}: {where} has no rows")
    for role, column in (("task.prompt_key", task.prompt_key), ("task.reference_key", task.reference_key)):
        if column and column not in columns:
            raise ConfigError(f"{role}: {where} has no column {column!r}; its columns: {columns}")
    if task.metadata_keys == "all":
        return [c for c in columns if c not in (task.prompt_key, task.reference_key)]
    missing = [c for c in task.metadata_keys if c not in columns]
    if missing:
        raise ConfigError(f"task.metadata_keys: {where} has no column {missing[0]!r}; its columns: {columns}")
    return list(task.metadata_keys)


def _check_prompts(ds: datasets.Dataset, key: str, spec: Any, column: str) -> None:
    """Every prompt a non-empty string, checked over the whole column at once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = ds.data.column(column)
    where = f"{_where(spec)}, column {column!r}"
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise ConfigError(f"{key}: {where} holds {values.type}, not text (conversational prompts, lists of "
                          "messages, are not read yet)")
    bad = pc.or_kleene(pc.is_null(values), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0))
    first = pc.index(bad, True).as_py()
    if first >= 0:
        raise ConfigError(f"{key}: {where}, row {first + 1}: the prompt is empty or missing")


def _text(value: Any) -> str:
    """A column's value as the graders' string metadata: text as is, anything else as JSON."""
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value, default=str)


class RowPrompts(Sequence[TaskPrompt]):
    """TaskPrompts read from the table on demand: no Python object per row is kept."""

    def __init__(self, ds: datasets.Dataset, rows: Sequence[int], prompt_key: str, reference_key: str,
                 metadata_keys: list[str]):
        self.ds, self.rows = ds, rows
        self.prompt_key, self.reference_key, self.metadata_keys = prompt_key, reference_key, metadata_keys

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = self.ds[int(self.rows[i])]
        return TaskPrompt(row[self.prompt_key], _text(row[self.reference_key]) if self.reference_key else "",
                          {k: _text(row[k]) for k in self.metadata_keys})


# Tasks already read and checked in this process, by config and file state: the optimizer checks
# its data when the config is parsed and builds its task from it a moment later.
_read: dict[tuple, Task] = {}


def dataset_task(task: TaskConfig) -> Task:
    """The run's prompts from task.train (and task.heldout, or a seeded split of train)."""
    files = [data_files(spec, f"task.{key}") for key, spec in (("train", task.train), ("heldout", task.heldout))
             if spec]
    state = tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for paths in files for p in paths)
    key = (repr(task), state)
    if key not in _read:
        _read[key] = _read_task(task)
    return _read[key]


def _read_task(task: TaskConfig) -> Task:
    train = open_data(task.train, "task.train")
    metadata_keys = _check_columns(train, "task.train", task.train, task)
    _check_prompts(train, "task.train", task.train, task.prompt_key)
    keys = (task.prompt_key, task.reference_key, metadata_keys)
    if task.heldout:
        heldout = open_data(task.heldout, "task.heldout")
        if _check_columns(heldout, "task.heldout", task.heldout, task) != metadata_keys:
            raise ConfigError(f"task.heldout: its columns {heldout.column_names} are not train's "
                              f"{train.column_names}")
        _check_prompts(heldout, "task.heldout", task.heldout, task.prompt_key)
        _refuse_overlap(train, heldout, task)
        train_rows: Sequence[int] = range(len(train))
        return Task("dataset", "", RowPrompts(train, train_rows, *keys),
                    RowPrompts(heldout, range(len(heldout)), *keys), task.max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
    size = round(task.heldout_fraction * len(train)) if task.heldout_fraction else task.heldout_size
    if not 0 < size < len(train):
        raise ConfigError(f"task.heldout_size: {_where(task.train)} has {len(train)} rows; the held-out split "
                          f"must leave 1 to {len(train) - 1} of them, got {size}")
    order = list(range(len(train)))
    random.Random(task.seed).shuffle(order)
    return Task("dataset", "", RowPrompts(train, sorted(order[size:]), *keys),
                RowPrompts(train, sorted(order[:size]), *keys), task.max_new_tokens or DEFAULT_MAX_NEW_TOKENS)


def _refuse_overlap(train: datasets.Dataset, heldout: datasets.Dataset, task: TaskConfig) -> None:
    """Held-out prompts that are also training prompts would measure memory, not skill."""
    import pyarrow.compute as pc

    trained = train.data.column(task.prompt_key).combine_chunks()
    count = pc.sum(pc.is_in(heldout.data.column(task.prompt_key), value_set=trained)).as_py() or 0
    if count and not task.allow_heldout_in_train:
        raise ConfigError(f"task.heldout: {count} of its {len(heldout)} prompts are also in task.train; "
                          "remove them, or set task.allow_heldout_in_train: true")


def run_task(task: TaskConfig) -> Task:
    """The task a run's config names: a generated one (arith, countdown) or its dataset."""
    return dataset_task(task) if task.name == "dataset" else load_task(task.name, task.seed, task.heldout_size)
