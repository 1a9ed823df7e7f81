"""Shared fixtures, and the test layers as markers.

tests/unit      the ES math, the core, the chart and the command line, in-process: marker `unit`
tests/services  real gRPC servers on loopback, one or more services at a time: `services`, `slow`
tests/system    whole runs with every service as its own process: `system`, `slow`

`pytest -m "not slow"` runs the unit layer alone; `pytest` runs everything.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

LAYERS = {"unit": ("unit",), "services": ("services", "slow"), "system": ("system", "slow")}


def pytest_collection_modifyitems(items):
    for item in items:
        layer = Path(item.fspath).parent.name
        if layer not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: a test belongs in one of tests/{{{','.join(LAYERS)}}}/")
        for marker in LAYERS[layer]:
            item.add_marker(marker)

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return tiny.tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return tiny.save("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def procs():
    """Processes a test starts, by name; any still running when it ends are killed."""
    running: dict = {}
    yield running
    for proc in running.values():
        if proc.poll() is None:
            proc.kill()
