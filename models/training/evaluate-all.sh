#!/usr/bin/env bash
# The reproducible report of the development set (issues #4 and #15): both cross-validation
# protocols, the ablation, replica-hours at equal risk against the baselines, and the
# tables in models/README.md and the card, in one command. Each fold training takes 6-9
# minutes on one core (train.py, 25 epochs at most): 7 for the shipped variant's two
# protocols and 5 per model variant below; the backtests and baselines take about 30 more.
#
# Usage: models/training/evaluate-all.sh [OUT_ROOT]      (default <repo>/target/eval-all)
#   SKIP_TRAIN=1  reuse OUT_ROOT/<protocol>/models instead of training them again
# Needs: cargo (builds the release binary), python3 with models/training/requirements.txt,
# numpy and pandas (for shared/eval/score.py, scaling.py and baselines.py).
#
# Layout of OUT_ROOT (read by models/training/report.py):
#   variants.json                        the variants below, the shipped one first
#   <protocol>/models/<fold>/            fold models (protocol: source, series)
#   <protocol>/<variant>/<fold>/*.csv    held-out forecasts, pairs.txt, scores.{txt,json}
#   baselines/<stem>__<baseline>.csv     baselines a, c, d (shared/eval/baselines.py)
#   tick-times.json, scores-cache.json
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/target/eval-all}
mkdir -p "$out"
out=$(cd "$out" && pwd)
(cd "$root" && cargo build --release)
# A copy, so that a rebuild while this runs cannot change the binary under the backtests.
cp "${CARGO_TARGET_DIR:-$root/target}/release/flowcast" "$out/flowcast"
bin="$out/flowcast"
folds="$root/models/training/folds.sh"
eval_dir="$root/../shared/eval"

# name|label|backtest flags|train.py flags. The first is what ships (the defaults). Variants
# with train.py flags have fold models of their own, shared by every variant with the same
# flags (OUT_ROOT/<protocol>/models-<flags as a slug>), trained for the protocols in
# MODEL_VARIANT_PROTOCOLS (default: source only; five more models per set of flags, about
# 15-35 minutes).
variants=(
  "combined|combined (shipped): network + 7 experts, u3 band||"
  "no-lstm|combined without the network|--experts persistence,holt,day_ago,week_ago,mean_1h,mean_3h,mean_1d|"
  "no-day-week|combined without the day- and week-ago experts|--experts lstm,persistence,holt,mean_1h,mean_3h,mean_1d|"
  "pool5|combined, a 5-expert pool: network, persistence, Holt, day and week ago|--experts lstm,persistence,holt,day_ago,week_ago|"
  "combined-un3|combined, the study's u1+u2+u3 width (u1 in the band)|--band combined-un3|"
  "lstm|network alone, quantile heads + u1, calibrated|--band calibrated|"
  "lstm-gaussian|network alone, Gaussian head (u1+u2+u3), calibrated|--band calibrated-gaussian|"
  "un3|network alone, the study's UN3 (u1+u2+u3, z = 1.96)|--band un3|"
  "un2|network alone, the study's UN2 (u1+u2, z = 1.96)|--band un2|"
  "no-seasonal-inputs|combined, network trained without the seasonal inputs||--no-seasonal"
  "no-seasonal-inputs-lstm|network alone (quantile band), trained without the seasonal inputs|--band calibrated|--no-seasonal"
  "no-synthetic|combined, network trained without the synthetic series||--synthetic 0"
  "no-synthetic-lstm|network alone (quantile band), trained without the synthetic series|--band calibrated|--synthetic 0"
  "fullfit|combined, fold networks trained 25 epochs (best kept) as the shipped one||--max-epochs 25 --patience 25"
  "fullfit-lstm|network alone (quantile band), fold networks trained 25 epochs|--band calibrated|--max-epochs 25 --patience 25"
)
python3 - "$out/variants.json" "${variants[@]}" <<'PY'
import json, sys
rows = [dict(zip(("name", "label", "flags", "train_flags"), v.split("|"))) for v in sys.argv[2:]]
json.dump(rows, open(sys.argv[1], "w"), indent=1)
PY

for protocol in source series; do
  for v in "${variants[@]}"; do
    IFS='|' read -r name _ flags train_flags <<< "$v"
    skip=${SKIP_TRAIN:-0}
    models="$out/$protocol/models"
    if [ -n "$train_flags" ]; then
      case " ${MODEL_VARIANT_PROTOCOLS:-source} " in *" $protocol "*) ;; *) continue ;; esac
      models="$out/$protocol/models-$(echo "$train_flags" | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')"
      # A second variant with the same train.py flags reuses the first one's models.
      [ -n "$(compgen -G "$models/*/flowcast.card.json")" ] && [ "$protocol/$train_flags" = "${trained:-}" ] && skip=1
      trained="$protocol/$train_flags"
    elif [ "$name" != combined ]; then
      skip=1
    fi
    # shellcheck disable=SC2086
    PROTOCOL=$protocol SKIP_TRAIN=$skip FOLD_MODELS="$models" FLOWCAST_BIN=$bin TRAIN_FLAGS="$train_flags" \
      "$folds" "$out/$protocol/$name" $flags
  done
done

# Baselines a, c, d on every scored series (cached: they need no training).
mkdir -p "$out/baselines"
for csv in "$root"/../shared/data/traffic/*.csv "$root"/../shared/data/extra/*.csv; do
  stem=$(basename "$csv" .csv)
  [ -f "$out/baselines/${stem}__holt_prom.csv" ] && continue
  echo "baselines a, c, d: $stem"
  python3 "$eval_dir/baselines.py" "$csv" --baselines a,c,d --out "$out/baselines" > /dev/null
done

python3 - "$bin" "$out/tick-times.json" <<'PY'
import json, subprocess, sys
bin, out = sys.argv[1], sys.argv[2]
r = json.loads(subprocess.check_output([bin, "bench", "--mc-passes", "30", "--ticks", "50", "--json"]))
json.dump({"combined": r["tick_seconds_median"]}, open(out, "w"))
PY
python3 "$root/models/training/report.py" "$out"
