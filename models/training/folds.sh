#!/usr/bin/env bash
# Cross-validation of flowcast: every series is backtested with a model that never saw it.
#
# Usage: models/training/folds.sh [OUT_DIR] [extra backtest flags, e.g. --band un2]
#   OUT_DIR        default <repo>/target/folds
#   PROTOCOL       series (default) or source:
#                  series  leave-series-out, 2 folds: the sorted series stems alternate,
#                          fold 0 = indices 0,2,4,..., fold 1 = 1,3,5,...
#                  source  leave-source-out, 5 folds: nab (the ten NAB tweet-count series),
#                          isp (the two ISP link series), twitter (the two Twitter service
#                          series), clarknet (../shared/data/extra/clarknet_http_1min.csv, a
#                          web access log) and microsoft (the five ms_mongodb_* request-rate
#                          series in ../shared/data/extra/). Each fold's model is trained on
#                          every other source's series and the synthetic ones (train.py).
#                          The hidden series come from a domain no training series shares;
#                          this is the nearest proxy for that.
#                          (series folds train on the other fold, the extra series and the
#                          synthetic ones.)
#   FLOWCAST_BIN   binary to backtest with (default <repo>/target/release/flowcast)
#   SKIP_TRAIN=1   reuse the fold models instead of training them again
#   FOLD_MODELS    directory holding the fold models (default OUT_DIR); with SKIP_TRAIN=1
#                  an ablation can write into a fresh OUT_DIR, e.g.
#                  SKIP_TRAIN=1 FOLD_MODELS=target/folds models/training/folds.sh target/folds-un2 --band un2
#   TRAIN_FLAGS    extra train.py flags for the fold models, e.g. "--seed 2"
#   MC_PASSES      Monte-Carlo passes per forecast (default 30). The backtest CLI rejects a
#                  repeated --mc-passes, so a --mc-passes in the extra flags replaces this one.
#
# The model of a fold is trained with the fold's series excluded (train.py --exclude), then
# every series of the fold is backtested with it. All held-out forecast files are scored
# together with shared/eval/score.py into OUT_DIR/scores.{txt,json} (OUT_DIR/pairs.txt lists
# data:forecast pairs for models/training/report.py). Trainings run one after another (one
# core each); backtests run at most 2 at a time.
# Needs: python3 with the packages of models/training/requirements.txt, numpy and pandas.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
data="$root/../shared/data/traffic"
extra_data="$root/../shared/data/extra"
out=${1:-$root/target/folds}
shift || true
extra=("$@")
mkdir -p "$out"
out=$(cd "$out" && pwd)
models=${FOLD_MODELS:-$out}
protocol=${PROTOCOL:-series}
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

case $protocol in
  series) folds=(fold0 fold1) ;;
  source) folds=(nab isp twitter clarknet microsoft) ;;
  *) echo "PROTOCOL must be series or source, not $protocol" >&2; exit 2 ;;
esac

held_out() {  # held_out FOLD: the stems the fold's model must not see (and is scored on)
  local i
  case $1 in
    fold0|fold1) for i in "${!stems[@]}"; do [ $((i % 2)) -eq "${1#fold}" ] && echo "${stems[$i]}"; done ;;
    nab|isp|twitter)
      for i in "${stems[@]}"; do
        case $1:$i in nab:nab_*|isp:isp_*|twitter:twitter_*) echo "$i" ;; esac
      done ;;
    clarknet) echo clarknet_http_1min ;;
    microsoft) for i in "$extra_data"/ms_*.csv; do basename "$i" .csv; done ;;
  esac
  return 0
}
scored() {  # scored FOLD: data files the fold's model is backtested on
  local s
  for s in $(held_out "$1"); do
    if [ -f "$data/$s.csv" ]; then echo "$data/$s.csv"; else echo "$extra_data/$s.csv"; fi
  done
}

# --- training (sequential) ------------------------------------------------------------------
for k in "${folds[@]}"; do
  mapfile -t held < <(held_out "$k")
  dir="$models/$k"
  if [ "${SKIP_TRAIN:-0}" = 1 ]; then
    for f in flowcast.onnx flowcast.card.json; do
      [ -f "$dir/$f" ] || { echo "SKIP_TRAIN=1 but $dir/$f is missing" >&2; exit 1; }
    done
    echo "fold $k: reusing $dir"
  else
    mkdir -p "$dir"
    echo "fold $k: training without ${held[*]:-(none: scored on ClarkNet)}"
    start=$(date +%s)
    python3 "$root/models/training/train.py" --data-dir "$data" --extra-dir "$extra_data" --out-dir "$dir" \
      --exclude "${held[@]}" ${TRAIN_FLAGS:-} \
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
used = [s for s in t.get("data", []) if s.removesuffix(".csv") in sys.argv[2:]]
if used:
    sys.exit(f"{sys.argv[1]}: trained on {used}, which the fold scores")
print(f"  card: best epoch {t['best_epoch']}/{t['epochs']}, train loss {t['train_loss']:.4f}, "
      f"val loss {t['val_loss']:.4f} (pooled {t['val_loss_pooled']:.4f}), "
      f"k_upper {[round(x, 3) for x in card['calibration_prior']['k_upper']]}, "
      f"k_lower {[round(x, 3) for x in card['calibration_prior']['k_lower']]}")
EOF
done

# --- backtests (at most 2 in parallel) ------------------------------------------------------
run_one() {  # run_one FOLD DATA
  local k=$1 csv=$2 start rc=0
  local stem; stem=$(basename "$csv" .csv)
  local dest="$out/$k/$stem.csv" dir="$models/$k"
  start=$(date +%s.%N)
  "$bin" backtest --data "$csv" --out "$dest" --model "$dir/flowcast.onnx" \
    --model-card "$dir/flowcast.card.json" "${mc[@]}" "${extra[@]}" > "$dest.log" 2>&1 || rc=$?
  if [ $rc -ne 0 ]; then
    echo "$stem: backtest failed (exit $rc):"; cat "$dest.log"; touch "$dest.failed"; return 0
  fi
  printf '%s (fold %s): %.0fs; %s\n' "$stem" "$k" "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" "$(tail -1 "$dest.log")"
}
echo "protocol $protocol; backtest flags: ${mc[*]} ${extra[*]}"
pairs=()
for k in "${folds[@]}"; do
  mkdir -p "$out/$k"
  rm -f "$out/$k"/*.failed
  for csv in $(scored "$k"); do
    while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || true; done
    run_one "$k" "$csv" &
    pairs+=("$csv:$out/$k/$(basename "$csv")")
  done
done
wait
if compgen -G "$out/*/*.failed" > /dev/null; then
  echo "backtests failed: $(ls "$out"/*/*.failed)" >&2; exit 1
fi
printf '%s\n' "${pairs[@]}" > "$out/pairs.txt"

# --- scoring --------------------------------------------------------------------------------
# The 14 development series are scored together; ClarkNet (source protocol) stands apart.
dev_pairs=()
for p in "${pairs[@]}"; do case $p in "$data"/*) dev_pairs+=("$p") ;; esac; done
python3 "$root/../shared/eval/score.py" --pairs "${dev_pairs[@]}" --json "$out/scores.json" | tee "$out/scores.txt"
