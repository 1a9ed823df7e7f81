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
    task = run_task(_config(tmp_path, train=_write(tmp_path, fmt)))
    assert (len(task.train), len(task.heldout), task.max_new_tokens, task.grader) == (15, 5, 256, "")
    prompts = {p.text: p for p in [*task.train, *task.heldout]}
    assert len(prompts) == 20 and not {p.text for p in task.train} & {p.text for p in task.heldout}
    seven = prompts["What is 7 + 7?"]
    assert seven.reference == "14" and seven.metadata["level"] == "1"
    if fmt != "csv":  # as text for graders that read strings, and with their types for the rest
        assert json.loads(seven.metadata["tags"]) == ["sum", "7"]
        assert seven.columns == {"level": 1, "tags": ["sum", "7"]}
    else:
        assert seven.columns == {"level": 1}


def test_the_split_is_seeded_and_a_heldout_file_is_used_whole(tmp_path):
    train = _write(tmp_path, "jsonl")
    a, b = (run_task(_config(tmp_path, train=train, seed=s)) for s in (0, 0))
    assert [p.text for p in a.heldout] == [p.text for p in b.heldout]
    c = run_task(_config(tmp_path, train=train, seed=1))
    assert [p.text for p in c.heldout] != [p.text for p in a.heldout]
    heldout_dir = tmp_path / "test"
    heldout_dir.mkdir()
    test = _write(heldout_dir, "parquet", [{**r, "prompt": r["prompt"] + " Show your work."} for r in ROWS[:4]])
    task = run_task(_config(tmp_path, train=train, heldout=test))
    assert (len(task.train), len(task.heldout)) == (20, 4)
    assert task.heldout[0].text.endswith("Show your work.")
    assert len(run_task(_config(tmp_path, train=train, heldout_fraction=0.25)).heldout) == 5


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
    assert len(run_task(_config(tmp_path, train=train, heldout=test, allow_heldout_in_train=True)).heldout) == 4
    chats = _write(tmp_path, "parquet", CHATS)
    test = _write(test_dir, "jsonl", CHATS[:2] + [{**CHATS[2], "prompt": _conversation(99)}])
    with pytest.raises(ConfigError, match="2 of its 3 prompts are also in task.train"):
        _config(tmp_path, train=chats, heldout=test)


def test_a_dataset_needs_a_grader_and_other_tasks_take_no_files(tmp_path):
    with pytest.raises(ConfigError, match="grader: a dataset has no grader of its own"):
        parse_config({"task": {"name": "dataset", "train": _write(tmp_path, "jsonl")}})
    with pytest.raises(ConfigError, match="task.train: is read only with task.name: dataset"):
        parse_config({"task": {"train": "data.jsonl"}})


def test_data_preview_shows_prompts_as_the_model_reads_them(tmp_path, tiny_llama_dir, tiny_tokenizer, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"source": str(tiny_llama_dir)}, "grader": "numeric",
                                      "task": {"name": "dataset", "train": _write(tmp_path, "parquet"),
                                               "reference_key": "answer", "heldout_size": 4, "max_new_tokens": 16}}))
    assert main(["data", "preview", str(config), "-n", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["train_rows"], shown["heldout_rows"], shown["grader"]) == (16, 4, "numeric")
    assert len(shown["examples"]) == 2
    first = shown["examples"][0]
    prompt = next(r["prompt"] for r in ROWS if r["answer"] == first["reference"])
    templated = tiny_tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True)
    assert first["prompt"] == templated and set(first["columns"]) == {"level", "tags"}
    assert isinstance(first["columns"]["level"], int)  # with their types, as graders get them
    lengths = shown["prompt_tokens"]
    assert lengths["prompts_measured"] == 16 and 0 < lengths["min"] <= lengths["median"] <= lengths["max"]
    config.write_text(yaml.safe_dump({"grader": "numeric", "task": {"name": "dataset", "train": "missing.jsonl"}}))
    assert main(["data", "preview", str(config)]) == 2
    assert "task.train: missing.jsonl does not exist" in capsys.readouterr().err


