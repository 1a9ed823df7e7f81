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
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatchery.core.model import context_length, format_prompts, load_tokenizer, resolve_model
from hatchery.core.schema import ConfigError
from hatchery.core.tasks import EXACT_INTEGERS, Task, TaskPrompt, load_task

if TYPE_CHECKING:
    import datasets

    from hatchery.core.config import RunConfig, TaskConfig

log = logging.getLogger("hatchery.data")
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
DEFAULT_MAX_NEW_TOKENS = 256
MESSAGE_ROLES = ("system", "user", "assistant")
LENGTH_BATCH = 1024  # prompts templated and tokenized at a time when their lengths are measured
BOUND_CHECKS = 256  # rows measured exactly to check that the chat template keeps to the length bound
SPARE_TOKENS = 2  # beyond one per byte: SentencePiece's leading marker, and one to spare


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


def _check_prompts(ds: datasets.Dataset, key: str, spec: Any, column: str) -> Any:
    """The prompt column, every prompt a non-empty string or every one a conversation
    (then as a list<struct> array), checked over the whole column at once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = ds.data.column(column)  # chunked, as the table is mapped: not copied
    where = f"{_where(spec)}, column {column!r}"
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        return _check_messages(values.combine_chunks(), f"{key}: {where}")
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise ConfigError(f"{key}: {where} holds {values.type}, not text or a list of {{role, content}} messages")
    blank = pc.or_(pc.equal(pc.utf8_length(values), 0), pc.utf8_is_space(values))  # no copy of the text
    bad = pc.or_kleene(pc.is_null(values), blank)
    first = pc.index(bad, True).as_py()
    if first >= 0:
        raise ConfigError(f"{key}: {where}, row {first + 1}: the prompt is empty or missing")
    return values


def _messages(values: Any, where: str) -> Any:
    """A column of conversations as a list<struct> array: datasets keeps messages of varying
    shape as JSON text (its Json feature), which is parsed here."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not isinstance(values.type.value_type, pa.BaseExtensionType):
        return values
    flat = pc.list_flatten(values)
    try:
        messages = pa.array([None if m is None else json.loads(m) for m in flat.storage.to_pylist()])
    except (pa.ArrowException, ValueError, TypeError):
        raise ConfigError(f"{where}: a conversation must be a list of {{role, content}} objects") from None
    return pa.ListArray.from_arrays(pc.subtract(values.offsets, values.offsets[0]), messages, mask=values.is_null())


def _check_messages(values: Any, where: str) -> Any:
    """Conversations: each a non-empty list of {role, content} with a known role, text
    content and at least one user message."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    values = _messages(values, where)
    item = values.type.value_type
    names = [f.name for f in item] if pa.types.is_struct(item) else []
    if "role" not in names or "content" not in names:
        raise ConfigError(f"{where}: a conversation's messages need 'role' and 'content', they have "
                          f"{names or item}")
    lengths = pc.fill_null(pc.list_value_length(values), 0).to_numpy(zero_copy_only=False)
    if (lengths == 0).any():
        raise ConfigError(f"{where}, row {int(np.argmax(lengths == 0)) + 1}: the prompt is an empty conversation")
    flat, rows = pc.list_flatten(values), pc.list_parent_indices(values).to_numpy()
    starts = values.offsets.to_numpy()
    role, content = pc.struct_field(flat, "role"), pc.struct_field(flat, "content")

    def refuse(mask: Any, problem: str) -> None:
        i = pc.index(pc.fill_null(mask, True), True).as_py()
        if i >= 0:
            row = int(rows[i])
            raise ConfigError(f"{where}, row {row + 1}, message {i - int(starts[row]) + 1}: {problem}")

    if not pa.types.is_string(content.type):
        raise ConfigError(f"{where}: message content holds {content.type}, not text")
    refuse(pc.is_null(flat), "a message is missing")
    refuse(pc.invert(pc.is_in(role, value_set=pa.array(MESSAGE_ROLES))),
           f"the role must be one of {', '.join(MESSAGE_ROLES)}")
    refuse(pc.is_null(content), "the message has no content")
    users = np.bincount(rows, weights=pc.equal(role, "user").to_numpy(zero_copy_only=False), minlength=len(values))
    if (users == 0).any():
        raise ConfigError(f"{where}, row {int(np.argmax(users == 0)) + 1}: the conversation has no user message")
    return values


def _check_typed(ds: datasets.Dataset, key: str, spec: Any, columns: list[str]) -> None:
    """Columns reach graders with their types: binary data cannot, and integers beyond
    2^53 would arrive rounded (a typed column is a JSON number)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for column in columns:
        values = ds.data.column(column)
        where = f"{key}: {_where(spec)}, column {column!r}"
        if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type) \
                or pa.types.is_fixed_size_binary(values.type):
            raise ConfigError(f"{where} holds binary data, which graders cannot receive; leave it out with "
                              "task.metadata_keys")
        if values.type in (pa.int64(), pa.uint64()):  # narrower integers are exact as doubles
            too_big = pc.greater(values, pa.scalar(EXACT_INTEGERS, values.type))
            if values.type == pa.int64():
                too_big = pc.or_(too_big, pc.less(values, pa.scalar(-EXACT_INTEGERS, values.type)))
            first = pc.index(pc.fill_null(too_big, False), True).as_py()
            if first >= 0:
                raise ConfigError(f"{where}, row {first + 1}: {values[first].as_py()} is beyond 2^53, which "
                                  "graders would receive rounded; store such numbers as text")


