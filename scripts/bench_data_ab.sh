#!/usr/bin/env bash
# A/B of two source trees on the same rows of scripts/bench_data.py (e.g. a graph change against
# the commit before it), alternating which tree goes first in each rep so that a burst on a shared
# machine does not land on one side only. Compare images per CPU-second, each run against its own
# process's decode-only row.
#   scripts/bench_data_ab.sh OLD_SRC NEW_SRC OUT_DIR "ROW ..." SHARDS_DIR [SHARDS_DIR ...]
#   e.g. OLD_SRC from: mkdir /tmp/old && git archive HEAD~1 src | tar -x -C /tmp/old  (-> /tmp/old/src)
# Writes OUT_DIR/{old,new}/rep<i>/<kind>-<row>.json. REPS (5), SECONDS_PER_RUN (8), PYTHON.
set -euo pipefail
OLD=$1; NEW=$2; OUT=$3; ROWS=$4; shift 4
PYTHON=${PYTHON:-python}; SCRIPT="$(cd "$(dirname "$0")" && pwd)/bench_data.py"
for rep in $(seq 1 "${REPS:-5}"); do
  order="new old"; (( rep % 2 == 0 )) && order="old new"
  for tree in $order; do
    src=$NEW; [[ $tree == old ]] && src=$OLD
    # shellcheck disable=SC2086  # ROWS is a list of row names
    PYTHONPATH=$src "$PYTHON" "$SCRIPT" "$OUT/$tree/rep$rep" "$@" --reps 1 \
      --seconds "${SECONDS_PER_RUN:-8}" --rows $ROWS
  done
done
