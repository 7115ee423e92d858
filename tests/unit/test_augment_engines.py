"""The two engines (DALI graph, torch loader) built from one AugmentSpec deliver the same data.

Eval crops agree pixel for pixel (within 2 levels) on real JPEGs; training randomness agrees in
distribution (crop windows read back from a coordinate image, jitter and PCA lighting read back
from flat images), with fixed seeds, so each test is deterministic; and the pixels that reach the
model belong to the label they travel with (real MNIST digits, looked up by content).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp

from convnets.data_pipelines.loading.augment import PCA_EIGVAL, PCA_EIGVEC, InputSpec
from convnets.data_pipelines.loading.datamodule import ShardDataModule
from convnets.data_pipelines.shards.sources import Sample, encode_gray_png, load_mnist_set
from tests.conftest import shared_data

pytestmark = pytest.mark.dali

RGB = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_fraction=0.875)
SMALL_RGB = InputSpec(channels=3, image_size=64, **RGB)
TINY_RGB = InputSpec(channels=3, image_size=32, **RGB)
LENET = InputSpec(channels=1, image_size=32, mean=(0.1307,), std=(0.3081,), crop_fraction=28 / 32)
ENGINES = ("dali", "torch")


@dataclass(kw_only=True)
class ArraySource:
    """In-memory images (HWC or HW uint8) as a shard source; the same samples in train and val."""

    images: list[np.ndarray]
    labels: list[int]
    flip_ok: bool = True
    classes: list[str] = field(default_factory=lambda: [str(d) for d in range(10)])
    description: str = "test arrays"

    def splits(self) -> dict[str, list[Sample]]:
        samples = [
            Sample(key=f"array[{i}]", label=int(y), read=partial(_png, img))
            for i, (img, y) in enumerate(zip(self.images, self.labels))
        ]
        return {"train": samples, "val": samples}


def _png(pixels: np.ndarray) -> tuple[bytes, str]:
    if pixels.ndim == 2:
        return encode_gray_png(pixels), "png"
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG")
    return buf.getvalue(), "png"


def _shards(source: ArraySource, out: Path) -> Path:
    from convnets.data_pipelines.shards.writer import write_shards

    write_shards(source, out, shard_size=64, seed=0)
    return out


def _dm(data: Path, spec: InputSpec, backend: str, stage: str = "fit", **kw) -> ShardDataModule:
    dm = ShardDataModule(
        data_dir=str(data),
        batch_size=kw.pop("batch_size", 50),
        num_threads=kw.pop("num_threads", 1) if backend == "dali" else 0,
        input_spec=spec,
        backend=backend,
        **kw,
    )
    dm.setup(stage)
    return dm


def _train_draws(dm: ShardDataModule, epochs: int) -> torch.Tensor:
    """Every training image of `epochs` epochs, un-normalized to 0..255 float (N, C, H, W)."""
    loader, out = dm.train_dataloader(), []
    for epoch in range(epochs):
        loader.epoch_fn = lambda e=epoch: e
        for batch in loader:
            out.append(dm.on_after_batch_transfer(batch, 0)["images"][batch["valid"]])
    images = torch.cat(out)
    spec = dm.input_spec
    return images * torch.tensor(spec.std).view(-1, 1, 1) * 255 + torch.tensor(spec.mean).view(-1, 1, 1) * 255


# -- deterministic agreement ------------------------------------------------------------------------
def test_color_twist_matrix_is_dalis():
    """The jitter matrix both engines use (the torch loader's, and compiled into the CPU DALI graph's
    kernel) reproduces DALI's color_twist on random pixels."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from convnets.data_pipelines.loading.augment import color_twist_matrix

    pixels = np.random.default_rng(0).integers(0, 256, (1, 500, 3), dtype=np.uint8)
    factors = dict(brightness=0.8, contrast=1.3, saturation=1.4, hue=-50.0)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def twist():
        x = fn.external_source(source=lambda: [pixels], batch=True, layout="HWC")
        return fn.color_twist(x, dtype=types.FLOAT, **factors)

    pipe = twist()
    pipe.build()
    dali = pipe.run()[0].as_array()[0, 0]
    affine = torch.from_numpy(color_twist_matrix(0.8, 1.3, 1.4, -50.0)).float()
    mine = torch.from_numpy(pixels[0].astype(np.float32)) @ affine[:, :3].T + affine[:, 3]
    assert np.abs(mine.numpy() - dali).max() < 0.01


