#!/usr/bin/env bash
# Issue 26: drift from the start model beside held-out reward, for the default run, TRL's
# GRPO and the anchored step (es.anchor_decay), 12 minutes of training each, one run at a
# time (each takes both cores). Run dirs go under $RUNS; each run's metrics are copied to
# docs/results/drift-<variant>-seed<N>(-metrics).jsonl as it ends, and the table and plot
# are made at the end by `hatchery ablation` (docs/results/drift.json, drift.png).
#   RUNS=../drift-runs scripts/drift_experiments.sh [VARIANT-SEED ...]
# with VARIANT one of default, grpo, anchor1, anchor4 (es.anchor_decay 1 and 4) and SEED 0 or 1;
# no argument runs all eight.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-../drift-runs}
HATCHERY=${HATCHERY:-.venv/bin/hatchery}
OUT=docs/results
mkdir -p "$RUNS"
RUN_LIST=("$@")
[ ${#RUN_LIST[@]} -gt 0 ] || RUN_LIST=(default-0 grpo-0 anchor4-0 default-1 grpo-1 anchor4-1 anchor1-0 anchor1-1)

for run in "${RUN_LIST[@]}"; do
  variant=${run%-*} seed=${run##*-}
  echo "== $variant seed $seed: $(date -u +%H:%M:%S)"
  if [ "$variant" = grpo ]; then
    "$HATCHERY" bench-grpo --seed "$seed" --eval-every 4 --out "$OUT/drift-grpo-seed$seed.jsonl" \
      > "$RUNS/grpo-seed$seed.log" 2>&1
    continue
  fi
  case $variant in
    default) anchor=0 ;;
    anchor*) anchor=${variant#anchor} ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  dir="$RUNS/$variant-seed$seed"
  rm -rf "$dir"
  printf 'run_dir: %s\nes:\n  seed: %s\n  anchor_decay: %s\n' "$dir" "$seed" "$anchor" > "$RUNS/$variant-seed$seed.yaml"
  "$HATCHERY" run "$RUNS/$variant-seed$seed.yaml" > "$RUNS/$variant-seed$seed.log" 2>&1
  cp "$dir/metrics.jsonl" "$OUT/drift-$variant-seed$seed-metrics.jsonl"
done

variants=()
for variant in default grpo anchor1 anchor4; do
  runs=()
  for seed in 0 1; do
    if [ "$variant" = grpo ]; then file="$OUT/drift-grpo-seed$seed.jsonl"; else file="$RUNS/$variant-seed$seed"; fi
    [ -e "$file" ] && runs+=("$file")
  done
  [ ${#runs[@]} -gt 0 ] && variants+=("$variant=$(IFS=,; echo "${runs[*]}")")
done
"$HATCHERY" ablation "${variants[@]}" --out "$OUT/drift.json" --plot "$OUT/drift.png"
echo "== done: $(date -u +%H:%M:%S)"
