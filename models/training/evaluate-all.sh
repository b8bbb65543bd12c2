#!/usr/bin/env bash
# The reproducible report of the development set (issues #4 and #15): both cross-validation
# protocols, the ablation, replica-hours at equal risk against the baselines, and the
# tables in models/README.md and the card, in one command (about an hour on 2 cores: six
# fold trainings take ~30 minutes, the backtests ~10, the baselines and the scaling
# what-ifs ~15).
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
cp "$root/target/release/flowcast" "$out/flowcast"
bin="$out/flowcast"
folds="$root/models/training/folds.sh"
eval_dir="$root/../shared/eval"

# name|label|backtest flags. The first is what ships (the defaults).
variants=(
  "combined|combined (shipped): LSTM + 7 experts, u3 band|"
  "no-seasonal|combined without the day- and week-ago experts|--experts lstm,persistence,holt,mean_1h,mean_3h,mean_1d"
  "no-lstm|combined without the LSTM|--experts persistence,holt,day_ago,week_ago,mean_1h,mean_3h,mean_1d"
  "combined-un3|combined, the study's u1+u2+u3 width|--band combined-un3"
  "lstm|LSTM alone, calibrated (the band before #15)|--band calibrated"
  "un3|LSTM alone, the study's UN3 (u1+u2+u3, z = 1.96)|--band un3"
  "un2|LSTM alone, the study's UN2 (u1+u2, z = 1.96)|--band un2"
)
python3 - "$out/variants.json" "${variants[@]}" <<'PY'
import json, sys
rows = [dict(zip(("name", "label", "flags"), v.split("|"))) for v in sys.argv[2:]]
json.dump(rows, open(sys.argv[1], "w"), indent=1)
PY

for protocol in source series; do
  for v in "${variants[@]}"; do
    IFS='|' read -r name _ flags <<< "$v"
    skip=${SKIP_TRAIN:-0}
    [ "$name" = combined ] || skip=1
    # shellcheck disable=SC2086
    PROTOCOL=$protocol SKIP_TRAIN=$skip FOLD_MODELS="$out/$protocol/models" FLOWCAST_BIN=$bin \
      "$folds" "$out/$protocol/$name" $flags
  done
done

# Baselines a, c, d on every scored series (cached: they need no training).
mkdir -p "$out/baselines"
for csv in "$root"/../shared/data/traffic/*.csv "$root"/../shared/data/extra/clarknet_http_1min.csv; do
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
