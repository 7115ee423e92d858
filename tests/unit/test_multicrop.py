"""Multi-crop averaging, dropout sampling and calibration arithmetic against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convnets.platform.training.calibration import Calibration
from convnets.platform.training.multicrop import average_crops, dropout_sampling, mc_dropout_probs


def test_softmax_and_logit_averaging_are_different_rules():
    logits = torch.tensor([[[4.0, 0.0], [0.0, 1.0]]])  # one image, two crops
    soft = average_crops(logits, "softmax")
    geo = average_crops(logits, "logits")
    want_soft = (torch.tensor([4.0, 0.0]).softmax(0) + torch.tensor([0.0, 1.0]).softmax(0)) / 2
    assert torch.allclose(soft[0], want_soft) and torch.allclose(geo[0], torch.tensor([2.0, 0.5]).softmax(0))
    assert not torch.allclose(soft, geo, atol=1e-2)
    with pytest.raises(ValueError, match="unknown crop averaging 'mean'"):
        average_crops(logits, "mean")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5)
    ).eval()


def test_mc_dropout_is_the_renormalised_geometric_mean_of_sampled_masks():
    net, images = _net(), torch.randn(3, 2, 3, 2, 2)  # 3 images x 2 crops
    torch.manual_seed(7)
    got = mc_dropout_probs(net, net, images, samples=4)
    torch.manual_seed(7)  # the same masks, drawn by hand: dropout on, BatchNorm on running statistics
    net[4].train()
    logp = torch.stack([net(images.flatten(0, 1)).softmax(-1).view(3, 2, -1).mean(1).log() for _ in range(4)])
    net[4].eval()
    geo = logp.mean(0).exp()
    assert torch.allclose(got, geo / geo.sum(-1, keepdim=True), atol=1e-6)
    assert not net[2].training and not net[4].training  # modes restored, BatchNorm never in training mode
    with torch.no_grad():
        plain = net(images.flatten(0, 1)).softmax(-1).view(3, 2, -1).mean(1)
    assert not torch.allclose(got, plain, atol=1e-3)  # the masks matter


def test_dropout_sampling_leaves_batchnorm_in_eval():
    net = _net()
    with dropout_sampling(net):
        assert net[4].training and not net[2].training
    assert not net[4].training


def test_calibration_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.dirichlet(np.ones(4), size=200)).float()
    labels = torch.from_numpy(rng.integers(0, 4, 200))
    valid = torch.arange(200) < 190  # the last 10 are padding
    metric = Calibration()
    metric.update(probs[:100], labels[:100], valid[:100])
    metric.update(probs[100:], labels[100:], valid[100:])
    got = metric.compute()
    p, y = probs[:190].double().numpy(), labels[:190].numpy()
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    for lo, hi in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    assert got["n"] == 190 and got["ece"] == pytest.approx(ece, abs=1e-6)
    assert got["nll"] == pytest.approx(-np.log(p[np.arange(190), y]).mean(), rel=1e-5)
    assert got["top1"] == pytest.approx((pred == y).mean())


@pytest.mark.dali
def test_ten_crops_of_a_hand_built_image_equal_numpy_slices(tmp_path):
    """The DALI eval graph's 10 crops (centre, 4 corners, mirrors) of a lossless 73 x 98 image whose
    shorter side is already the resize, so the crops are plain slices: anchors round half up."""
    from PIL import Image

    from convnets.data_pipelines.loading.augment import InputSpec
    from convnets.data_pipelines.loading.datamodule import ShardDataModule
    from convnets.data_pipelines.shards.sources import ImageFolderSource
    from convnets.data_pipelines.shards.writer import write_shards

    rng = np.random.default_rng(0)
    pixels = {}
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            pixels[split, name] = rng.integers(0, 256, (73, 98, 3), dtype=np.uint8)
            Image.fromarray(pixels[split, name]).save(tmp_path / "tree" / split / name / "x.png")
    write_shards(ImageFolderSource(root=tmp_path / "tree"), tmp_path / "shards", shard_size=10, seed=0)
    spec = InputSpec(channels=3, image_size=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), crop_fraction=64 / 73)
    dm = ShardDataModule(
        data_dir=str(tmp_path / "shards"), batch_size=2, num_threads=1, input_spec=spec, test_split="val", test_crops=10
    )
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["images"].shape == (2, 10, 3, 64, 64)
    for row, label in zip(batch["images"], batch["labels"].tolist()):
        x = (pixels["val", "ab"[label]] / 255.0 - np.array(spec.mean)) / np.array(spec.std)
        # (top, left) of centre, top-left, top-right, bottom-left, bottom-right: 9 and 34 spare pixels
        anchors = [(5, 17), (0, 0), (0, 34), (9, 0), (9, 34)]
        want = [x[t : t + 64, lft : lft + 64] for t, lft in anchors]
        want += [w[:, ::-1] for w in want]  # crops 5..9: the same windows mirrored
        want = torch.from_numpy(np.stack(want).transpose(0, 3, 1, 2).copy()).float()
        assert torch.allclose(row, want, atol=1e-5)
        assert not torch.allclose(row[0], torch.from_numpy(x[4:68, 17:81].transpose(2, 0, 1).copy()).float(), atol=1e-3)
    five = ShardDataModule(
        data_dir=str(tmp_path / "shards"), batch_size=2, num_threads=1, input_spec=spec, test_split="val", test_crops=5
    )
    five.setup("test")
    assert torch.equal(next(iter(five.test_dataloader()))["images"], batch["images"][:, :5])
