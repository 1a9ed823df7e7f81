"""Models by hub id, through huggingface_hub's own cache. No hub is reachable here, so the
test writes a hub-layout cache itself (a tiny model under models--org--name/snapshots/<commit>)
and runs the checks in a process set up as a user's would be offline: HF_HUB_CACHE and
HF_HUB_OFFLINE set."""

import json
import os
import re
import subprocess
import sys

import pytest

import tiny
from hatchery.core.config import ConfigError, parse_config

REPO, FIRST, SECOND = "tiny-org/tiny-llama", "a" * 40, "b" * 40

# What a user's processes do with configs, one step after another: validate a config and
# prepare its run's start; run `hatchery fetch-model` on a config file (the chart's init
# container); or (the test's own step) point a ref of the cache at a commit.
STEPS = """
import contextlib, io, json, pathlib, sys
from hatchery.cli import main
from hatchery.core.config import ConfigError, parse_config
from hatchery.core.start import prepare_start
for step in json.loads(sys.argv[1]):
    if "point" in step:
        pathlib.Path(step["point"]).write_text(step["commit"])
        continue
    if "fetch" in step:
        config = pathlib.Path(step["fetch"]["run_dir"] + ".yaml")
        config.write_text(json.dumps(step["fetch"]))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["fetch-model", str(config)])
        print(json.dumps({"rc": rc, "out": out.getvalue().strip(), "err": err.getvalue().strip()}))
        continue
    try:
        cfg = parse_config(step)
        print(json.dumps(prepare_start(cfg, pathlib.Path(cfg.run_dir)).record))
    except ConfigError as err:
        print(json.dumps({"refused": str(err)}))
"""


def _run_steps(cache, steps: list[dict]) -> list[dict]:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", STEPS, json.dumps(steps)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_hub_id_loads_offline_from_the_cache_and_a_resume_stays_on_its_commit(tmp_path):
    cache = tmp_path / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    for commit, seed in ((FIRST, 0), (SECOND, 1)):  # two commits with different weights
        tiny.save("llama", repo / "snapshots" / commit, seed=seed)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FIRST)
    run = {"run_dir": str(tmp_path / "run"), "model": {"source": REPO}}
    start, fetched, resumed, fresh, pinned, fetch_absent, *refused = _run_steps(cache, [
        run,
        {"point": str(repo / "refs" / "main"), "commit": SECOND},  # main moves on
        {"fetch": run},  # the init container of a restarted optimizer fetches the commit the run started on
        run,  # the run resumes on the commit it started from
        {"run_dir": str(tmp_path / "fresh"), "model": {"source": REPO}},  # a new run takes main as it is now
        {"run_dir": str(tmp_path / "pinned"), "model": {"source": REPO, "revision": FIRST}},
        {"fetch": {"run_dir": str(tmp_path / "absent"), "model": {"source": "tiny-org/absent"}}},
        {"run_dir": str(tmp_path / "absent"), "model": {"source": "tiny-org/absent"}},
        {"run_dir": str(tmp_path / "v2"), "model": {"source": REPO, "revision": "v2"}},
        {"run_dir": str(tmp_path / "embedded"), "model": {"revision": "v2"}},
    ])
    assert (start["source"], start["revision"], start["commit"]) == (REPO, "main", FIRST)
    assert start["base"]["path"] == str((repo / "snapshots" / FIRST).resolve())
    assert "model.safetensors" in start["base"]["files"]  # every file by its hash: workers load these
    assert (fetched["rc"], fetched["out"]) == (0, str(repo / "snapshots" / FIRST))
    assert fetch_absent["rc"] == 2 and "tiny-org/absent is neither a local folder" in fetch_absent["err"]
    assert resumed["commit"] == FIRST and resumed["base"]["sha256"] == start["base"]["sha256"]
    assert fresh["commit"] == SECOND and fresh["base"]["sha256"] != start["base"]["sha256"]
    assert (pinned["commit"], pinned["revision"]) == (FIRST, FIRST)
    where = re.escape(str(cache))
    absent, v2, embedded = (r["refused"] for r in refused)
    assert re.match(rf"model.source: tiny-org/absent is neither a local folder nor in the Hugging Face cache "
                    rf"{where} \(HF_HUB_OFFLINE is set\)", absent), absent
    assert re.match(rf"model.source: {REPO} at revision v2 is neither a local folder nor in the Hugging Face "
                    rf"cache {where}", v2), v2
    assert embedded.startswith("model.revision: is for a hub id")
    assert not any((tmp_path / name).exists() for name in ("absent", "v2", "embedded"))  # nothing started


def test_a_revision_is_refused_for_a_local_folder(tiny_llama_dir):
    with pytest.raises(ConfigError, match="model.revision: is for a hub id, not a local folder"):
        parse_config({"model": {"source": str(tiny_llama_dir), "revision": "main"}})
