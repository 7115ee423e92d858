#!/usr/bin/env bash
# The data-path table of docs/benchmarks.md (see scripts/bench_data.py): every backend x preset on the given
# shard folders (e.g. the 500 original-size ImageNet images as shards, and the same re-encoded at
# 256 px), REPS times in turn, medians in OUT_DIR/<kind>-<row>.json.
#   scripts/bench_data.sh OUT_DIR SHARDS_DIR [SHARDS_DIR ...]
set -euo pipefail
PYTHON=${PYTHON:-python}
exec "$PYTHON" "$(dirname "$0")/bench_data.py" "$@" --reps "${REPS:-3}" --seconds "${SECONDS_PER_RUN:-10}"
