"""Models by hub id, through huggingface_hub's own cache. No hub is reachable here, so the
test writes a hub-layout cache itself (a tiny model under models--org--name/snapshots/<commit>)
and every process runs as a user's would offline: HF_HUB_CACHE and HF_HUB_OFFLINE set."""

import json
import os
import re
import subprocess
import sys

import pytest

import tiny

REPO, FIRST, SECOND = "tiny-org/tiny-llama", "a" * 40, "b" * 40

# What a user's process does with a config: validate it, then prepare the run's start.
PREPARE = """
import json, sys
from hatchery.core.config import ConfigError, parse_config
from hatchery.core.start import prepare_start
try:
    cfg = parse_config(json.loads(sys.argv[1]))
    print(json.dumps(prepare_start(cfg, __import__("pathlib").Path(cfg.run_dir)).record))
except ConfigError as err:
    print(err, file=sys.stderr)
    sys.exit(2)
"""


def _snapshot(cache, commit: str, seed: int, ref: str = "main"):
    repo = cache / f"models--{REPO.replace('/', '--')}"
    tiny.save("llama", repo / "snapshots" / commit, seed=seed)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)


def _prepare(cache, model: dict, run_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    config = {"run_dir": str(run_dir), "model": model}
    return subprocess.run([sys.executable, "-c", PREPARE, json.dumps(config)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture()
def cache(tmp_path):
    cache = tmp_path / "hub"
    _snapshot(cache, FIRST, seed=0)
    return cache


def test_a_hub_id_loads_from_the_cache_offline_and_the_start_records_its_commit(cache, tmp_path):
    done = _prepare(cache, {"source": REPO}, tmp_path / "run")
    assert done.returncode == 0, done.stderr
    start = json.loads(done.stdout)
    assert (start["source"], start["revision"], start["commit"]) == (REPO, "main", FIRST)
    assert start["base"]["path"] == str((cache / "models--tiny-org--tiny-llama" / "snapshots" / FIRST).resolve())
    assert "model.safetensors" in start["base"]["files"]  # every file by its hash: workers load these
    # main moves on to another commit; the run resumes on the commit it started from
    _snapshot(cache, SECOND, seed=1)
    again = _prepare(cache, {"source": REPO}, tmp_path / "run")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["commit"] == FIRST
    fresh = _prepare(cache, {"source": REPO}, tmp_path / "fresh")  # a new run takes main as it is now
    assert json.loads(fresh.stdout)["commit"] == SECOND and json.loads(fresh.stdout)["base"]["sha256"] != start[
        "base"]["sha256"]
    pinned = _prepare(cache, {"source": REPO, "revision": FIRST}, tmp_path / "pinned")
    assert json.loads(pinned.stdout)["commit"] == FIRST and json.loads(pinned.stdout)["revision"] == FIRST


@pytest.mark.parametrize(("model", "message"), [
    ({"source": "tiny-org/absent"}, "model.source: tiny-org/absent is neither a local folder nor in the Hugging "
                                    "Face cache {cache} \\(HF_HUB_OFFLINE is set\\)"),
    ({"source": REPO, "revision": "v2"}, "model.source: tiny-org/tiny-llama at revision v2 is neither a local "
                                         "folder nor in the Hugging Face cache {cache}"),
    ({"source": "embedded:smollm2-135m-instruct", "revision": "v2"}, "model.revision: is for a hub id"),
])
def test_a_model_that_is_not_there_offline_is_refused_before_anything_starts(cache, tmp_path, model, message):
    done = _prepare(cache, model, tmp_path / "run")
    assert done.returncode == 2
    assert re.search(message.format(cache=re.escape(str(cache))), done.stderr), done.stderr
    assert not (tmp_path / "run").exists()  # nothing was started or written


def test_a_revision_is_refused_for_a_local_folder(tiny_llama_dir):
    from hatchery.core.config import ConfigError, parse_config
    with pytest.raises(ConfigError, match="model.revision: is for a hub id, not a local folder"):
        parse_config({"model": {"source": str(tiny_llama_dir), "revision": "main"}})
