#!/usr/bin/env bash
# The README's data-path table: `convnets bench data` for every backend x preset on the given shard
# folders (e.g. the 500 original-size ImageNet images as shards, and the same re-encoded at 256 px).
#   scripts/bench_data.sh OUT_DIR SHARDS_DIR [SHARDS_DIR ...]
# Each run: --threads 2 (DALI threads; torch: 2 worker processes), batch 64, a 10 s window.
set -euo pipefail
out=$1; shift
mkdir -p "$out"
CONVNETS=${CONVNETS:-convnets}
for shards in "$@"; do
    kind=$(basename "$shards")
    run() {  # name, then bench data flags
        local name=$1; shift
        $CONVNETS bench data --shards "$shards" --threads 2 --batch 64 --seconds 10 --json "$out/$kind-$name.json" "$@"
    }
    run feed --backend feed
    run decode --backend decode
    run dali-inception --backend dali --preset inception
    run dali-inception-jitter --backend dali --preset inception --jitter 0.4
    run dali-alexnet --backend dali --preset alexnet
    run torch-inception --backend torch --preset inception
    run torch-inception-jitter --backend torch --preset inception --jitter 0.4
    run torch-alexnet --backend torch --preset alexnet
done
