#!/usr/bin/env bash
# Issue 22: the three services train a random Qwen2.5-0.5B-shaped model for a few generations
# with the worker on the GPU; the optimizer's and the worker's weight fingerprints must agree
# at every result (the script fails otherwise), and the perturbed / plain generation
# throughput ratio at batch 256 and 1024 is measured beside it, with the GPU's name.
#
# Runs from the repo root where python3 holds torch, transformers and grpcio (the device
# machine's image does), in a few minutes on an H200. The random model borrows SmolLM2's
# tokenizer; save it where the script looks, on a machine that has the embedded model:
#   .venv/bin/python -c "from hatchery.core.model import EMBEDDED, load_tokenizer, resolve_model; \
#     load_tokenizer(resolve_model(EMBEDDED)).save_pretrained('.gpu/tokenizer')"
# Output: $OUT/gpu-e2e.json (OUT defaults to docs/results). The same on a CPU, small:
#   DEVICE=cpu SHAPE=tiny DTYPE=float32 BATCHES=16 TOKENIZER= scripts/gpu_e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/results}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
[ "${DEVICE%%:*}" = cuda ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
PYTHONPATH=. PYTHONUNBUFFERED=1 "$PYTHON" -m hatchery.bench.gpu_e2e --device "$DEVICE" \
  --shape "${SHAPE:-qwen2.5-0.5b-shape}" --dtype "${DTYPE:-bfloat16}" --batches "${BATCHES:-256,1024}" \
  --tokenizer "${TOKENIZER-.gpu/tokenizer}" --out "$OUT/gpu-e2e.json"