def test_a_resumed_run_refuses_data_that_changed_under_it(tmp_path, tiny_llama_dir):
    """The prompt schedule replays onto the same rows: a resume on other data would not be this run."""
    train = _write(tmp_path, "jsonl")
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)},
                        "grader": "numeric",
                        "task": {"name": "dataset", "train": train, "heldout_size": 5, "max_new_tokens": 16}})
    first = prepare_start(cfg, tmp_path / "run")
    assert list(first.record["data"]["train"]) == [train]
    prepare_start(cfg, tmp_path / "run")  # the same data: resumes
    with open(train, "a") as f:
        f.write(json.dumps({**ROWS[0], "prompt": "one more"}) + "\n")
    with pytest.raises(ConfigError, match=f"task.train: {train} changed .* since this run started"):
        prepare_start(cfg, tmp_path / "run")


def _conversation(i: int) -> list[dict]:
    return [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": f"What is {i} + {i}?"}]


CHATS = [{"prompt": _conversation(i), "answer": str(2 * i)} for i in range(20)]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_conversational_prompts_reach_the_model_through_its_chat_template(tmp_path, fmt, tiny_llama_dir,
                                                                         tiny_tokenizer):
    cfg = parse_config({"model": {"source": str(tiny_llama_dir)}, "grader": "numeric",
                        "task": {"name": "dataset", "train": _write(tmp_path, fmt, CHATS), "reference_key": "answer",
                                 "heldout_size": 5, "max_new_tokens": 16}})
    task = run_task(cfg)
    seven = next(p for p in [*task.train, *task.heldout] if p.reference == "14")
    assert seven.text == "What is 7 + 7?" and seven.messages == tuple(_conversation(7))
    assert seven.model_input == _conversation(7)
    from hatchery.core.model import format_prompts
    (text,) = format_prompts(tiny_tokenizer, [seven.model_input], True)
    assert text == tiny_tokenizer.apply_chat_template(_conversation(7), tokenize=False, add_generation_prompt=True)
    prefill = [*_conversation(7), {"role": "assistant", "content": "The answer is"}]
    (continued,) = format_prompts(tiny_tokenizer, [prefill], True)
    assert continued.rstrip().endswith("The answer is")  # continued, not closed and answered anew


def test_a_system_prompt_is_given_before_plain_prompts_of_any_task(tmp_path):
    task = run_task(_config(tmp_path, train=_write(tmp_path, "jsonl"), system_prompt="Be brief."))
    assert task.train[0].messages == ({"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": task.train[0].text})
    arith = run_task(parse_config({"task": {"system_prompt": "Be brief."}}))
    assert arith.heldout[0].model_input[0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(ConfigError, match="task.system_prompt: the prompts of .* are conversations"):
        _config(tmp_path, train=_write(tmp_path, "jsonl", CHATS), system_prompt="Be brief.")
    with pytest.raises(ConfigError, match="task.system_prompt: needs task.chat_template: true"):
        parse_config({"task": {"system_prompt": "Be brief.", "chat_template": False}})
    with pytest.raises(ConfigError, match="task.chat_template: the prompts of .* are conversations"):
        _config(tmp_path, train=_write(tmp_path, "jsonl", CHATS), chat_template=False)


def _with_message(row: int, message) -> list[dict]:
    rows = [dict(r) for r in CHATS]
    rows[row] = {**rows[row], "prompt": [*rows[row]["prompt"], message]}
    return rows


@pytest.mark.parametrize(("rows", "message"), [
    (_with_message(4, {"role": "user"}), r"column 'prompt', row 5, message 3: the message has no content"),
    (_with_message(8, {"content": "hi"}), r"row 9, message 3: the role must be one of system, user, assistant"),
    (_with_message(8, {"role": "wizard", "content": "hi"}), r"row 9, message 3: the role must be one of"),
    ([*CHATS[:3], {**CHATS[3], "prompt": []}, *CHATS[4:]], r"row 4: the prompt is an empty conversation"),
    ([*CHATS[:2], {**CHATS[2], "prompt": CHATS[2]["prompt"][:1]}, *CHATS[3:]],
     r"row 3: the conversation has no user message"),
    ([{**r, "prompt": [{"from": "human", "value": "hi"}]} for r in CHATS],
     r"a conversation's messages need 'role' and 'content', they have \['from', 'value'\]"),
])
def test_bad_conversations_are_refused_naming_row_and_message(tmp_path, rows, message):
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, train=str(tmp_path / "chats.jsonl"))


def test_prompts_longer_than_the_model_may_read_are_refused_by_row_or_skipped(tmp_path, tiny_llama_dir, caplog):
    rows = [dict(r) for r in ROWS]
    rows[13]["prompt"] = "What is 13 + 13? " * 40
    train = _write(tmp_path, "jsonl", rows)

    def config(**task):
        return parse_config({"model": {"source": str(tiny_llama_dir)}, "grader": "numeric",
                             "task": {"name": "dataset", "train": train, "heldout_size": 5, **task}})

    with pytest.raises(ConfigError, match=r"task.train: .*data.jsonl, row 14: the prompt is \d+ tokens after the "
                                          r"chat template; task.max_prompt_tokens allows 100"):
        config(max_prompt_tokens=100)
    with pytest.raises(ConfigError, match=r"row 14: .* allows 240"):  # the tiny model's context is 256 tokens
        config(max_new_tokens=16)
    with caplog.at_level("WARNING", logger="hatchery.data"):
        skipped = run_task(config(max_prompt_tokens=100, long_prompts="skip"))
    assert "1 of 15 prompts of" in caplog.text and "longer than 100 tokens; they are skipped" in caplog.text
    assert len(skipped.train) + len(skipped.heldout) == 19
    assert all("13 + 13" not in p.text for p in [*skipped.train, *skipped.heldout])
    with pytest.raises(ConfigError, match="task.long_prompts: must be refuse or skip"):
        config(long_prompts="truncate")


def test_columns_graders_cannot_receive_exactly_are_refused(tmp_path):
    big = [{**r, "id": 2**60 if i == 6 else i} for i, r in enumerate(ROWS)]
    with pytest.raises(ConfigError, match=r"column 'id', row 7: 1152921504606846976 is beyond 2\^53"):
        _config(tmp_path, train=_write(tmp_path, "parquet", big))
    blobs = [{**r, "image": b"\x89PNG"} for r in ROWS]
    with pytest.raises(ConfigError, match="column 'image' holds binary data"):
        _config(tmp_path, train=_write(tmp_path, "parquet", blobs))
    assert "image" not in run_task(_config(tmp_path, train=_write(tmp_path, "parquet", blobs),
                                           metadata_keys=["level"])).train[0].columns


def test_eval_on_a_data_file_refuses_bad_data_before_loading_a_model(tmp_path, capsys):
    assert main(["eval", "no-model-here", "--data", str(tmp_path / "missing.jsonl"), "--grader", "length"]) == 2
    assert "--data: " + str(tmp_path / "missing.jsonl") + " does not exist" in capsys.readouterr().err
    assert main(["eval", "no-model-here", "--data", _write(tmp_path, "jsonl")]) == 2
    assert "--grader: a data file has no grader of its own" in capsys.readouterr().err
    assert main(["eval", "no-model-here", "--data", _write(tmp_path, "jsonl"), "--grader", "length",
                 "--prompt-key", "question"]) == 2
    assert "has no column 'question'" in capsys.readouterr().err


def _tiny_with_template(tmp_path, tiny_llama_dir, template: str):
    import shutil

    from transformers import AutoTokenizer
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def test_the_length_bound_never_lets_a_long_prompt_through(tmp_path, tiny_llama_dir):
    """Rows are measured exactly only when a cheap upper bound (a token per byte) passes the limit;
    a template that rewrites content breaks that bound, and then every row is measured."""
    from hatchery.core.model import format_prompts
    doubling = "{% for m in messages %}{{ m['content'] }}{{ m['content'] }}{% endfor %}"
    folder, tokenizer = _tiny_with_template(tmp_path, tiny_llama_dir, doubling)
    rows = [dict(r) for r in ROWS]
    rows[11]["prompt"] = "~`|\\^" * 12
    (text,) = format_prompts(tokenizer, [rows[11]["prompt"]], True)
    exact, bound = len(tokenizer(text, add_special_tokens=False)["input_ids"]), 60 + 1 + 2
    assert exact > bound  # doubled, the prompt is longer than its bound says
    train = _write(tmp_path, "jsonl", rows)
    with pytest.raises(ConfigError, match=rf"row 12: the prompt is {exact} tokens .* allows {bound}"):
        parse_config({"model": {"source": str(folder)}, "grader": "numeric",
                      "task": {"name": "dataset", "train": train, "heldout_size": 5, "max_prompt_tokens": bound}})


def test_a_prompt_over_its_bound_but_within_the_limit_is_kept(tmp_path, tiny_llama_dir, tiny_tokenizer):
    from hatchery.core.model import format_prompts
    rows = [dict(r) for r in ROWS]
    rows[3]["prompt"] = "What is 3 + 3? " * 12
    (text,) = format_prompts(tiny_tokenizer, [rows[3]["prompt"]], True)
    exact = len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert exact < len(text.encode())  # BPE merges: fewer tokens than bytes, so the bound alone would refuse it
    task = run_task(parse_config({"model": {"source": str(tiny_llama_dir)}, "grader": "numeric",
                                  "task": {"name": "dataset", "train": _write(tmp_path, "jsonl", rows),
                                           "heldout_size": 5, "max_prompt_tokens": exact}}))
    assert len(task.train) + len(task.heldout) == 20


def test_the_word_problems_example_is_what_its_script_writes_and_its_config_runs(tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    from hatchery.core.config import load_config
    example = Path(__file__).resolve().parents[2] / "examples" / "word-problems"
    subprocess.run([sys.executable, str(example / "make_data.py"), "--out", str(tmp_path)], check=True)
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_bytes() == (example / name).read_bytes(), name
    monkeypatch.chdir(example.parents[1])  # the config names its files from the repository root
    task = run_task(load_config(example / "run.yaml"))
    assert (len(task.train), len(task.heldout)) == (320, 64)
    assert set(task.heldout[0].columns) == {"steps", "kind"} and isinstance(task.heldout[0].columns["steps"], int)


def test_a_bad_row_in_a_million_is_named_before_anything_starts(tmp_path):
    import pyarrow.parquet as pq

    prompts = [f"What is {i % 97} + 1?" for i in range(1_000_000)]
    prompts[999_998] = " \t"
    pq.write_table(pa.table({"prompt": prompts, "answer": ["1"] * len(prompts)}), tmp_path / "big.parquet")
    with pytest.raises(ConfigError, match=r"big.parquet, column 'prompt', row 999999: the prompt is empty or missing"):
        _config(tmp_path, train=str(tmp_path / "big.parquet"))


def test_a_file_that_cannot_be_read_is_refused_naming_it(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ConfigError, match=r"task.train: cannot read .*broken.parquet: "):
        _config(tmp_path, train=str(tmp_path / "broken.parquet"))
    (tmp_path / "broken.jsonl").write_text('{"prompt": "ok", "answer": "1"}\n{"prompt": \n')
    with pytest.raises(ConfigError, match=r"task.train: cannot read .*broken.jsonl: "):
        _config(tmp_path, train=str(tmp_path / "broken.jsonl"))
