"""Node.js for the examples' tests: skipped where node or an example's packages are missing,
except in CI, which installs them (scripts/bootstrap.sh --dev)."""

import os
import shutil
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def node_for(example: str) -> str:
    """The node binary, once examples/EXAMPLE has its node_modules."""
    node = shutil.which("node")
    missing = ("node is not on PATH" if node is None else
               "" if (EXAMPLES / example / "node_modules").is_dir() else f"examples/{example}/node_modules is missing")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI must run `npm ci --prefix examples/{example}` first")
        pytest.skip(f"{missing}; run `npm ci --prefix examples/{example}`")
    return node
