"""The DALI graph on the CPU: what the network receives, for train, eval and multi-crop test."""

from __future__ import annotations

import shutil

import pytest
import torch

from convnets.data_pipelines.loading.augment import InputSpec
from convnets.data_pipelines.loading.dali_loader import DataError
from convnets.data_pipelines.loading.datamodule import ShardDataModule
from convnets.data_pipelines.shards.cli import verify_output
from convnets.data_pipelines.shards.format import ShardError, load_sample_index, read_labels

pytestmark = pytest.mark.dali

LENET = InputSpec(channels=1, image_size=32, mean=(0.1307,), std=(0.3081,), crop_fraction=28 / 32)
SMALL_RGB = InputSpec(
    channels=3, image_size=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_fraction=0.875
)


def datamodule(path, spec, stage="fit", **kw) -> ShardDataModule:
    dm = ShardDataModule(data_dir=str(path), batch_size=kw.pop("batch_size", 64), num_threads=1, input_spec=spec, **kw)
    dm.setup(stage)
    return dm


def test_train_batches_match_the_shards(digits_shards):
    dm = datamodule(digits_shards, LENET, preset="pad")
    labels = read_labels(load_sample_index(digits_shards / "train"), num_classes=10)
    seen = []
    for batch in dm.train_dataloader():
        assert batch["images"].shape[1:] == (1, 32, 32) and batch["images"].dtype == torch.float32
        assert torch.equal(batch["labels"], torch.from_numpy(labels[batch["index"].numpy()]))
        seen += batch["index"][batch["valid"]].tolist()
    assert sorted(seen) == list(range(len(labels)))


def test_pad_mode_centres_digits_on_black(digits_shards):
    dm = datamodule(digits_shards, LENET, preset="pad")
    images = next(iter(dm.val_dataloader()))["images"]
    black = (0 - 0.1307) / 0.3081
    # Eval: the 28 px digit sits in the middle of the 32 px field; the 2 px border is black.
    assert torch.allclose(images[:, :, :2, :], torch.tensor(black), atol=1e-5)
    assert torch.allclose(images[:, :, :, -2:], torch.tensor(black), atol=1e-5)
    assert images.amax() > 2.0  # the strokes are there


def test_eval_is_deterministic_and_train_is_reproducible_per_epoch(digits_shards):
    dm = datamodule(digits_shards, LENET, preset="pad")
    v1, v2 = next(iter(dm.val_dataloader())), next(iter(dm.val_dataloader()))
    assert torch.equal(v1["images"], v2["images"])
    # Two loaders with the same seed (two runs) read and augment epoch 0 alike.
    epoch0, again = next(iter(dm.train_dataloader())), next(iter(dm.train_dataloader()))
    assert torch.equal(epoch0["index"], again["index"]) and torch.equal(epoch0["images"], again["images"])
    loader = dm.train_dataloader()
    loader.epoch_fn = lambda: 1
    epoch1 = next(iter(loader))
    assert not torch.equal(epoch0["index"], epoch1["index"])  # a new shuffle every epoch


def test_digits_test_uses_five_crops_without_mirrors(digits_shards):
    dm = datamodule(digits_shards, LENET, stage="test", preset="pad")
    batch = next(iter(dm.test_dataloader()))
    assert batch["images"].shape[1:] == (5, 1, 32, 32)
    single = next(iter(dm.val_dataloader()))["images"]
    assert torch.allclose(batch["images"][:, 0], single)  # crop 0 is the single centre crop
    with pytest.raises(ValueError, match="forbids flips"):
        datamodule(digits_shards, LENET, stage="test", preset="pad", test_crops=10).test_dataloader()


def test_ten_crops_are_corners_centre_and_mirrors(imagenette_small_shards):
    dm = datamodule(imagenette_small_shards, SMALL_RGB, stage="test", preset="inception", batch_size=8)
    images = next(iter(dm.test_dataloader()))["images"]
    assert images.shape[1:] == (10, 3, 64, 64)
    assert torch.allclose(images[:, 5], images[:, 0].flip(-1), atol=1e-5)
    assert torch.allclose(images[:, 9], images[:, 4].flip(-1), atol=1e-5)
    assert not torch.allclose(images[:, 1], images[:, 4])