def _plain(value: Any) -> Any:
    """A column's value as JSON holds it: dates, decimals and the like as their text."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _text(value: Any) -> str:
    """A column's value as the graders' string metadata: text as is, anything else as JSON."""
    return value if isinstance(value, str) else "" if value is None else json.dumps(value)


@dataclass(frozen=True)
class PromptColumns:
    """Which columns make a TaskPrompt, and the system prompt plain prompts get."""

    prompt: str
    reference: str
    metadata: list[str]
    system_prompt: str = ""


class RowPrompts(Sequence[TaskPrompt]):
    """TaskPrompts read from the table on demand, a batch of rows at a time: no Python
    object per row is kept."""

    def __init__(self, ds: datasets.Dataset, rows: Sequence[int], columns: PromptColumns):
        self.ds, self.rows, self.columns = ds, rows, columns

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self._read([self.rows[j] for j in range(*i.indices(len(self)))])
        return self._read([self.rows[i]])[0]

    def _read(self, rows: list[int]) -> list[TaskPrompt]:
        c = self.columns
        batch = self.ds[[int(r) for r in rows]]  # one Arrow take: a dict of columns
        prompts = []
        for j, prompt in enumerate(batch[c.prompt]):
            typed = {k: _plain(batch[k][j]) for k in c.metadata}
            reference = _text(_plain(batch[c.reference][j])) if c.reference else ""
            metadata = {k: _text(v) for k, v in typed.items()}
            if isinstance(prompt, str):
                p = TaskPrompt(prompt, reference, metadata, typed)
                prompts.append(p.with_system_prompt(c.system_prompt) if c.system_prompt else p)
            else:
                messages = tuple({"role": m["role"], "content": m["content"]} for m in prompt)
                text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
                prompts.append(TaskPrompt(text, reference, metadata, typed, messages))
        return prompts


# Tasks already read and checked in this process, by config and file state: the optimizer checks
# its data when the config is parsed and builds its task from it a moment later.
_read: dict[tuple, Task] = {}


def dataset_task(cfg: RunConfig) -> Task:
    """The run's prompts from task.train (and task.heldout, or a seeded split of train),
    each no longer than the model may read."""
    task = cfg.task
    files = [data_files(spec, f"task.{key}") for key, spec in (("train", task.train), ("heldout", task.heldout))
             if spec]
    state = tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for paths in files for p in paths)
    key = (repr(task), cfg.model.source, state)
    if key not in _read:
        _read[key] = _read_task(cfg)
    return _read[key]


@dataclass(frozen=True)
class _Table:
    """One file's rows, checked: its prompt columns, and the prompt column as checked (text,
    or conversations as list<struct>)."""

    ds: datasets.Dataset
    columns: PromptColumns
    prompt_values: Any

    @property
    def conversational(self) -> bool:
        import pyarrow as pa

        return pa.types.is_list(self.prompt_values.type) or pa.types.is_large_list(self.prompt_values.type)

    def prompts(self, rows: Sequence[int] | None = None) -> RowPrompts:
        return RowPrompts(self.ds, range(len(self.ds)) if rows is None else rows, self.columns)


def _open_checked(spec: Any, key: str, task: TaskConfig) -> _Table:
    ds = open_data(spec, key)
    columns = PromptColumns(task.prompt_key, task.reference_key, _check_columns(ds, key, spec, task),
                            task.system_prompt)
    _check_typed(ds, key, spec, columns.metadata)
    table = _Table(ds, columns, _check_prompts(ds, key, spec, task.prompt_key))
    if table.conversational and task.system_prompt:
        raise ConfigError(f"task.system_prompt: the prompts of {_where(spec)} are conversations; "
                          "give them a system message of their own instead")
    if table.conversational and not task.chat_template:
        raise ConfigError(f"task.chat_template: the prompts of {_where(spec)} are conversations, which the "
                          "model reads through its chat template; set it to true")
    return table


def _read_task(cfg: RunConfig) -> Task:
    task = cfg.task
    train = _open_checked(task.train, "task.train", task)
    max_new_tokens = task.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    limit = _prompt_token_limit(cfg, max_new_tokens)
    if task.heldout:
        heldout = _open_checked(task.heldout, "task.heldout", task)
        if heldout.columns != train.columns:
            raise ConfigError(f"task.heldout: its columns {heldout.ds.column_names} are not train's "
                              f"{train.ds.column_names}")
        if heldout.conversational != train.conversational:
            raise ConfigError("task.heldout: its prompts and train's must both be text or both conversations")
        _refuse_overlap(train.ds, heldout.ds, task)
        return Task("dataset", "", limit.fit(train.prompts(), limit.bounds(train), "task.train", task.train),
                    limit.fit(heldout.prompts(), limit.bounds(heldout), "task.heldout", task.heldout),
                    max_new_tokens)
    size = round(task.heldout_fraction * len(train.ds)) if task.heldout_fraction else task.heldout_size
    if not 0 < size < len(train.ds):
        raise ConfigError(f"task.heldout_size: {_where(task.train)} has {len(train.ds)} rows; the held-out split "
                          f"must leave 1 to {len(train.ds) - 1} of them, got {size}")
    order = list(range(len(train.ds)))
    random.Random(task.seed).shuffle(order)
    bounds = limit.bounds(train)  # once for the table: both splits index it
    return Task("dataset", "", limit.fit(train.prompts(sorted(order[size:])), bounds, "task.train", task.train),
                limit.fit(train.prompts(sorted(order[:size])), bounds, "task.train", task.train), max_new_tokens)


def file_task(cfg: RunConfig, spec: Any, key: str = "--data") -> Task:
    """Every row of `spec` as held-out prompts, read and checked as a run's are (`hatchery eval --data`)."""
    table = _open_checked(spec, key, cfg.task)
    max_new_tokens = cfg.task.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    limit = _prompt_token_limit(cfg, max_new_tokens)
    heldout = limit.fit(table.prompts(), limit.bounds(table), key, spec)
    return Task("dataset", "", [], heldout, max_new_tokens)


