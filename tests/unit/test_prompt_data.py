"""Prompts from the user's own files (task.name: dataset), read with Hugging Face datasets."""

import json

import datasets
import pyarrow as pa
import pytest
import yaml

from hatchery.cli import main
from hatchery.core.config import ConfigError, parse_config
from hatchery.core.prompt_data import run_task
from hatchery.core.start import prepare_start

ROWS = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i), "level": i % 3, "tags": ["sum", str(i)]}
        for i in range(20)]


def _write(folder, fmt: str, rows=ROWS) -> str:
    """One file (or folder) of `rows` in a format, written with datasets or pyarrow."""
    ds = datasets.Dataset.from_list(rows)
    if fmt == "jsonl":
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path = folder / "data.json"
        path.write_text(json.dumps(rows))
    elif fmt == "parquet":
        path = folder / "data.parquet"
        ds.to_parquet(str(path))
    elif fmt == "csv":
        path = folder / "data.csv"
        datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "tags"} for r in rows]).to_csv(str(path))
    elif fmt == "arrow":
        path = folder / "data.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, ds.data.table.schema) as writer:
            writer.write_table(ds.data.table)
    else:  # a save_to_disk folder
        path = folder / "saved"
        ds.save_to_disk(str(path))
    return str(path)


def _config(tmp_path, **task):
    return parse_config({"run_dir": str(tmp_path / "run"), "grader": "numeric",
                         "task": {"name": "dataset", "reference_key": "answer", "heldout_size": 5, **task}})


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv", "arrow", "saved"])
def test_every_format_gives_the_same_prompts_and_columns(tmp_path, fmt):
    task = run_task(_config(tmp_path, train=_write(tmp_path, fmt)).task)
    assert (len(task.train), len(task.heldout), task.max_new_tokens, task.grader) == (15, 5, 256, "")
    prompts = {p.text: p for p in [*task.train, *task.heldout]}
    assert len(prompts) == 20 and not {p.text for p in task.train} & {p.text for p in task.heldout}
    seven = prompts["What is 7 + 7?"]
    assert seven.reference == "14" and seven.metadata["level"] == "1"
    if fmt != "csv":  # lists reach the graders as JSON text (typed columns: issue 21, not yet)
        assert json.loads(seven.metadata["tags"]) == ["sum", "7"]


def test_the_split_is_seeded_and_a_heldout_file_is_used_whole(tmp_path):
    train = _write(tmp_path, "jsonl")
    a, b = (run_task(_config(tmp_path, train=train, seed=s).task) for s in (0, 0))
    assert [p.text for p in a.heldout] == [p.text for p in b.heldout]
    c = run_task(_config(tmp_path, train=train, seed=1).task)
    assert [p.text for p in c.heldout] != [p.text for p in a.heldout]
    heldout_dir = tmp_path / "test"
    heldout_dir.mkdir()
    test = _write(heldout_dir, "parquet", [{**r, "prompt": r["prompt"] + " Show your work."} for r in ROWS[:4]])
    task = run_task(_config(tmp_path, train=train, heldout=test).task)
    assert (len(task.train), len(task.heldout)) == (20, 4)
    assert task.heldout[0].text.endswith("Show your work.")
    assert len(run_task(_config(tmp_path, train=train, heldout_fraction=0.25).task).heldout) == 5


