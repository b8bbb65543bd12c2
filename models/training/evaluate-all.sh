#!/usr/bin/env bash
# The reproducible report of issue #4: leave-series-out folds, the ablation, and the tables
# in models/README.md and the card, in one command (about 20 minutes on 2 cores: the two
# fold trainings take ~7 of them, the 70 backtests ~12).
#
# Usage: models/training/evaluate-all.sh [OUT_ROOT]      (default <repo>/target/eval-all)
#   SKIP_TRAIN=1  reuse OUT_ROOT/folds' models instead of training them again
# Needs: cargo (builds the release binary), python3 with models/training/requirements.txt,
# numpy and pandas (for shared/eval/score.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/target/eval-all}
mkdir -p "$out"
(cd "$root" && cargo build --release)
bin="$root/target/release/flowcast"
folds="$root/models/training/folds.sh"
FLOWCAST_BIN=$bin "$folds" "$out/folds"
for run in "un2 --band un2" "un3 --band un3" "p10 --mc-passes 10" "p100 --mc-passes 100"; do
  set -- $run
  name=$1; shift
  SKIP_TRAIN=1 FOLD_MODELS="$out/folds" FLOWCAST_BIN=$bin "$folds" "$out/$name" "$@"
done
ticks="$out/tick-times.json"
python3 - "$bin" "$ticks" <<'PY'
import json, subprocess, sys
bin, out = sys.argv[1], sys.argv[2]
times = {}
for p in (10, 30, 100):
    r = json.loads(subprocess.check_output([bin, "bench", "--mc-passes", str(p), "--ticks", "50", "--json"]))
    times[str(p)] = r["tick_seconds_median"]
json.dump(times, open(out, "w"))
PY
python3 "$root/models/training/report.py" --main "$out/folds" --tick-times "$ticks" \
  --ablation "calibrated (shipped), 30=$out/folds" \
  --ablation "UN2: u1+u2 at z=1.96, 30=$out/un2" \
  --ablation "UN3: u1+u2+u3 at z=1.96, 30=$out/un3" \
  --ablation "calibrated, 10=$out/p10" \
  --ablation "calibrated, 100=$out/p100"