@dataclass(frozen=True)
class _TokenLimit:
    """The longest prompt, in tokens after the chat template, that a run takes.

    Templating and tokenizing a million prompts takes minutes, so every row gets an upper
    bound first, over whole Arrow columns: a token is at least one byte of text (byte-level
    BPE; SentencePiece adds at most a leading marker), and a chat template adds the same text
    around every conversation of the same roles. Only rows whose bound passes the limit are
    measured exactly; if a sample of rows shows the template breaking the bound (it rewrites
    content), every row is.
    """

    tokens: int
    tokenizer: Any
    chat_template: bool
    skip: bool  # task.long_prompts: skip (else refuse)

    def fit(self, prompts: RowPrompts, bounds: Any, key: str, spec: Any) -> RowPrompts:
        """The rows whose prompts fit (`bounds`: their table's, by row); a longer one is refused
        by its row, or skipped."""
        import numpy as np

        rows = np.asarray(prompts.rows, dtype=np.int64)
        bounds = bounds[rows]
        sample = np.unique(np.linspace(0, len(rows) - 1, min(len(rows), BOUND_CHECKS)).astype(np.int64))
        unbounded = (self._measure(prompts, rows[sample]) > bounds[sample]).any()
        suspects = np.arange(len(rows)) if unbounded else np.flatnonzero(bounds > self.tokens)
        too_long = []
        for start in range(0, len(suspects), LENGTH_BATCH):
            batch = suspects[start:start + LENGTH_BATCH]
            lengths = self._measure(prompts, rows[batch])
            if not self.skip and (lengths > self.tokens).any():
                first = int(np.argmax(lengths > self.tokens))
                raise ConfigError(f"{key}: {_where(spec)}, row {rows[batch[first]] + 1}: the prompt is "
                                  f"{lengths[first]} tokens after the chat template; task.max_prompt_tokens "
                                  f"allows {self.tokens} (or set task.long_prompts: skip)")
            too_long.append(batch[lengths > self.tokens])
        kept = np.delete(rows, np.concatenate(too_long)) if too_long else rows
        if not len(kept):
            raise ConfigError(f"{key}: every prompt of {_where(spec)} is longer than {self.tokens} tokens")
        if len(kept) < len(rows):
            log.warning("%s: %d of %d prompts of %s are longer than %d tokens; they are skipped (task.long_prompts)",
                        key, len(rows) - len(kept), len(rows), _where(spec), self.tokens)
        return RowPrompts(prompts.ds, kept, prompts.columns)

    def _measure(self, prompts: RowPrompts, rows: Any) -> Any:
        """Exact lengths in tokens of these rows' prompts, as the model will read them."""
        import numpy as np

        batch = RowPrompts(prompts.ds, rows, prompts.columns)[:]
        texts = format_prompts(self.tokenizer, [p.model_input for p in batch], self.chat_template)
        return np.array([len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]],
                        dtype=np.int64)

    def bounds(self, table: _Table) -> Any:
        """An upper bound on every row's length in tokens, by table row."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        values = table.prompt_values
        if not table.conversational:
            sentinel = TaskPrompt("x")
            if table.columns.system_prompt:
                sentinel = sentinel.with_system_prompt(table.columns.system_prompt)
            text_bytes = pc.binary_length(values).to_numpy(zero_copy_only=False)
            return text_bytes + self._template_bytes(sentinel.model_input, 1) + SPARE_TOKENS
        flat, owners = pc.list_flatten(values), pc.list_parent_indices(values).to_numpy()
        content_bytes = pc.binary_length(pc.struct_field(flat, "content")).to_numpy(zero_copy_only=False)
        text_bytes = np.bincount(owners, weights=content_bytes, minlength=len(values)).astype(np.int64)
        roles = pa.ListArray.from_arrays(pc.subtract(values.offsets, values.offsets[0]), pc.struct_field(flat, "role"))
        shapes = pc.dictionary_encode(pc.binary_join(roles, ","))  # rows with the same roles in the same order
        around = [self._template_bytes([{"role": r, "content": "x"} for r in shape.split(",")], shape.count(",") + 1)
                  for shape in shapes.dictionary.to_pylist()]
        return text_bytes + np.asarray(around, dtype=np.int64)[shapes.indices.to_numpy()] + SPARE_TOKENS

    def _template_bytes(self, prompt: Any, row_bytes: int) -> int:
        """The bytes the template adds around a prompt whose row gives `row_bytes` of it."""
        (text,) = format_prompts(self.tokenizer, [prompt], self.chat_template)
        return len(text.encode()) - row_bytes


def _prompt_token_limit(cfg: RunConfig, max_new_tokens: int) -> _TokenLimit:
    """task.max_prompt_tokens, or the model's context less max_new_tokens."""
    path = resolve_model(cfg.model.source, cfg.model.revision)
    tokens = cfg.task.max_prompt_tokens
    if not tokens:
        context = context_length(path)
        if context is None:
            raise ConfigError(f"task.max_prompt_tokens: {cfg.model.source} states no context length; set it")
        tokens = context - max_new_tokens
        if tokens < 1:
            raise ConfigError(f"task.max_new_tokens: {max_new_tokens} leaves no room for a prompt in the model's "
                              f"context of {context} tokens")
    return _TokenLimit(tokens, load_tokenizer(path), cfg.task.chat_template, cfg.task.long_prompts == "skip")


def _refuse_overlap(train: datasets.Dataset, heldout: datasets.Dataset, task: TaskConfig) -> None:
    """Held-out prompts that are also training prompts would measure memory, not skill."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def prompts(ds: datasets.Dataset) -> Any:
        column = ds.data.column(task.prompt_key).combine_chunks()
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            return column
        return pa.array([json.dumps([[m["role"], m["content"]] for m in chat]) for chat in ds[task.prompt_key]])

    count = pc.sum(pc.is_in(prompts(heldout), value_set=prompts(train))).as_py() or 0
    if count and not task.allow_heldout_in_train:
        raise ConfigError(f"task.heldout: {count} of its {len(heldout)} prompts are also in task.train; "
                          "remove them, or set task.allow_heldout_in_train: true")


def run_task(cfg: RunConfig) -> Task:
    """The task a run's config names: a generated one (arith, countdown) or its dataset."""
    task = cfg.task
    if task.name == "dataset":
        return dataset_task(cfg)
    generated = load_task(task.name, task.seed, task.heldout_size)
    if not task.system_prompt:
        return generated
    return replace(generated, train=[p.with_system_prompt(task.system_prompt) for p in generated.train],
                   heldout=[p.with_system_prompt(task.system_prompt) for p in generated.heldout])