@pytest.mark.parametrize("crops", [1, 10])
def test_eval_crops_agree_on_real_jpegs(imagenette_small_shards, crops):
    """Same samples, same order, same pixels within 2 intensity levels (DALI's antialiased resize
    against torchvision's Resize(antialias=True); measured maximum: 1 level)."""
    got = {}
    for backend in ENGINES:
        dm = _dm(
            imagenette_small_shards,
            SMALL_RGB,
            backend,
            stage="test",
            batch_size=36,
            normalize_on_device=True,
            test_crops=crops,
        )
        got[backend] = next(iter(dm.test_dataloader()))
    dali, torch_ = got["dali"], got["torch"]
    assert dali["images"].dtype == torch_["images"].dtype == torch.uint8
    assert dali["images"].shape == torch_["images"].shape == ((36, 3, 64, 64) if crops == 1 else (36, 10, 3, 64, 64))
    assert torch.equal(dali["index"], torch_["index"]) and torch.equal(dali["labels"], torch_["labels"])
    diff = (dali["images"].int() - torch_["images"].int()).abs()
    if crops == 1:
        assert diff.max() <= 2
    else:
        # Corner crops hold the resized image's outermost row and column, where the two resamplers
        # differ by design (DALI feeds replicated edge pixels to the antialiasing filter, torchvision
        # renormalizes the filter over the pixels inside): measured up to 17 levels there, 1 inside.
        assert diff[..., 1:-1, 1:-1].max() <= 2 and diff.float().mean() < 0.5


def test_uint8_then_device_normalization_equals_float_normalization(imagenette_small_shards):
    def first(uint8: bool) -> torch.Tensor:
        dm = _dm(imagenette_small_shards, SMALL_RGB, "dali", batch_size=8, normalize_on_device=uint8)
        return dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)["images"]

    as_float, as_uint8 = first(False), first(True)
    assert as_uint8.dtype == torch.float32
    # Both start from the same uint8 pixels: only float rounding differs.
    assert torch.allclose(as_float, as_uint8, atol=1e-4)


