#!/usr/bin/env bash
# Backtests flowcast on every development series and scores it with shared/eval/score.py.
# Usage: models/training/evaluate.sh [OUT_DIR] [extra backtest flags, e.g. --mc-passes 30]
# In-sample check of the shipped model only: it was trained on these series, so these
# scores leak. The reported, leak-free numbers come from evaluate-all.sh (leave-series-out).
# Needs: a release build (cargo build --release), python3 with numpy and pandas.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
data="$root/../shared/data/traffic"
out=${1:-$root/target/eval}
shift || true
mkdir -p "$out"
bin="$root/target/release/flowcast"
[ -x "$bin" ] || (cd "$root" && cargo build --release)
pairs=()
for csv in "$data"/*.csv; do
  name=$(basename "$csv" .csv)
  pairs+=("$csv:$out/$name.csv")
  echo "$csv $out/$name.csv"
done | xargs -P 2 -n 2 sh -c 'start=$(date +%s.%N); "$0" backtest --data "$1" --out "$2" '"$*"' > "$2.log" 2>&1 || { cat "$2.log"; exit 1; }; echo "$(basename "$1"): $(tail -1 "$2.log")"' "$bin"
for csv in "$data"/*.csv; do pairs+=("$csv:$out/$(basename "$csv" .csv).csv"); done
python3 "$root/../shared/eval/score.py" --pairs "${pairs[@]}" --json "$out/scores.json" | tee "$out/scores.txt"
