#!/usr/bin/env bash
# Issue 28: ES in LoRA space against weights space on the default task, 12 minutes of
# training each, two seeds, one run at a time (each takes both cores). Variants:
#   weights   the default run; its change is then cut to LoRA rank 8 and 16 by SVD
#             (hatchery export --format peft-lora --rank K) and each cut is evaluated
#   lora8     es.space: lora, es.lora_rank 8; its export is the adapter itself
#   lora16    the same at rank 16
# with es.sigma and es.lr $LORA_SIGMA and $LORA_LR in lora space when set (the adapter's
# noise and step; unset: lora space's defaults, 0.05, what the runs of 2026-12-02 used). Run dirs go under $RUNS, each run's metrics are copied to
# docs/results/lora-<variant>-seed<N>-metrics.jsonl, every export's report and held-out reward
# are appended to docs/results/lora-exports.jsonl, and the table and plot are made at the end
# by `hatchery ablation` (docs/results/lora.json, lora.png).
#   RUNS=../lora-runs scripts/lora_experiments.sh [VARIANT-SEED ...]
# with SEED 0 or 1; no argument runs all six.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-../lora-runs}
HATCHERY=${HATCHERY:-.venv/bin/hatchery}
PYTHON=${PYTHON:-.venv/bin/python}
LORA_SIGMA=${LORA_SIGMA:-}
LORA_LR=${LORA_LR:-$LORA_SIGMA}
OUT=docs/results
EXPORTS=$OUT/lora-exports.jsonl
mkdir -p "$RUNS"
RUN_LIST=("$@")
[ ${#RUN_LIST[@]} -gt 0 ] || RUN_LIST=(weights-0 lora8-0 lora16-0 weights-1 lora8-1 lora16-1)

# the held-out reward of one export, with its report, as one line of $EXPORTS
evaluate_export() {
  local variant=$1 seed=$2 folder=$3 report=$4
  "$HATCHERY" eval "$folder" > "$folder.eval.json"
  "$PYTHON" - "$variant" "$seed" "$report" "$folder.eval.json" >> "$EXPORTS" <<'EOF'
import json, sys
variant, seed, report, evaluation = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]  # es.seed
report = json.loads(open(report).read())
report.pop("matrices", None)
print(json.dumps({"variant": variant, **report, **json.load(open(evaluation)), "es_seed": seed}))
EOF
}

for run in "${RUN_LIST[@]}"; do
  variant=${run%-*} seed=${run##*-}
  dir="$RUNS/$variant-seed$seed"
  rm -rf "$dir" "$dir".export*
  printf 'run_dir: %s\nes:\n  seed: %s\n' "$dir" "$seed" > "$dir.yaml"
  case $variant in
    weights) ;;
    lora*) printf '  space: lora\n  lora_rank: %s\n' "${variant#lora}" >> "$dir.yaml"
           [ -z "$LORA_SIGMA" ] || printf '  sigma: %s\n  lr: %s\n' "$LORA_SIGMA" "$LORA_LR" >> "$dir.yaml" ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  echo "== $variant seed $seed: $(date -u +%H:%M:%S)"
  "$HATCHERY" run "$dir.yaml" > "$dir.log" 2>&1
  cp "$dir/metrics.jsonl" "$OUT/lora-$variant-seed$seed-metrics.jsonl"
  if [ "$variant" = weights ]; then
    for rank in 8 16; do
      "$HATCHERY" export "$dir" "$dir.export-r$rank" --format peft-lora --rank "$rank" > /dev/null
      evaluate_export "weights-svd-r$rank" "$seed" "$dir.export-r$rank" "$dir.export-r$rank/hatchery-export.json"
    done
  else
    "$HATCHERY" export "$dir" "$dir.export" --format peft-lora > /dev/null
    evaluate_export "$variant" "$seed" "$dir.export" "$dir.export/hatchery-export.json"
  fi
done

variants=()
for variant in weights lora8 lora16; do
  runs=()
  for seed in 0 1; do [ -d "$RUNS/$variant-seed$seed" ] && runs+=("$RUNS/$variant-seed$seed"); done
  [ ${#runs[@]} -gt 0 ] && variants+=("$variant=$(IFS=,; echo "${runs[*]}")")
done
"$HATCHERY" ablation "${variants[@]}" --out "$OUT/lora.json" --plot "$OUT/lora.png"
echo "== done: $(date -u +%H:%M:%S)"
