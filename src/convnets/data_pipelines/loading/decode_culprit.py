"""After DALI failed on a batch: which sample it was, asked of DALI's own decoder in a separate process.

PIL is asked first (in process, cheap): it names truncated and non-image samples. A sample PIL opens
but DALI refuses (a GIF, say: DALI decodes JPEG, PNG, TIFF, BMP, PNM, JPEG 2000 and WebP) is then
decoded again with DALI's CPU decoder, one image at a time (shard_verify.DeepDecoder.first_refused).
That runs in a child process: building a DALI pipeline in the process whose pipeline just failed
segfaulted DALI 2.4.0 (3 of 4 runs under load here), which would take the rank's own error with it.
Run as `python -m convnets.data_pipelines.loading.decode_culprit` it reads [shard, offset, size, key] rows as
JSON on stdin and prints the first refused image's one-line error (exit 3), or nothing (exit 0).
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from convnets.data_pipelines.shards.format import SampleIndex, ShardError
from convnets.data_pipelines.shards.reader import describe

log = logging.getLogger(__name__)

REFUSED_EXIT = 3
TIMEOUT_S = 300.0  # 8 batches of ImageNet photos decode in seconds; a hung child must not hang the rank


def pil_culprit(index: SampleIndex, samples: list[int], read: Callable[[int], bytes]) -> str | None:
    """The first sample PIL cannot decode, named; read(i) -> its image bytes."""
    from PIL import Image

    for i in samples:
        try:
            with Image.open(io.BytesIO(read(i))) as img:
                img.load()
        except Exception as exc:  # any decoder complaint names the culprit
            return f"{describe(index, i)}: cannot decode image ({exc})"
    return None


def dali_culprit(index: SampleIndex, samples: list[int]) -> str | None:
    """The first sample DALI's CPU decoder refuses, named, decoded in a child process; None if all decode
    (or the child could not tell: it crashed or timed out)."""
    rows = [
        [str(index.shard_paths[int(index.shard_id[i])]), int(index.img_offset[i]), int(index.img_size[i]), index.key(i)]
        for i in samples
    ]
    try:
        child = subprocess.run(
            [sys.executable, "-m", __name__], input=json.dumps(rows), capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return None
    lines = child.stdout.strip().splitlines()
    if child.returncode == REFUSED_EXIT and lines:
        return lines[-1]
    if child.returncode != 0:  # it could not tell: say why, the run's own error follows
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("the DALI decode check of the last %d samples exited %d: %s", len(samples), child.returncode, last)
    return None


def _read_rows(rows: list[list]):
    for shard, offset, size, key in rows:
        with open(shard, "rb") as f:
            yield Path(shard), key, os.pread(f.fileno(), size, offset)


if __name__ == "__main__":
    try:
        from convnets.data_pipelines.shards.verify import DeepDecoder

        DeepDecoder(num_threads=1).first_refused(_read_rows(json.loads(sys.stdin.read())))
    except ShardError as exc:
        print(exc, flush=True)
        sys.exit(REFUSED_EXIT)
