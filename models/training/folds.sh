#!/usr/bin/env bash
# Leave-series-out cross-validation of flowcast on the development series (2 folds).
#
# Usage: models/training/folds.sh [OUT_DIR] [extra backtest flags, e.g. --band un2]
#   OUT_DIR        default <repo>/target/folds
#   FLOWCAST_BIN   binary to backtest with (default <repo>/target/release/flowcast)
#   SKIP_TRAIN=1   reuse the fold models instead of training them again
#   FOLD_MODELS    directory holding fold0/ and fold1/ models (default OUT_DIR); with
#                  SKIP_TRAIN=1 this lets an ablation write into a fresh OUT_DIR, e.g.
#                  SKIP_TRAIN=1 FOLD_MODELS=target/folds models/training/folds.sh target/folds-un2 --band un2
#   TRAIN_FLAGS    extra train.py flags for the fold models, e.g. "--seed 2"
#   MC_PASSES      Monte-Carlo passes per forecast (default 30). The backtest CLI rejects a
#                  repeated --mc-passes, so a --mc-passes in the extra flags replaces this one.
#
# The sorted series stems are split by alternating order: fold 0 = indices 0,2,4,...,
# fold 1 = indices 1,3,5,... The model of fold k is trained with fold k's series excluded
# (train.py --exclude), then every series of fold k is backtested with it. All 14 held-out
# forecast files are scored together with shared/eval/score.py into OUT_DIR/scores.{txt,json}.
# Trainings run one after another (one core each); backtests run at most 2 at a time.
# Needs: python3 with the packages of models/training/requirements.txt, numpy and pandas.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
data="$root/../shared/data/traffic"
out=${1:-$root/target/folds}
shift || true
extra=("$@")
mkdir -p "$out"
out=$(cd "$out" && pwd)
models=${FOLD_MODELS:-$out}
bin=${FLOWCAST_BIN:-$root/target/release/flowcast}
if [ ! -x "$bin" ]; then
  if [ -n "${FLOWCAST_BIN:-}" ]; then echo "FLOWCAST_BIN=$bin is not executable" >&2; exit 1; fi
  (cd "$root" && cargo build --release)
fi
mc=(--mc-passes "${MC_PASSES:-30}")
for a in "${extra[@]}"; do
  case $a in --mc-passes|--mc-passes=*) mc=() ;; esac
done

stems=()
while IFS= read -r f; do stems+=("$(basename "$f" .csv)"); done \
  < <(find "$data" -maxdepth 1 -name '*.csv' | LC_ALL=C sort)
[ "${#stems[@]}" -ge 2 ] || { echo "fewer than 2 series in $data" >&2; exit 1; }
fold_stems() {  # fold_stems K: the stems of fold K
  local i
  for i in "${!stems[@]}"; do [ $((i % 2)) -eq "$1" ] && echo "${stems[$i]}"; done
  return 0
}

# --- training (sequential) ------------------------------------------------------------------
for k in 0 1; do
  mapfile -t held < <(fold_stems $k)
  dir="$models/fold$k"
  if [ "${SKIP_TRAIN:-0}" = 1 ]; then
    for f in flowcast.onnx flowcast.card.json; do
      [ -f "$dir/$f" ] || { echo "SKIP_TRAIN=1 but $dir/$f is missing" >&2; exit 1; }
    done
    echo "fold $k: reusing $dir"
  else
    mkdir -p "$dir"
    echo "fold $k: training without ${held[*]}"
    start=$(date +%s)
    python3 "$root/models/training/train.py" --data-dir "$data" --out-dir "$dir" --exclude "${held[@]}" ${TRAIN_FLAGS:-} \
      > "$dir/train.log" 2>&1 || { tail -30 "$dir/train.log"; exit 1; }
    echo "fold $k: trained in $(( $(date +%s) - start ))s; $(tail -1 "$dir/train.log")"
  fi
  # the card must say that exactly this fold was left out (otherwise the scores leak)
  python3 - "$dir/flowcast.card.json" "${held[@]}" <<'EOF'
import json, sys
card = json.load(open(sys.argv[1]))
t = card["training"]
if sorted(t["excluded"]) != sorted(sys.argv[2:]):
    sys.exit(f"{sys.argv[1]}: excluded {t['excluded']}, expected {sys.argv[2:]}")
print(f"  card: best epoch {t['best_epoch']}/{t['epochs']}, train loss {t['train_loss']:.4f}, "
      f"val loss {t['val_loss']:.4f} (pooled {t['val_loss_pooled']:.4f}), "
      f"k_upper {[round(x, 3) for x in card['calibration_prior']['k_upper']]}, "
      f"k_lower {[round(x, 3) for x in card['calibration_prior']['k_lower']]}")
EOF
done

# --- backtests (at most 2 in parallel) ------------------------------------------------------
run_one() {  # run_one K STEM
  local k=$1 stem=$2 start rc=0
  local dest="$out/fold$k/$stem.csv" dir="$models/fold$k"
  start=$(date +%s.%N)
  "$bin" backtest --data "$data/$stem.csv" --out "$dest" --model "$dir/flowcast.onnx" \
    --model-card "$dir/flowcast.card.json" "${mc[@]}" "${extra[@]}" > "$dest.log" 2>&1 || rc=$?
  if [ $rc -ne 0 ]; then
    echo "$stem: backtest failed (exit $rc):"; cat "$dest.log"; touch "$dest.failed"; return 0
  fi
  printf '%s (fold %s): %.0fs; %s\n' "$stem" "$k" "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" "$(tail -1 "$dest.log")"
}
echo "backtest flags: ${mc[*]} ${extra[*]}"
pairs=()
for k in 0 1; do
  mkdir -p "$out/fold$k"
  rm -f "$out/fold$k"/*.failed
  for stem in $(fold_stems $k); do
    while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || true; done
    run_one $k "$stem" &
    pairs+=("$data/$stem.csv:$out/fold$k/$stem.csv")
  done
done
wait
if compgen -G "$out/fold[01]/*.failed" > /dev/null; then
  echo "backtests failed: $(ls "$out"/fold[01]/*.failed)" >&2; exit 1
fi

# --- scoring --------------------------------------------------------------------------------
python3 "$root/../shared/eval/score.py" --pairs "${pairs[@]}" --json "$out/scores.json" | tee "$out/scores.txt"
