#!/usr/bin/env bash
# Issue 7, part 4: EGGROLL against plain batched inference on a GPU, in bf16 at batch 256
# to 2048, on random models in the shapes of Qwen2.5-0.5B and Qwen2.5-1.5B (throughput
# needs no trained weights), plus naive full-rank ES at population 8.
#
# Runs where python3 holds torch and transformers (the device machine's image does) from
# the repo root, in about five minutes on an H200. The random models borrow SmolLM2's
# tokenizer; save it where the script looks, on a machine that has the embedded model:
#   .venv/bin/python -c "from hatchery.core.model import EMBEDDED, load_tokenizer, resolve_model; \
#     load_tokenizer(resolve_model(EMBEDDED)).save_pretrained('.gpu/tokenizer')"
# Output: $OUT/bench-gpu.json, bench-throughput.png and bench-naive.png (OUT defaults to docs/results).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/results}
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
PYTHONPATH=. PYTHONUNBUFFERED=1 "$PYTHON" -m hatchery.cli bench --device cuda --dtypes bfloat16 \
  --models qwen2.5-0.5b-shape,qwen2.5-1.5b-shape --batches 256,512,1024,2048 --prompts-per-member 4 \
  --ranks 1,4 --naive-populations 8 --repeats 2 --new-tokens 32 --tokenizer .gpu/tokenizer \
  --out "$OUT/bench-gpu.json" --plots "$OUT"
