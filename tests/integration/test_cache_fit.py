"""Training from shards served over HTTP, through the node-local shard cache, changes nothing a user can
measure: a fit that reads a real nginx's copy of the shards through a small cache (shards evicted and
fetched again), is killed mid-epoch and resumed with the cache emptied (a new node) trains every step
on the same samples and ends with the same weights, bit for bit, as an uninterrupted fit on the local
folder."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.integration.test_resume_exact import PROBE, _fit, _steps

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.dali]

ONE_EPOCH = ("--trainer.max_epochs", "1")  # 12 steps of 128 digits; checkpoints at steps 4, 8, 12


def test_fit_over_http_through_a_cold_cache_killed_and_resumed_equals_the_local_fit(
    digits_shards, tmp_path, nginx, nginx_root
):
    served = nginx_root / "digits-cache-fit"
    shutil.copytree(digits_shards, served)
    url = f"{nginx.url}/{served.name}"
    cache = tmp_path / "node-cache"
    # 1.5 MB: two and a half of the five 625 kB train shards, so the cache evicts and fetches again.
    through_cache = ("--data.cache_dir", cache, "--data.cache_limit_gb", "0.0015", *ONE_EPOCH)
    whole, _ = _fit(tmp_path, digits_shards, "whole", *ONE_EPOCH)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed, ckpts = _fit(
        tmp_path,
        url,
        "cut",
        f"--trainer.callbacks+={PROBE}.KillAtStep",
        "--trainer.callbacks.step=6",
        f"--trainer.callbacks.after={tmp_path / 'cut' / 'mid' / 'step=4.ckpt'}",
        *through_cache,
    )
    assert killed.returncode != 0 and (ckpts / "step=4.ckpt").exists() and not (ckpts / "step=8.ckpt").exists()
    cached = sorted(p.name for p in cache.rglob("train/shard-*.tar"))
    assert cached and len(cached) < 5  # the limit held: never the whole split at once
    shutil.rmtree(cache)  # resumed on a node with a cold cache
    resumed, _ = _fit(tmp_path, url, "cut", "--ckpt_path", ckpts / "step=4.ckpt", *through_cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "shard cache of train" in resumed.stderr and list(cache.rglob("train/shard-*.tar"))

    a = torch.load(tmp_path / "whole" / "mid" / "step=12.ckpt", weights_only=False)
    b = torch.load(ckpts / "step=12.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 12
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert _steps(tmp_path / "whole.jsonl") == _steps(tmp_path / "cut.jsonl")  # same samples at every step