def test_scale_mode_train_crops_at_model_size(imagenette_small_shards):
    dm = datamodule(imagenette_small_shards, SMALL_RGB, preset="inception", batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (8, 3, 64, 64)
    mean = batch["images"].mean(dim=(0, 2, 3))
    assert mean.abs().max() < 1.5  # normalized with ImageNet statistics


def _copy(src, tmp_path):
    dst = tmp_path / "shards"
    shutil.copytree(src, dst)
    return dst


def test_corrupt_image_names_the_shard_and_sample(digits_shards, tmp_path):
    data = _copy(digits_shards, tmp_path)
    index = load_sample_index(data / "train")
    shard = index.shard_paths[int(index.shard_id[3])]
    raw = bytearray(shard.read_bytes())
    start = int(index.img_offset[3])
    raw[start : start + int(index.img_size[3])] = b"\x00" * int(index.img_size[3])  # same size, garbage
    shard.write_bytes(bytes(raw))
    dm = datamodule(data, LENET, preset="pad", batch_size=16)
    with pytest.raises(DataError, match=rf"{shard.name}: sample '{index.key(3)}': cannot decode"):
        for _ in dm.train_dataloader():
            pass


def test_an_image_only_pil_opens_is_named_by_dalis_decoder(digits_shards, tmp_path):
    """A GIF (PIL opens it; DALI decodes no GIF) fails the pipeline: named by DALI's decoder, in a child process."""
    import io

    from PIL import Image

    data = _copy(digits_shards, tmp_path)
    index = load_sample_index(data / "train")
    shard = index.shard_paths[int(index.shard_id[3])]
    gif = io.BytesIO()
    Image.new("L", (4, 4), 200).save(gif, "GIF")
    size = int(index.img_size[3])
    assert len(gif.getvalue()) <= size
    raw = bytearray(shard.read_bytes())
    start = int(index.img_offset[3])
    raw[start : start + size] = gif.getvalue().ljust(size, b"\0")  # same size: the tar and its index stay valid
    shard.write_bytes(bytes(raw))
    dm = datamodule(data, LENET, preset="pad", batch_size=16)
    with pytest.raises(DataError, match=rf"{shard.name}: image {index.key(3)} does not decode with DALI"):
        for _ in dm.train_dataloader():
            pass


def test_truncated_shard_fails_at_setup(digits_shards, tmp_path):
    data = _copy(digits_shards, tmp_path)
    shard = sorted((data / "train").glob("*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(ShardError, match=rf"{shard.name}: 5000 bytes.*truncated"):
        datamodule(data, LENET, preset="pad")


def test_missing_shard_fails_at_setup(digits_shards, tmp_path):
    data = _copy(digits_shards, tmp_path)
    shard = sorted((data / "val").glob("*.tar"))[0]
    shard.unlink()
    with pytest.raises(ShardError, match=rf"{shard}: shard listed in the manifest is missing"):
        datamodule(data, LENET, preset="pad")


def test_val_written_from_other_classes_fails_at_setup(digits_shards, tmp_path):
    """Same number of classes, other names (val/ of another dataset): labels would silently mean other classes."""
    import json

    data = _copy(digits_shards, tmp_path)
    path = data / "val" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["classes"][3], manifest["classes"][4] = manifest["classes"][4], manifest["classes"][3]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"val: label 3 is class '4', but in \S+/train it is '3'"):
        datamodule(data, LENET, preset="pad")
    with pytest.raises(ShardError, match=r"val: label 3 is class '4'"):  # and `convnets shards verify` says so
        verify_output(data)


def test_label_out_of_range_fails_at_setup(digits_shards, tmp_path):
    data = _copy(digits_shards, tmp_path)
    index = load_sample_index(data / "val")
    shard = index.shard_paths[int(index.shard_id[0])]
    raw = bytearray(shard.read_bytes())
    offset = int(index.cls_offset[0])
    assert int(index.cls_size[0]) == 1
    raw[offset : offset + 1] = b"9"
    # Same byte count, so the size check passes: the label check must catch a "9" in a 3-class set.
    import json

    manifest = json.loads((data / "val" / "manifest.json").read_text())
    manifest["classes"] = manifest["classes"][:3]
    manifest["num_classes"] = 3
    (data / "val" / "manifest.json").write_text(json.dumps(manifest))
    shard.write_bytes(bytes(raw))
    dm = ShardDataModule(data_dir=str(data), input_spec=LENET, preset="pad")
    with pytest.raises((ShardError, DataError), match="classes|label"):
        dm.setup("validate")


def _levels(images: torch.Tensor) -> torch.Tensor:
    """A float batch of SMALL_RGB back in 0..255 levels (uint8 batches are levels already)."""
    if images.dtype == torch.uint8:
        return images.float()
    std, mean = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (SMALL_RGB.std, SMALL_RGB.mean))
    return images * std + mean


@pytest.mark.parametrize(
    "preset,jitter,uint8",
    [("inception", 0.0, False), ("inception", 0.4, False), ("inception", 0.4, True), ("alexnet", 0.4, False)],
)
def test_cpu_train_view_kernel_gives_dali_operators_pixels(imagenette_small_shards, monkeypatch, preset, jitter, uint8):
    """The CPU train view in one Numba kernel (cpu_kernels.train_view: resize, jitter with saturation
    and hue, mirror, normalize) against DALI's operators (resize: linear for inception, antialiased
    for alexnet, here a ~2x shrink of the decoder's square; the jitter as colour_twist, which the next
    test holds to DALI's color_twist; crop_mirror_normalize) on the same crops with the same draws,
    in the real training graph, the two stacked one above the other. The operators round to uint8
    after the resize and after the twist, the kernel does not: at most 2 levels apart, and a quarter
    level on average (the mean error of that rounding; measured 0.21-0.30)."""
    import nvidia.dali.fn as fn

    from convnets.data_pipelines.loading import dali_pipeline

    ours = dali_pipeline._train_view
    monkeypatch.setattr(
        dali_pipeline,
        "_train_view",
        lambda images, *args: fn.cat(ours(images, *args), dali_pipeline._train_ops(images, *args), axis=1),
    )
    dm = datamodule(
        imagenette_small_shards,
        SMALL_RGB,
        preset=preset,
        jitter=jitter,
        hue=0.1 if jitter else 0.0,
        normalize_on_device=uint8,
        batch_size=16,
    )
    images = next(iter(dm.train_dataloader()))["images"]
    size = SMALL_RGB.image_size
    assert images.shape == (16, 3, 2 * size, size) and images.dtype == (torch.uint8 if uint8 else torch.float32)
    levels = _levels(images)
    new, old = levels[:, :, :size], levels[:, :, size:]
    assert old.std() > 20  # real photos, not a flat fill
    if jitter:  # the clamp is exercised
        assert ((old < 0.5) | (old > 254.5)).float().mean() > 0.01
    diff = (new - old).abs()
    assert diff.max() <= 2.5 and diff.mean() < 0.35, (diff.max(), diff.mean())


def test_cpu_colour_twist_gives_color_twists_pixels(imagenette_small_tree):
    """The CPU colour jitter of the pad preset (cpu_kernels.colour_twist, ~40x cheaper) against
    DALI's own uint8 color_twist on the same decoded real JPEGs with the same draws (one graph, both
    fed by the same factor nodes), brightness, contrast, saturation and hue all on. Identical pixels
    but for float32 rounding."""
    import numpy as np
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from convnets.data_pipelines.loading import dali_pipeline
    from convnets.data_pipelines.loading.augment import Jitter, preset_spec

    aug = preset_spec("pad", SMALL_RGB, flip=False, jitter=Jitter(0.4, 0.4, 0.4, 0.1))
    files = sorted(imagenette_small_tree.rglob("*.JPEG"))[:16]

    @pipeline_def(batch_size=len(files), num_threads=1, device_id=None, seed=3)
    def graph():
        encoded = fn.external_source(source=lambda: [np.fromfile(f, dtype=np.uint8) for f in files], batch=True)
        images = fn.decoders.image(encoded, output_type=types.RGB)
        factors = dali_pipeline._jitter_factors(aug)
        return dali_pipeline._jitter(images, aug, "cpu", factors), fn.color_twist(images, **factors), images

    pipe = graph()
    pipe.build()
    # photos of different sizes: flattened and joined
    new, old, source = (
        np.concatenate([np.asarray(x[i], dtype=np.float32).ravel() for i in range(len(files))]) for x in pipe.run()
    )
    assert (new - source).std() > 10  # the jitter did change the photos
    # 1 level only where float32 rounds the other way
    assert np.abs(new - old).max() <= 1 and np.abs(new - old).mean() < 0.01


def test_without_numba_the_cpu_graph_runs_on_dalis_operators(imagenette_small_shards, monkeypatch, caplog):
    """Where Numba does not import, the CPU graph is built from DALI's own operators (what the kernel
    tests compare against), with one warning: the same samples, a batch like the kernels' (other
    random draws: the graph differs)."""
    import sys

    import convnets.data_pipelines.loading
    from convnets.data_pipelines.loading import dali_pipeline

    def first_batch():
        dm = datamodule(imagenette_small_shards, SMALL_RGB, preset="inception", jitter=0.4, hue=0.1, batch_size=16)
        batch = next(iter(dm.train_dataloader()))
        return batch["index"], _levels(batch["images"])

    index, with_kernels = first_batch()
    dali_pipeline._cpu_kernels.cache_clear()
    monkeypatch.setitem(sys.modules, "convnets.data_pipelines.loading.cpu_kernels", None)  # the import fails
    monkeypatch.delattr(convnets.data_pipelines.loading, "cpu_kernels", raising=False)
    try:
        index_without, without = first_batch()
        first_batch()
    finally:
        dali_pipeline._cpu_kernels.cache_clear()
    assert caplog.text.count("numba does not import") == 1
    assert torch.equal(index, index_without) and without.shape == with_kernels.shape
    assert abs(without.mean() - with_kernels.mean()) < 10 and abs(without.std() - with_kernels.std()) < 10
