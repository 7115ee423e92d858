#!/usr/bin/env bash
# The README's data-path table: `convnets bench data` for every backend x preset on the given shard
# folders (e.g. the 500 original-size ImageNet images as shards, and the same re-encoded at 256 px).
#   scripts/bench_data.sh OUT_DIR SHARDS_DIR [SHARDS_DIR ...]
# Each run: --threads 2 (DALI threads; torch: 2 worker processes), batch 64, a $SECONDS_PER_RUN s
# window (default 10). On a shared machine run it several times (OUT_DIR/rep1, rep2, ...) and take
# medians: scripts/bench_data_median.py.
set -euo pipefail
out=$1; shift
mkdir -p "$out"
CONVNETS=${CONVNETS:-convnets}
window=${SECONDS_PER_RUN:-10}
for shards in "$@"; do
    kind=$(basename "$shards")
    run() {  # name, then bench data flags
        local name=$1; shift
        $CONVNETS bench data --shards "$shards" --threads 2 --batch 64 --seconds "$window" --json "$out/$kind-$name.json" "$@"
    }
    run feed --backend feed
    run decode --backend decode
    run decode-crop --backend decode-crop
    run dali-inception --backend dali --preset inception
    run dali-inception-uint8 --backend dali --preset inception --uint8
    run dali-inception-jitter --backend dali --preset inception --jitter 0.4
    run dali-inception-jitter-uint8 --backend dali --preset inception --jitter 0.4 --uint8
    run dali-inception-jitter-bc-uint8 --backend dali --preset inception --jitter 0.4 0.4 0 --uint8
    run dali-alexnet --backend dali --preset alexnet
    run dali-alexnet-uint8 --backend dali --preset alexnet --uint8
    run torch-inception --backend torch --preset inception
    run torch-inception-uint8 --backend torch --preset inception --uint8
    run torch-inception-jitter --backend torch --preset inception --jitter 0.4
    run torch-alexnet --backend torch --preset alexnet
done
