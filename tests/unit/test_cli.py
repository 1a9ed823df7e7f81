"""The `hatchery` command line: the same verbs and flags as users and the chart rely on."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hatchery.cli import build_parser

# Every verb's flags as they were when the command line became a table of handlers
# (2026-12-01): names, defaults, types, choices, help text and order. Users' scripts rely on them.
SURFACE = Path(__file__).resolve().parents[1] / "data" / "cli-surface.json"


def surface(parser: argparse.ArgumentParser) -> dict:
    """What `--help` shows of each verb, read off the parser (argparse keeps it in private fields)."""
    def flags(p: argparse.ArgumentParser) -> list[dict]:
        return [{"flags": list(a.option_strings), "dest": a.dest, "nargs": a.nargs, "default": a.default,
                 "type": getattr(a.type, "__name__", None), "choices": a.choices, "required": a.required,
                 "help": a.help, "metavar": a.metavar, "action": type(a).__name__}
                for a in p._actions if not isinstance(a, argparse._SubParsersAction)]

    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"description": parser.description, "verbs": {c.dest: c.help for c in verbs._choices_actions},
            "flags": {name: flags(p) for name, p in verbs.choices.items()}}


@pytest.fixture()
def clean_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("HATCHERY_")]:
        monkeypatch.delenv(name)


def test_no_verb_or_flag_is_removed_or_changes_meaning(clean_env):
    """Verbs and flags may join, and help may be reworded; a flag's names, default, type and
    choices stay as scripts use them."""
    now = json.loads(json.dumps(surface(build_parser()), sort_keys=True))
    before = json.loads(SURFACE.read_text())
    assert [v for v in now["verbs"] if v in before["verbs"]] == list(before["verbs"])
    meaning = ("flags", "nargs", "default", "type", "choices", "required", "action")
    for verb, flags in before["flags"].items():
        kept = {f["dest"]: {k: f[k] for k in meaning} for f in now["flags"][verb]}
        for flag in flags:
            assert kept.get(flag["dest"]) == {k: flag[k] for k in meaning}, (verb, flag["flags"])
    assert now["description"] == before["description"]


def test_service_flags_also_come_from_the_environment(clean_env, monkeypatch):
    monkeypatch.setenv("HATCHERY_OPTIMIZER_ADDRESS", "opt:50051")
    monkeypatch.setenv("HATCHERY_PORT", "7000")
    monkeypatch.setenv("HATCHERY_TLS_REQUIRE_CLIENT_CERT", "true")
    args = build_parser().parse_args(["inference"])  # --optimizer-address is required, but set
    assert (args.optimizer_address, args.port, args.tls_require_client_cert) == ("opt:50051", 7000, True)
    assert build_parser().parse_args(["inference", "--port", "1"]).port == 1  # flags win
    monkeypatch.setenv("HATCHERY_OUT", "from-env.json")
    assert build_parser().parse_args(["bench"]).out is None  # tools take flags only


def test_a_benchmark_verb_without_its_extra_says_what_to_install(tmp_path):
    """trl made unimportable in a fresh interpreter, as on an install without hatchery[bench]."""
    code = ("import sys; sys.modules['trl'] = None; from hatchery.cli import main; "
            f"sys.exit(main(['bench-grpo', '--out', {str(tmp_path / 'grpo.jsonl')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "hatchery bench-grpo: needs trl: pip install 'hatchery[bench]'" in result.stderr
    assert not (tmp_path / "grpo.jsonl").exists()
