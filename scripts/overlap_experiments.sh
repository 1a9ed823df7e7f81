#!/usr/bin/env bash
# Issue 27: the default run, 12 minutes, two seeds, before and after the optimizer's own
# update moved beside the next generation (and workers built the next factors ahead), one
# run at a time (each takes both cores). "before" runs the tree at BEFORE (a commit from
# before the change) from a scratch worktree; "after" runs this tree. Each run's breakdown
# goes to docs/results/breakdown-overlap-<when>-seed<N>.json and its metrics beside it.
#   BEFORE=<commit> RUNS=../overlap-runs scripts/overlap_experiments.sh [WHEN-SEED ...]
# with WHEN before or after and SEED 0 or 1; no argument runs all four, interleaved.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BEFORE:?name the commit to measure before the change, e.g. BEFORE=9be826e}"
RUNS=${RUNS:-../overlap-runs}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=docs/results
mkdir -p "$RUNS"
RUN_LIST=("$@")
[ ${#RUN_LIST[@]} -gt 0 ] || RUN_LIST=(before-0 after-0 before-1 after-1)
before_tree="$RUNS/tree-before"
[ -d "$before_tree" ] || git worktree add -q --detach "$before_tree" "$BEFORE"

for run in "${RUN_LIST[@]}"; do
  when=${run%-*} seed=${run##*-}
  tree=$PWD
  [ "$when" = before ] && tree=$(cd "$before_tree" && pwd)
  dir="$RUNS/$when-seed$seed"
  rm -rf "$dir"
  printf 'run_dir: %s\nes:\n  seed: %s\n' "$dir" "$seed" > "$dir.yaml"
  # "after" names the overlap (the default since these runs) so that it stays "after" if that changes
  [ "$when" = after ] && printf 'train:\n  overlap_update: true\n' >> "$dir.yaml"
  echo "== $when seed $seed: $(date -u +%H:%M:%S)"
  PYTHONPATH="$tree" "$PYTHON" -m hatchery.cli run "$dir.yaml" > "$dir.log" 2>&1
  cp "$dir/metrics.jsonl" "$OUT/overlap-$when-seed$seed-metrics.jsonl"
  "$PYTHON" -m hatchery.cli breakdown "$dir" --out "$OUT/breakdown-overlap-$when-seed$seed.json"
done
echo "== done: $(date -u +%H:%M:%S)"