# -- training randomness: the same distributions ----------------------------------------------------
def _crop_windows(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(area fraction, aspect w/h, flipped) of crops of the coordinate image (R = 2x, G = 2y, 128 px).

    Linear interpolation of a linear ramp is exact: the first and last output pixel centres sit
    half an output pixel inside the window, so width = (R[-1] - R[0]) / 2 * S / (S - 1).
    """
    s = images.shape[-1]
    mid = s // 2
    dx = (images[:, 0, mid, -1] - images[:, 0, mid, 0]) / 2
    dy = (images[:, 1, -1, mid] - images[:, 1, 0, mid]) / 2
    w, h = dx.abs() * s / (s - 1), dy * s / (s - 1)
    return (w * h / 128**2).numpy(), (w / h).numpy(), (dx < 0).numpy()


@pytest.fixture(scope="module")
def coordinate_shards(tmp_path_factory) -> Path:
    """100 copies of a 128 px PNG whose red is 2x and green 2y: a crop's pixels say where it came from."""
    ramp = np.arange(0, 256, 2, dtype=np.uint8)
    coords = np.stack(
        [np.tile(ramp, (128, 1)), np.tile(ramp[:, None], (1, 128)), np.full((128, 128), 128, np.uint8)], -1
    )
    return _shards(ArraySource(images=[coords] * 100, labels=[0] * 100), tmp_path_factory.mktemp("coords"))


def test_train_crop_scale_aspect_and_flip_distributions_match(coordinate_shards):
    data = coordinate_shards
    windows = {
        b: _crop_windows(
            _train_draws(_dm(data, TINY_RGB, b, preset="inception", min_area=0.08, normalize_on_device=True), epochs=4)
        )
        for b in ENGINES
    }
    for name, k in (("area", 0), ("aspect", 1)):
        for b in ENGINES:  # each engine spans the spec's ranges (5% slack for the pixel rounding)
            values = windows[b][k]
            lo, hi = (0.08, 1.0) if name == "area" else (3 / 4, 4 / 3)
            assert lo * 0.95 < values.min() < lo * 1.15 and hi * 0.9 < values.max() < hi * 1.05, (b, name, values)
        result = ks_2samp(np.log(windows["dali"][k]), np.log(windows["torch"][k]))
        assert result.pvalue > 0.001, (name, result)
    flips = [windows[b][2].mean() for b in ENGINES]
    assert all(0.4 < f < 0.6 for f in flips), flips


def test_alexnet_crops_are_the_papers_window_on_both_engines(coordinate_shards):
    """A image_size square of the image resized to shorter side `resize` (here 32 of 37 px), at a
    uniform position: DALI cuts it in the decoder, torch resizes and then crops."""
    side = 32 / 37  # of the 128 px image
    centres = {}
    for b in ENGINES:
        images = _train_draws(_dm(coordinate_shards, TINY_RGB, b, preset="alexnet", normalize_on_device=True), epochs=2)
        area, aspect, _ = _crop_windows(images[:, :, 1:-1, 1:-1])  # the outer ring meets the antialiasing border
        assert abs(np.median(area) - side**2 * (30 / 32) ** 2) < 0.02 and abs(np.median(aspect) - 1) < 0.03, b
        centres[b] = images[:, 0, 16, 15:17].mean(-1).numpy() / 2 / 128  # crop centre x (flip-proof), fraction
        lo, hi = side / 2, 1 - side / 2
        # The centre is read from 2 output pixels, each ~3.5 source px of a 111 px window: 0.045 of slack.
        assert abs(centres[b].min() - lo) < 0.045 and abs(centres[b].max() - hi) < 0.045, (b, centres[b])
    assert ks_2samp(centres["dali"], centres["torch"]).pvalue > 0.001


def test_colour_jitter_statistics_match(tmp_path):
    colour = np.array([90, 140, 190], dtype=np.uint8)
    data = _shards(
        ArraySource(images=[np.broadcast_to(colour, (48, 48, 3)).copy()] * 100, labels=[0] * 100), tmp_path / "flat"
    )
    means = {
        b: _train_draws(_dm(data, TINY_RGB, b, preset="inception", jitter=0.4, hue=0.1), epochs=4)
        .mean(dim=(2, 3))
        .numpy()
        for b in ENGINES
    }
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
    y_in, i_in, q_in = yiq @ colour
    for b in ENGINES:
        y, i, q = (means[b] @ yiq.T).T
        # Brightness and contrast factors average 1 (contrast pivots on mid-grey 128): the mean
        # luma stays the input's; a 0.4 jitter spreads it by tens of levels.
        assert abs(y.mean() - y_in) < 4 and 15 < y.std() < 60, (b, y.mean(), y.std())
        # Only hue turns the chroma (I, Q): by U[-36, 36] degrees for hue=0.1 (std 36 / sqrt(3)).
        turn = (np.degrees(np.arctan2(q, i) - np.arctan2(q_in, i_in)) + 180) % 360 - 180
        assert abs(turn.mean()) < 3 and abs(turn.std() - 36 / np.sqrt(3)) < 2 and np.abs(turn).max() < 37, (b, turn)
    for channel in range(3):
        result = ks_2samp(means["dali"][:, channel], means["torch"][:, channel])
        assert result.pvalue > 0.001, (channel, result)


def test_pca_lighting_statistics_match_the_paper(tmp_path):
    grey = np.full((48, 48, 3), 128, dtype=np.uint8)
    data = _shards(ArraySource(images=[grey] * 100, labels=[0] * 100), tmp_path / "grey")
    eigvec, eigval = np.array(PCA_EIGVEC), np.array(PCA_EIGVAL)
    alphas = {}
    for b in ENGINES:
        offsets = _train_draws(_dm(data, TINY_RGB, b, preset="alexnet"), epochs=4).mean(dim=(2, 3)).numpy() - 128
        # The offset is sum_j alpha_j lambda_j p_j (0..255 units): back in the eigenbasis, alpha ~ N(0, 0.1).
        alphas[b] = (offsets / 255.0) @ eigvec / eigval
        assert np.allclose(alphas[b].std(axis=0), 0.1, rtol=0.15), (b, alphas[b].std(axis=0))
        assert np.abs(alphas[b].mean(axis=0)).max() < 0.02
        assert np.abs(np.corrcoef(alphas[b].T) - np.eye(3)).max() < 0.2
    for j in range(3):
        assert ks_2samp(alphas["dali"][:, j], alphas["torch"][:, j]).pvalue > 0.001, j


# -- the pixels reaching the model belong to their label --------------------------------------------
@pytest.mark.parametrize("backend", ENGINES)
def test_mnist_pixels_belong_to_their_label(backend, tmp_path):
    digits, labels, _ = load_mnist_set(shared_data("mnist"), "t10k")
    digits, labels = digits[:60], labels[:60]
    data = _shards(ArraySource(images=list(digits), labels=list(labels), flip_ok=False), tmp_path / "mnist")
    dm = _dm(data, LENET, backend, preset="pad", batch_size=16)
    source = torch.from_numpy(digits.astype(np.float32))
    for loader in (dm.val_dataloader(), dm.train_dataloader()):
        seen = []
        for batch in loader:
            images = batch["images"][:, 0] * 0.3081 * 255 + 0.1307 * 255  # (N, 32, 32), 0..255
            # Train shifts the digit by 0..4 px in the 32 px window (eval: 2); search every shift.
            windows = images.unfold(1, 28, 1).unfold(2, 28, 1)  # (N, 5, 5, 28, 28)
            dist = (windows[:, :, :, None] - source).abs().amax(dim=(-1, -2))  # (N, 5, 5, 60)
            best = dist.flatten(1).min(dim=1)
            match = best.indices % len(source)
            assert (best.values <= 1.0).all(), "an image that is no source digit reached the model"
            assert torch.equal(torch.from_numpy(labels[match.numpy()]).long(), batch["labels"])
            seen += match[batch["valid"]].tolist()
        assert sorted(seen) == list(range(60))  # every digit once


# -- the torch engine keeps the loader contract -----------------------------------------------------
def test_torch_loader_reads_the_dali_plan_and_its_batches_do_not_depend_on_workers(imagenette_small_shards):
    dali = _dm(imagenette_small_shards, SMALL_RGB, "dali", batch_size=8, jitter=0.4)
    in_process = _dm(imagenette_small_shards, SMALL_RGB, "torch", batch_size=8, jitter=0.4)
    workers = ShardDataModule(
        data_dir=str(imagenette_small_shards),
        batch_size=8,
        num_threads=2,
        input_spec=SMALL_RGB,
        backend="torch",
        jitter=0.4,
    )
    workers.setup("fit")
    a, b = list(in_process.train_dataloader()), list(workers.train_dataloader())
    c = list(dali.train_dataloader())
    assert len(a) == len(c) and all(torch.equal(x["index"], y["index"]) for x, y in zip(a, c))
    assert all(torch.equal(x["images"], y["images"]) for x, y in zip(a, b))
    for batch in a:
        assert batch["images"].dtype == torch.float32 and batch["images"].shape[1:] == (3, 64, 64)
        assert batch["labels"].dtype == torch.int64 and batch["valid"].dtype == torch.bool
        assert batch["n_valid"] == int(batch["valid"].sum()) and isinstance(batch["n_valid"], int)


def test_auto_backend_falls_back_to_torch_without_dali(monkeypatch, caplog, imagenette_small_shards):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith("nvidia") else real(name, *a)
    )
    with caplog.at_level("INFO"):
        dm = ShardDataModule(data_dir=str(imagenette_small_shards), input_spec=SMALL_RGB)
    assert dm.backend == "torch" and "torch backend" in caplog.text
    with pytest.raises(ValueError, match="nvidia.dali is not installed"):
        ShardDataModule(data_dir=str(imagenette_small_shards), input_spec=SMALL_RGB, backend="dali")
