"""Shard writing, indexing and verifying against real data (sklearn digits, MNIST, Imagenette JPEGs)."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convnets.data_pipelines.shards.cli import add_shards_subcommands, run_shards_command, verify_output
from convnets.data_pipelines.shards.format import ShardError, load_sample_index, parse_idx, read_labels, read_manifest
from convnets.data_pipelines.shards.sources import DigitsSource, ImageFolderSource, MnistSource, Sample, encode_gray_png
from convnets.data_pipelines.shards.verify import verify_shards
from convnets.data_pipelines.shards.writer import write_shards
from tests.conftest import shared_data

MNIST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # ../shared/data/README.md


@dataclass(kw_only=True)
class ListSource:
    """A source over in-memory samples, for the cases the real sources cannot produce (failures, 3 classes)."""

    samples: dict[str, list[Sample]]
    classes: list[str] = field(default_factory=lambda: [str(d) for d in range(10)])
    flip_ok: bool = False
    description: str = "test list source"

    def splits(self) -> dict[str, list[Sample]]:
        return self.samples


def _digits_pixels_and_labels() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.rint(digits.images * 255 / 16).astype(np.uint8), digits.target


def _read_samples(split_dir: Path) -> list[tuple[str, bytes, str, int]]:
    """(key, image bytes, ext, label) in shard order, read with os.pread through the .idx index."""
    index = load_sample_index(split_dir)
    fds = [os.open(p, os.O_RDONLY) for p in index.shard_paths]
    try:
        out = []
        for i in range(len(index)):
            fd = fds[index.shard_id[i]]
            image = os.pread(fd, int(index.img_size[i]), int(index.img_offset[i]))
            label = int(os.pread(fd, int(index.cls_size[i]), int(index.cls_offset[i])))
            out.append((index.key(i), image, index.image_exts[index.img_ext[i]], label))
        return out
    finally:
        for fd in fds:
            os.close(fd)


def _decode(image: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(image)) as decoded:
        return np.asarray(decoded)


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    write_shards(DigitsSource(), out, shard_size=400, seed=0)
    return out


def test_digits_round_trip_keeps_every_image_and_label(digits_shards: Path) -> None:
    pixels, labels = _digits_pixels_and_labels()
    expected = Counter((p.tobytes(), int(y)) for p, y in zip(pixels, labels))
    train, val = _read_samples(digits_shards / "train"), _read_samples(digits_shards / "val")
    assert len(train) + len(val) == 1797
    assert len(val) == pytest.approx(0.2 * 1797, abs=5)
    found = Counter((_decode(image).tobytes(), label) for _, image, ext, label in train + val)
    assert found == expected
    assert {ext for _, _, ext, _ in train + val} == {"png"}
    assert _decode(train[0][1]).shape == (8, 8)
    keys = [key for key, *_ in train + val]
    assert len(set(keys)) == len(keys) and not any("." in k for k in keys)


def test_digits_manifest_describes_the_split(digits_shards: Path) -> None:
    manifest = read_manifest(digits_shards / "train")
    raw = json.loads((digits_shards / "train" / "manifest.json").read_text())
    assert raw["num_classes"] == 10 and raw["classes"] == [str(d) for d in range(10)] and raw["flip_ok"] is False
    assert [s.num_samples for s in manifest.shards] == [400, 400, 400, 238]
    assert sum(manifest.class_counts) == manifest.num_samples == 1438
    for shard in manifest.shards:
        assert hashlib.sha256((digits_shards / "train" / shard.name).read_bytes()).hexdigest() == shard.sha256


def test_every_shard_mixes_classes(tmp_path: Path) -> None:
    by_class = sorted(_digit_samples(1000), key=lambda sample: sample.label)  # worst case: one class after another
    write_shards(ListSource(samples={"train": by_class}), tmp_path, shard_size=100)
    samples = _read_samples(tmp_path / "train")
    for start in range(0, len(samples), 100):
        labels = [label for *_, label in samples[start : start + 100]]
        assert len(set(labels)) >= 8, f"shard at sample {start} holds only classes {sorted(set(labels))}"


def test_same_seed_same_bytes_other_seed_other_order(digits_shards: Path, tmp_path: Path) -> None:
    again = write_shards(DigitsSource(), tmp_path / "again", shard_size=400, seed=0)
    other = write_shards(DigitsSource(), tmp_path / "other", shard_size=400, seed=1)
    first_run = read_manifest(digits_shards / "train")
    assert [s.sha256 for s in again["train"].shards] == [s.sha256 for s in first_run.shards]
    first = [label for *_, label in _read_samples(digits_shards / "train")]
    second = [label for *_, label in _read_samples(tmp_path / "other" / "train")]
    assert first != second and sorted(first) == sorted(second)
    assert other["train"].class_counts == again["train"].class_counts


def test_sample_index_agrees_with_a_line_by_line_parse(digits_shards: Path, tmp_path: Path) -> None:
    split_dir = shutil.copytree(digits_shards / "train", tmp_path / "train")
    before = load_sample_index(split_dir)
    records = [r for s in read_manifest(split_dir).shards for r in parse_idx(split_dir / s.index)]
    assert [before.key(i) for i in range(len(before))] == [r.key for r in records]
    assert before.img_offset.tolist() == [r.img_offset for r in records]
    assert before.cls_size.tolist() == [r.cls_size for r in records]
    idx = split_dir / "shard-000001.idx"  # another writer may put .cls first: same samples, slower path
    lines = idx.read_text().splitlines()
    swapped = [" ".join(line.split(" ")[4:] + line.split(" ")[:4]) for line in lines[1:]]
    idx.write_text("\n".join(lines[:1] + swapped) + "\n")
    after = load_sample_index(split_dir)
    assert np.array_equal(after.img_offset, before.img_offset) and np.array_equal(after.keys, before.keys)
    idx.write_text("\n".join(lines[:3] + ["png 12 x train_1.png cls 5 1 train_1.cls"] + lines[4:]) + "\n")
    with pytest.raises(ShardError, match=r"shard-000001\.idx: line 4 is not"):
        load_sample_index(split_dir)


@pytest.mark.dali
def test_idx_files_are_byte_identical_to_dalis_wds2idx(digits_shards: Path, tmp_path: Path) -> None:
    wds2idx = pytest.importorskip("wds2idx", reason="DALI's wds2idx tool is not installed")
    for shard in sorted((digits_shards / "train").glob("*.tar")):
        with wds2idx.IndexCreator(str(shard), str(tmp_path / "ref.idx"), verbose=False) as creator:
            creator.create_index()
        assert (tmp_path / "ref.idx").read_bytes() == shard.with_suffix(".idx").read_bytes(), shard.name


@pytest.mark.dali
def test_dali_webdataset_reader_reads_every_sample_with_our_idx(digits_shards: Path) -> None:
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn
    from nvidia.dali.pipeline import Pipeline

    split_dir = digits_shards / "train"
    tars = [split_dir / s.name for s in read_manifest(split_dir).shards]
    batch = 64
    pipe = Pipeline(batch_size=batch, num_threads=1, device_id=None)
    with pipe:
        image, cls = fn.readers.webdataset(
            paths=[str(t) for t in tars],
            index_paths=[str(t.with_suffix(".idx")) for t in tars],
            ext=["jpg;png", "cls"],
            missing_component_behavior="error",
            random_shuffle=False,
            pad_last_batch=True,
            name="reader",
        )
        pipe.set_outputs(image, cls)
    pipe.build()
    assert pipe.reader_meta("reader")["epoch_size"] == 1438
    got = []
    while len(got) < 1438:
        images, labels = pipe.run()
        got += [(np.array(images[i]).tobytes(), int(np.array(labels[i]).tobytes())) for i in range(batch)]
    expected = [(image, label) for _, image, _, label in _read_samples(split_dir)]
    assert got[:1438] == expected


def _imagenette_files(cls: str, split: str, n: int) -> list[Path]:
    return sorted((shared_data("imagenette") / split / cls).iterdir())[:n]


def _build_tree(root: Path) -> dict[str, bytes]:
    """train/ and val/ of 3 real Imagenette classes; returns original bytes of every JPEG by file name."""
    originals = {}
    for cls in ("n01440764", "n02102040", "n02979186"):
        for split, n in (("train", 4), ("val", 2)):
            (root / split / cls).mkdir(parents=True)
            for src in _imagenette_files(cls, split, n):
                shutil.copyfile(src, root / split / cls / src.name)
                originals[src.name] = src.read_bytes()
    apostrophe = shared_data("imagenet-sample") / "n12057211_yellow_lady's_slipper.JPEG"
    odd_name = root / "train" / "n01440764" / "yellow lady's slipper copy.JPEG"
    shutil.copyfile(apostrophe, odd_name)
    originals[odd_name.name] = odd_name.read_bytes()
    (root / "train" / "n02102040" / ".DS_Store").write_bytes(b"not an image, and hidden")
    return originals


@pytest.mark.dali  # verify --deep decodes with DALI
def test_imagefolder_train_val_copies_jpegs_verbatim_and_reencodes_bmp(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    originals = _build_tree(root)
    bmp_source = _imagenette_files("n02979186", "train", 5)[-1]
    with Image.open(bmp_source) as im:
        bmp_pixels = np.asarray(im.convert("RGB"))
        im.convert("RGB").save(root / "train" / "n02979186" / "scan.bmp")
    source = ImageFolderSource(root=root)
    manifests = write_shards(source, tmp_path / "out", shard_size=5)
    assert source.classes == ["n01440764", "n02102040", "n02979186"] and source.flip_ok
    assert manifests["train"].class_counts == (5, 4, 5) and manifests["val"].class_counts == (2, 2, 2)
    samples = _read_samples(tmp_path / "out" / "train") + _read_samples(tmp_path / "out" / "val")
    jpegs = Counter(image for _, image, ext, _ in samples if ext == "jpg")
    assert jpegs == Counter(originals.values())
    (png,) = [image for _, image, ext, _ in samples if ext == "png"]
    assert np.array_equal(_decode(png), bmp_pixels)
    verify_shards(tmp_path / "out" / "train", deep=True)


def test_imagefolder_single_tree_splits_stratified(tmp_path: Path) -> None:
    for cls in ("n03000684", "n03028079"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for src in _imagenette_files(cls, "train", 10):
            shutil.copyfile(src, tmp_path / "tree" / cls / src.name)
    manifests = write_shards(ImageFolderSource(root=tmp_path / "tree", val_fraction=0.2, seed=3), tmp_path / "out")
    assert manifests["train"].class_counts == (8, 8) and manifests["val"].class_counts == (2, 2)


def test_imagefolder_rejects_val_class_missing_from_train(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    _build_tree(root)
    (root / "val" / "n09999999").mkdir()
    shutil.copyfile(_imagenette_files("n01440764", "val", 1)[0], root / "val" / "n09999999" / "x.JPEG")
    with pytest.raises(ValueError, match=r"n09999999.*not among the train classes"):
        write_shards(ImageFolderSource(root=root), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_imagefolder_undecodable_file_names_the_file_and_writes_no_manifest(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    _build_tree(root)
    (root / "train" / "n02102040" / "notes.JPEG").write_text("this is not a JPEG")
    with pytest.raises(ValueError, match=r"notes\.JPEG: not a decodable image"):
        write_shards(ImageFolderSource(root=root), tmp_path / "out", shard_size=4)
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_mnist_test_set_splits_8000_2000(tmp_path: Path) -> None:
    root = shared_data("mnist")
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    source = MnistSource(root=root)
    manifests = write_shards(source, tmp_path / "out", shard_size=2000)
    train, val = manifests["train"], manifests["val"]
    assert (train.num_samples, val.num_samples) == (8000, 2000) and len(train.shards) == 4
    assert train.class_counts == tuple(np.bincount(labels[:8000], minlength=10)) and sum(train.class_counts) == 8000
    assert [a + b for a, b in zip(train.class_counts, val.class_counts)] == MNIST_COUNTS
    assert train.flip_ok is False and train.classes == tuple(str(d) for d in range(10))
    _, image, ext, _ = _read_samples(tmp_path / "out" / "val")[0]
    decoded = _decode(image)
    assert ext == "png" and decoded.shape == (28, 28) and decoded.dtype == np.uint8 and decoded.max() > 200


def test_mnist_uses_train_files_when_present(tmp_path: Path) -> None:
    root = shared_data("mnist")
    for kind in ("images-idx3", "labels-idx1"):
        shutil.copyfile(root / f"t10k-{kind}-ubyte.gz", tmp_path / f"t10k-{kind}-ubyte.gz")
        (tmp_path / f"train-{kind}-ubyte").write_bytes(gzip.decompress((root / f"t10k-{kind}-ubyte.gz").read_bytes()))
    splits = MnistSource(root=tmp_path).splits()
    assert (len(splits["train"]), len(splits["val"])) == (10_000, 10_000)
    assert splits["train"][0].key == "train-images-idx3-ubyte[0]"
    assert [s.label for s in splits["train"]] == [s.label for s in splits["val"]]


def test_mnist_bad_magic_and_truncation_name_the_file(tmp_path: Path) -> None:
    root = shared_data("mnist")
    images = gzip.decompress((root / "t10k-images-idx3-ubyte.gz").read_bytes())
    shutil.copyfile(root / "t10k-labels-idx1-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(images[:-100])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: \d+ bytes but the header .* truncated"):
        MnistSource(root=tmp_path).splits()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + images[4:])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: bad magic 2049 \(expected 2051\)"):
        MnistSource(root=tmp_path).splits()


def test_an_old_split_folder_is_not_silently_kept(digits_shards: Path, tmp_path: Path) -> None:
    shutil.copytree(digits_shards / "val", tmp_path / "test")
    with pytest.raises(ValueError, match=r"/test: shards of a split this source does not write \(train, val\)"):
        write_shards(DigitsSource(), tmp_path)
    assert not (tmp_path / "train").exists()


def test_label_out_of_range_is_rejected_before_writing(tmp_path: Path) -> None:
    png = encode_gray_png(np.zeros((8, 8), np.uint8))
    bad = [Sample(key="bad-sample-7", label=10, read=lambda: (png, "png"))]
    with pytest.raises(ValueError, match=r"bad-sample-7: label 10 outside \[0, 10\)"):
        write_shards(ListSource(samples={"train": bad}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _digit_samples(n: int, *, fail_after: int | None = None) -> list[Sample]:
    """n real digits; with fail_after, the read after that many reads raises (a crash mid-write)."""
    pixels, labels = _digits_pixels_and_labels()
    reads = Counter()

    def read(i: int) -> tuple[bytes, str]:
        if reads["n"] == fail_after:
            raise RuntimeError(f"simulated crash after {fail_after} samples")
        reads["n"] += 1
        return encode_gray_png(pixels[i]), "png"

    return [Sample(key=f"digit[{i}]", label=int(labels[i]), read=lambda i=i: read(i)) for i in range(n)]


def test_interrupted_write_leaves_no_half_shard_and_no_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_shards(ListSource(samples={"train": _digit_samples(300)}), out, shard_size=20)  # a bigger older run
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_shards(ListSource(samples={"train": _digit_samples(200, fail_after=130)}), out, shard_size=50)
    split_dir = out / "train"
    assert not (split_dir / "manifest.json").exists() and not list(split_dir.glob("*.tmp"))
    with pytest.raises(ShardError, match=r"manifest\.json: missing"):
        verify_output(out)
    assert sorted(p.name for p in split_dir.iterdir()) == [
        f"shard-00000{i}.{e}" for i in (0, 1) for e in ("done", "idx", "tar")
    ]
    for tar in split_dir.glob("*.tar"):  # the shards that finished are complete, each with its .idx
        with tarfile.open(tar) as archive:
            assert len(archive.getmembers()) == 2 * len(parse_idx(tar.with_suffix(".idx")))
    write_shards(ListSource(samples={"train": _digit_samples(200)}), out, shard_size=50)
    expected = [f"shard-{i:06d}.{e}" for i in range(4) for e in ("done", "idx", "tar")]
    assert sorted(p.name for p in split_dir.glob("shard-*")) == expected
    assert verify_shards(split_dir).num_samples == 200


def test_verify_catches_truncation(digits_shards: Path, tmp_path: Path) -> None:
    split_dir = shutil.copytree(digits_shards / "train", tmp_path / "train")
    shard = split_dir / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:300_000])
    with pytest.raises(
        ShardError,
        match=r"shard-000001\.tar: truncated or corrupt at member 'train_\d{8}\.(png|cls)' "
        r"\(expected 400 samples, read \d+",
    ):
        verify_shards(split_dir)


def test_verify_catches_a_flipped_byte(digits_shards: Path, tmp_path: Path) -> None:
    split_dir = shutil.copytree(digits_shards / "train", tmp_path / "train")
    shard = split_dir / "shard-000002.tar"
    offset = parse_idx(shard.with_suffix(".idx"))[17].img_offset + 40  # inside a PNG, not a tar header
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-000002\.tar: sha256 \w+\.\.\. differs from the manifest"):
        verify_shards(split_dir)


def test_verify_catches_a_label_out_of_range(tmp_path: Path) -> None:
    samples = [s for s in _digit_samples(60) if s.label < 3]
    write_shards(ListSource(samples={"train": samples}, classes=["0", "1", "2"]), tmp_path, shard_size=10)
    split_dir = tmp_path / "train"
    record = parse_idx(split_dir / "shard-000001.idx")[0]
    shard = split_dir / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[record.cls_offset] = ord("7")  # a label the 3-class manifest cannot have
    shard.write_bytes(bytes(data))
    manifest = json.loads((split_dir / "manifest.json").read_text())  # re-sign so only the label is wrong
    manifest["shards"][1]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (split_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=rf"shard-000001\.tar: sample '{record.key}' has label '7' outside \[0, 3\)"):
        verify_shards(split_dir)


@pytest.mark.dali  # verify --deep decodes with DALI
def test_verify_deep_catches_an_undecodable_image(tmp_path: Path) -> None:
    png = encode_gray_png(np.full((8, 8), 9, np.uint8))
    samples = [Sample(key=f"s{i}", label=i % 10, read=lambda: (png, "png")) for i in range(5)]
    samples.append(Sample(key="broken", label=0, read=lambda: (png[:40], "png")))
    write_shards(ListSource(samples={"train": samples}), tmp_path)
    verify_shards(tmp_path / "train")  # structure, hashes and labels are fine
    with pytest.raises(ShardError, match=r"shard-000000\.tar: image train_\d{8}\.png does not decode"):
        verify_shards(tmp_path / "train", deep=True)


def test_read_manifest_errors_name_the_file(digits_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ShardError, match=rf"{tmp_path}/manifest\.json: missing"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match=r"manifest\.json: not valid JSON"):
        read_manifest(tmp_path)
    raw = json.loads((digits_shards / "val" / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**raw, "format_version": 99}))
    with pytest.raises(ShardError, match=r"manifest\.json: format \('convnets-shards', 99\) is not"):
        read_manifest(tmp_path)


@pytest.mark.dali  # verify --deep decodes with DALI
def test_cli_writes_digits_and_verifies(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="convnets")
    add_shards_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["shards", "digits", str(tmp_path), "--shard-size", "600", "--seed", "2", "--val-fraction", "0.5"]
    )
    assert run_shards_command(args) == 0
    assert read_manifest(tmp_path / "val").num_samples == pytest.approx(898, abs=5)
    assert run_shards_command(parser.parse_args(["shards", "verify", str(tmp_path), "--deep"])) == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["shards", "digits"])


def test_resize_on_write_shrinks_the_shorter_side_and_normalizes_cmyk(tmp_path):
    """--resize: real JPEGs come out with the shorter side at N px (never enlarged); CMYK becomes RGB."""
    import io
    import tarfile

    from PIL import Image

    from convnets.data_pipelines.shards.sources import ImageFolderSource
    from tests.conftest import shared_data

    real = sorted((shared_data("imagenette") / "train").iterdir())[0]
    for split in ("train", "val"):
        (tmp_path / "src" / split / "a").mkdir(parents=True)
        for i, image in enumerate(sorted(real.iterdir())[:3]):
            (tmp_path / "src" / split / "a" / f"{i}.JPEG").write_bytes(image.read_bytes())
        Image.new("CMYK", (40, 30), (0, 128, 255, 0)).save(tmp_path / "src" / split / "a" / "cmyk.JPEG", format="JPEG")
    write_shards(ImageFolderSource(root=tmp_path / "src", resize=32, quality=85), tmp_path / "out", shard_size=10)
    with tarfile.open(next((tmp_path / "out" / "train").glob("*.tar"))) as tar:
        images = [
            Image.open(io.BytesIO(tar.extractfile(m).read())) for m in tar.getmembers() if m.name.endswith(".jpg")
        ]
    assert len(images) == 4 and all(im.format == "JPEG" and im.mode in ("RGB", "L") for im in images)
    assert sorted(min(im.size) for im in images) == [30, 32, 32, 32]  # the 40x30 image is not enlarged


def test_format_1_folders_are_still_read_through_their_cls_members(digits_shards: Path, tmp_path: Path) -> None:
    """A folder written before labels.npy existed: labels come from the .cls members, equal to labels.npy's."""
    split_dir = shutil.copytree(digits_shards / "val", tmp_path / "val")
    expected = read_labels(split_dir, num_classes=10)
    assert np.array_equal(expected, np.load(split_dir / "labels.npy"))
    raw = json.loads((split_dir / "manifest.json").read_text())
    for new_field in ("labels", "class_names", "skipped", "small_images"):
        del raw[new_field]
    (split_dir / "manifest.json").write_text(json.dumps({**raw, "format_version": 1}))
    (split_dir / "labels.npy").unlink()
    index = load_sample_index(split_dir)
    assert index.labels is None and read_manifest(split_dir).format_version == 1
    assert np.array_equal(read_labels(index, num_classes=10), expected)
    assert verify_shards(split_dir).num_samples == len(expected)
    with pytest.raises(ShardError, match=rf"sample '{index.key(int(np.argmax(expected)))}': label 9 outside the 9"):
        read_labels(index, num_classes=9)


def test_labels_npy_is_one_small_file_in_sample_index_order(digits_shards: Path) -> None:
    split_dir = digits_shards / "train"
    manifest = read_manifest(split_dir)
    labels = np.load(split_dir / "labels.npy")
    assert labels.dtype == np.int16 and manifest.labels.name == "labels.npy"
    assert labels.tolist() == [label for *_, label in _read_samples(split_dir)]  # the .cls members, pread
    assert manifest.labels.sha256 == hashlib.sha256((split_dir / "labels.npy").read_bytes()).hexdigest()