@pytest.mark.parametrize(("rows", "task", "message"), [
    (None, {"train": "nowhere.jsonl"}, "task.train: nowhere.jsonl does not exist"),
    (ROWS, {"train": "DATA.txt"}, "files must all be one of"),
    ([], {}, "has no rows"),
    (ROWS, {"prompt_key": "question"}, "task.prompt_key: .* has no column 'question'; its columns: \\['prompt', "),
    (ROWS, {"reference_key": "solution"}, "task.reference_key: .* has no column 'solution'"),
    (ROWS, {"metadata_keys": ["level", "difficulty"]}, "task.metadata_keys: .* has no column 'difficulty'"),
    (ROWS[:6] + [{**ROWS[6], "prompt": "  "}] + ROWS[7:], {}, "column 'prompt', row 7: the prompt is empty"),
    ([{**r, "prompt": None} if i == 12 else r for i, r in enumerate(ROWS)], {}, "row 13: the prompt is empty"),
    ([{**r, "prompt": i} for i, r in enumerate(ROWS)], {}, "column 'prompt' holds int64, not text"),
    (ROWS, {"heldout_size": 20}, "has 20 rows; the held-out split must leave 1 to 19"),
])
def test_bad_data_is_refused_naming_file_row_and_column(tmp_path, rows, task, message):
    if rows is not None and "train" not in task:
        task = {**task, "train": str(tmp_path / "data.jsonl")}
        (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif task.get("train") == "DATA.txt":
        (tmp_path / "DATA.txt").write_text("x")
        task = {**task, "train": str(tmp_path / "DATA.txt")}
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **task)


def test_heldout_prompts_that_are_also_trained_on_are_refused_unless_allowed(tmp_path):
    train = _write(tmp_path, "jsonl")
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    test = _write(test_dir, "jsonl", ROWS[:3] + [{**ROWS[3], "prompt": "new"}])
    with pytest.raises(ConfigError, match="3 of its 4 prompts are also in task.train"):
        _config(tmp_path, train=train, heldout=test)
    assert len(run_task(_config(tmp_path, train=train, heldout=test, allow_heldout_in_train=True).task).heldout) == 4


def test_a_dataset_needs_a_grader_and_other_tasks_take_no_files(tmp_path):
    with pytest.raises(ConfigError, match="grader: a dataset has no grader of its own"):
        parse_config({"task": {"name": "dataset", "train": _write(tmp_path, "jsonl")}})
    with pytest.raises(ConfigError, match="task.train: is read only with task.name: dataset"):
        parse_config({"task": {"train": "data.jsonl"}})


def test_data_preview_shows_prompts_as_the_model_reads_them(tmp_path, tiny_llama_dir, tiny_tokenizer, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"source": str(tiny_llama_dir)}, "grader": "numeric",
                                      "task": {"name": "dataset", "train": _write(tmp_path, "parquet"),
                                               "reference_key": "answer", "heldout_size": 4}}))
    assert main(["data", "preview", str(config), "-n", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["train_rows"], shown["heldout_rows"], shown["grader"]) == (16, 4, "numeric")
    assert len(shown["examples"]) == 2
    first = shown["examples"][0]
    prompt = next(r["prompt"] for r in ROWS if r["answer"] == first["reference"])
    templated = tiny_tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True)
    assert first["prompt"] == templated and set(first["metadata"]) == {"level", "tags"}
    lengths = shown["prompt_tokens"]
    assert lengths["prompts_measured"] == 16 and 0 < lengths["min"] <= lengths["median"] <= lengths["max"]
    config.write_text(yaml.safe_dump({"grader": "numeric", "task": {"name": "dataset", "train": "missing.jsonl"}}))
    assert main(["data", "preview", str(config)]) == 2
    assert "task.train: missing.jsonl does not exist" in capsys.readouterr().err


def test_a_resumed_run_refuses_data_that_changed_under_it(tmp_path, tiny_llama_dir):
    """The prompt schedule replays onto the same rows: a resume on other data would not be this run."""
    train = _write(tmp_path, "jsonl")
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)},
                        "grader": "numeric", "task": {"name": "dataset", "train": train, "heldout_size": 5}})
    first = prepare_start(cfg, tmp_path / "run")
    assert list(first.record["data"]["train"]) == [train]
    prepare_start(cfg, tmp_path / "run")  # the same data: resumes
    with open(train, "a") as f:
        f.write(json.dumps({**ROWS[0], "prompt": "one more"}) + "\n")
    with pytest.raises(ConfigError, match=f"task.train: {train} changed .* since this run started"):
        prepare_start(cfg, tmp_path / "run")
