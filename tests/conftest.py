import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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
