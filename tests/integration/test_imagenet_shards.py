"""`convnets shards imagenet` on an ILSVRC-2012-shaped tree built here from real ImageNet JPEGs.

The tree: train/<wnid>/ from Imagenette (whose folders are ILSVRC wnids) and imagenet-sample originals,
a flat val/ of ILSVRC2012_val_<8 digits>.JPEG, the three val label formats written for it (a devkit
meta.mat whose ILSVRC ids are NOT in sorted-wnid order, a Kaggle csv, a Caffe val.txt indexing the real
1,000-class synset_words.txt), and the files real ILSVRC-2012 holds: CMYK, a PNG named .JPEG, grayscale,
EXIF-rotated, truncated and empty. Expected labels are computed from the file names, independently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from convnets.data_pipelines.shards.format import ShardError, load_sample_index, read_labels, read_manifest
from convnets.data_pipelines.shards.imagenet import ImagenetSource
from convnets.data_pipelines.shards.verify import verify_shards
from convnets.data_pipelines.shards.writer import write_shards
from tests.conftest import shared_data
from tests.integration.cli_helpers import REPO

pytestmark = pytest.mark.integration

IMAGENETTE = ("n01440764", "n02102040", "n02979186", "n03000684")
SAMPLES = ("n01530575_brambling.JPEG", "n04592741_wing.JPEG")  # imagenet-sample originals, their own classes
QUIRKS = "n01530575"  # the class folder that gets the odd files


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


def _quirk_files(class_dir: Path) -> dict[str, np.ndarray | None]:
    """Odd files made with PIL from a real image; name -> the upright RGB pixels a decoder should see (None: skip)."""
    real = shared_data("imagenet-sample") / "n04592741_wing.JPEG"
    with Image.open(real) as im:
        rgb = im.convert("RGB")
    expected: dict[str, np.ndarray | None] = {}
    rgb.resize((300, 200)).convert("CMYK").save(class_dir / "cmyk.JPEG", format="JPEG", quality=95)
    with Image.open(class_dir / "cmyk.JPEG") as im:
        expected["cmyk.JPEG"] = np.asarray(im.convert("RGB"))
    small = rgb.resize((120, 90))
    small.save(class_dir / "png_named.JPEG", format="PNG")  # as n02105855_2933.JPEG in ILSVRC-2012 train
    expected["png_named.JPEG"] = np.asarray(small)
    rgb.resize((200, 150)).convert("L").save(class_dir / "gray.JPEG", format="JPEG", quality=95)
    with Image.open(class_dir / "gray.JPEG") as im:
        expected["gray.JPEG"] = np.asarray(im.convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    wide = rgb.resize((160, 100))
    wide.save(class_dir / "rotated.JPEG", format="JPEG", quality=95, exif=exif)
    with Image.open(class_dir / "rotated.JPEG") as im:
        expected["rotated.JPEG"] = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    data = real.read_bytes()
    (class_dir / "truncated.JPEG").write_bytes(data[: len(data) // 2])
    (class_dir / "empty.JPEG").write_bytes(b"")
    expected["truncated.JPEG"] = expected["empty.JPEG"] = None
    return expected


def _write_label_files(root: Path, truth: dict[int, str], wnids: list[str]) -> None:
    """The devkit (ids in a non-sorted order), Kaggle and Caffe formats for the val images in `truth`."""
    from scipy.io import savemat

    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    ids = {wnid: i for i, wnid in enumerate(reversed(wnids), start=1)}  # id order = reversed sorted order
    rows = [(ids[w], w, f"words of {w}", 0) for w in wnids] + [(len(wnids) + 1, "n00001740", "entity", 3)]
    synsets = np.array(rows, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    savemat(devkit / "meta.mat", {"synsets": synsets})
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{ids[truth[n]]}\n" for n in range(1, max(truth) + 1))
    )
    with open(root / "LOC_val_solution.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "PredictionString"])
        writer.writerows([f"ILSVRC2012_val_{n:08d}", f"{w} 10 20 110 120"] for n, w in sorted(truth.items()))
    real_order = sorted(line.split()[0] for line in (root / "synset_words.txt").read_text().splitlines())
    (root / "val.txt").write_text(
        "".join(f"ILSVRC2012_val_{n:08d}.JPEG {real_order.index(w)}\n" for n, w in sorted(truth.items()))
    )


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ROOT with train/, a flat val/, all three label formats; returns paths and the independent truth."""
    root = tmp_path_factory.mktemp("ilsvrc")
    net, sample = shared_data("imagenette"), shared_data("imagenet-sample")
    shutil.copyfile(shared_data("imagenet-meta") / "synset_words.txt", root / "synset_words.txt")
    for wnid in IMAGENETTE:
        for image in sorted((net / "train" / wnid).iterdir())[:3]:
            _link(image, root / "train" / wnid / image.name)
    for name in SAMPLES:
        _link(sample / name, root / "train" / name.split("_")[0] / name)
    quirks = _quirk_files(root / "train" / QUIRKS)
    val_sources = [image for wnid in IMAGENETTE for image in sorted((net / "val" / wnid).iterdir())[:2]]
    numbers = np.random.default_rng(7).permutation(len(val_sources)) + 1  # val numbers unrelated to class
    truth = {}
    for number, image in zip(numbers.tolist(), val_sources):
        _link(image, root / "val" / f"ILSVRC2012_val_{number:08d}.JPEG")
        truth[number] = image.parent.name
    wnids = sorted(p.name for p in (root / "train").iterdir())
    _write_label_files(root, truth, wnids)
    return {"root": root, "truth": truth, "wnids": wnids, "quirks": quirks}


def _expected_label(key: str, ilsvrc: dict) -> int:
    """From the file name alone: train/<wnid>/x -> sorted position of wnid; val number -> truth -> position."""
    path = Path(key)
    if path.parent.name == "val":
        return ilsvrc["wnids"].index(ilsvrc["truth"][int(path.stem.rsplit("_", 1)[1])])
    return ilsvrc["wnids"].index(path.parent.name)


@pytest.mark.parametrize(
    "label_file",
    ["ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", "LOC_val_solution.csv", "val.txt", None],
)
def test_every_sample_gets_its_wnids_sorted_position(ilsvrc: dict, label_file: str | None) -> None:
    root = ilsvrc["root"]
    source = ImagenetSource(root=root, val_labels=None if label_file is None else root / label_file)
    splits = source.splits()
    assert source.classes == ilsvrc["wnids"] and source.class_names[0] == "tench, Tinca tinca"
    assert len(splits["val"]) == len(ilsvrc["truth"]) == 8
    for sample in splits["train"] + splits["val"]:
        assert sample.label == _expected_label(sample.key, ilsvrc), sample.key
    if label_file is None:  # found by its standard name: the devkit comes first
        assert "devkit" in source.description


def test_caffe_indices_are_into_sorted_wnids_whatever_the_synset_files_order(ilsvrc: dict, tmp_path: Path) -> None:
    """val.txt's indices point into the sorted wnids, not into the synset file's line order."""
    root = tmp_path / "root"
    root.mkdir()
    for name in ("train", "val", "val.txt"):
        (root / name).symlink_to(ilsvrc["root"] / name)
    lines = (ilsvrc["root"] / "synset_words.txt").read_text().splitlines()
    shuffled = [lines[i] for i in np.random.default_rng(3).permutation(len(lines))]
    (root / "synset_words.txt").write_text("\n".join(shuffled) + "\n")
    file_order = [line.split()[0] for line in shuffled]
    caffe = [int(line.split()[1]) for line in (root / "val.txt").read_text().splitlines()]
    assert [file_order[i] for i in caffe] != [ilsvrc["truth"][n] for n in sorted(ilsvrc["truth"])]  # a misreading shows
    source = ImagenetSource(root=root, val_labels=root / "val.txt")
    splits = source.splits()
    assert source.classes == ilsvrc["wnids"] and source.class_names[0] == "tench, Tinca tinca"
    assert len(splits["val"]) == 8
    for sample in splits["val"]:
        assert sample.label == _expected_label(sample.key, ilsvrc), sample.key


def test_meta_mat_order_is_not_sorted_order(ilsvrc: dict, tmp_path: Path) -> None:
    """The devkit's ids are meta.mat positions: reading them as sorted-wnid indices would mislabel val."""
    root = ilsvrc["root"]
    gt = root / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    ids = [int(x) for x in gt.read_text().split()]
    wrong = [ilsvrc["wnids"][i - 1] for i in ids]  # the sorted-order misreading
    assert wrong != [ilsvrc["truth"][n] for n in range(1, len(ids) + 1)]


def _stored(split_dir: Path) -> list[tuple[str, bytes, int]]:
    index = load_sample_index(split_dir)
    labels = read_labels(index, num_classes=read_manifest(split_dir).num_classes)
    out = []
    for i in range(len(index)):
        with open(index.shard_paths[index.shard_id[i]], "rb") as f:
            out.append(
                (index.key(i), os.pread(f.fileno(), int(index.img_size[i]), int(index.img_offset[i])), int(labels[i]))
            )
    return out


@pytest.fixture(scope="module")
def converted(ilsvrc: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imagenet_shards")
    write_shards(ImagenetSource(root=ilsvrc["root"]), out, shard_size=4, seed=0, workers=1)
    return out


def test_shards_hold_original_bytes_with_the_right_labels_and_quirks_fixed(ilsvrc: dict, converted: Path) -> None:
    root = ilsvrc["root"]
    originals = {}
    for path in sorted((root / "train").rglob("*")) + sorted((root / "val").iterdir()):
        if path.is_file() and path.parent.name != QUIRKS or path.name in SAMPLES:
            originals[path.read_bytes()] = _expected_label(str(path), ilsvrc)
    stored = _stored(converted / "train") + _stored(converted / "val")
    reencoded = []
    for key, image, label in stored:
        if image in originals:
            assert label == originals[image], key
        else:
            reencoded.append((image, label))
    # Plain RGB JPEGs keep their bytes; the 4 odd files (and any grayscale original) are re-encoded.
    gray_originals = sum(Image.open(io.BytesIO(b)).mode != "RGB" for b in originals)
    assert len(stored) == len(originals) + 4 and len(reencoded) == gray_originals + 4
    decoded = []
    for image, label in reencoded:
        with Image.open(io.BytesIO(image)) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            decoded.append((np.asarray(im).astype(int), label))
    for name, pixels in ilsvrc["quirks"].items():
        if pixels is not None:
            matches = [label for got, label in decoded if got.shape == pixels.shape and np.abs(got - pixels).mean() < 4]
            assert matches == [ilsvrc["wnids"].index(QUIRKS)], f"{name}: no stored RGB JPEG with its upright pixels"
    manifest = read_manifest(converted / "train")
    assert {Path(s.path).name: s.reason for s in manifest.skipped}.keys() == {"truncated.JPEG", "empty.JPEG"}
    assert "truncated" in {Path(s.path).name: s.reason for s in manifest.skipped}["truncated.JPEG"]
    assert manifest.class_names[manifest.classes.index("n01440764")] == "tench, Tinca tinca"
    assert manifest.small_images == sum(
        min(Image.open(io.BytesIO(b)).size) < 224 for _, b, _ in _stored(converted / "train")
    )


@pytest.mark.dali
def test_verify_deep_decodes_with_dali_and_names_a_bad_sample(converted: Path, tmp_path: Path) -> None:
    pytest.importorskip("nvidia.dali")
    assert verify_shards(converted / "train", deep=True).num_samples == read_manifest(converted / "train").num_samples
    split_dir = shutil.copytree(converted / "val", tmp_path / "val")
    index = load_sample_index(split_dir)
    shard = index.shard_paths[int(index.shard_id[5])]
    data = bytearray(shard.read_bytes())
    start = int(index.img_offset[5])
    data[start + 200 : start + int(index.img_size[5])] = bytes(int(index.img_size[5]) - 200)  # JPEG body zeroed
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"sha256 .* differs"):
        verify_shards(split_dir)
    _resign(split_dir, shard)
    with pytest.raises(ShardError, match=rf"{shard.name}: image {index.key(5)}\.jpg does not decode with DALI"):
        verify_shards(split_dir, deep=True)


def _resign(split_dir: Path, shard: Path) -> None:
    """Put a changed shard's sha256 in the manifest, so that only the content check can object."""
    text = (split_dir / "manifest.json").read_text()
    entry = next(s for s in read_manifest(split_dir).shards if s.name == shard.name)
    (split_dir / "manifest.json").write_text(text.replace(entry.sha256, hashlib.sha256(shard.read_bytes()).hexdigest()))


def test_labels_file_is_checked_against_the_cls_members_and_names_a_bad_label(converted: Path, tmp_path: Path) -> None:
    split_dir = shutil.copytree(converted / "val", tmp_path / "val")
    manifest = read_manifest(split_dir)
    labels = np.load(split_dir / "labels.npy")
    assert (
        labels.dtype == np.int16
        and manifest.labels.sha256 == hashlib.sha256((split_dir / "labels.npy").read_bytes()).hexdigest()
    )
    index = load_sample_index(split_dir)
    for i, wrong in ((3, (labels[3] + 1) % manifest.num_classes), (3, manifest.num_classes + 2)):
        changed = labels.copy()
        changed[i] = wrong
        np.save(split_dir / "labels.npy", changed)
        text = (split_dir / "manifest.json").read_text()
        new_sha = hashlib.sha256((split_dir / "labels.npy").read_bytes()).hexdigest()
        (split_dir / "manifest.json").write_text(text.replace(manifest.labels.sha256, new_sha))
        manifest = read_manifest(split_dir)
        with pytest.raises(ShardError, match=rf"labels\.npy: sample '{index.key(i)}' has label"):
            verify_shards(split_dir)
    with pytest.raises(
        ShardError,
        match=rf"{index.shard_paths[index.shard_id[3]].name}: sample '{index.key(3)}': "
        rf"label {manifest.num_classes + 2} outside",
    ):
        read_labels(split_dir, num_classes=manifest.num_classes)


def _tar_of_tars(train: Path, out: Path, *, evil: tarfile.TarInfo | None = None) -> None:
    """ILSVRC2012_img_train.tar: one <wnid>.tar per class (files in sorted order), optionally a bad member."""
    with tarfile.open(out, "w") as outer:
        for class_dir in sorted(train.iterdir()):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for image in sorted(class_dir.iterdir()):
                    inner.add(image.resolve(), arcname=image.name)
                if evil is not None:
                    inner.addfile(evil, io.BytesIO(b"x" * evil.size) if evil.isfile() else None)
            info = tarfile.TarInfo(f"{class_dir.name}.tar")
            info.size = buf.tell()
            outer.addfile(info, io.BytesIO(buf.getvalue()))


def test_train_tar_of_tars_read_in_place_gives_the_same_shards(ilsvrc: dict, converted: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for name in ("ILSVRC2012_devkit_t12", "synset_words.txt"):
        (root / name).symlink_to(ilsvrc["root"] / name)
    _tar_of_tars(ilsvrc["root"] / "train", root / "ILSVRC2012_img_train.tar")
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as val:  # flat, as distributed
        for image in sorted((ilsvrc["root"] / "val").iterdir()):
            val.add(image.resolve(), arcname=image.name)
    source = ImagenetSource(root=root)
    manifests = write_shards(source, tmp_path / "out", shard_size=4, seed=0)
    assert "train: tar" in source.description
    for split in ("train", "val"):  # same samples in the same order: byte-identical shards
        ours = read_manifest(converted / split)
        assert [s.sha256 for s in manifests[split].shards] == [s.sha256 for s in ours.shards]
    assert {Path(s.path).name for s in manifests["train"].skipped} == {"truncated.JPEG", "empty.JPEG"}
    assert all(".tar/" in s.path for s in manifests["train"].skipped)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device"])
def test_an_unsafe_tar_member_is_refused_by_name(ilsvrc: dict, tmp_path: Path, kind: str) -> None:
    evil = tarfile.TarInfo({"dotdot": "../../etc/evil.JPEG", "absolute": "/tmp/evil.JPEG"}.get(kind, "evil.JPEG"))
    if kind == "symlink":
        evil.type, evil.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "device":
        evil.type = tarfile.CHRTYPE
    else:
        evil.size = 10
    root = tmp_path / "root"
    (root / "train" / "n01440764").mkdir(parents=True)
    shutil.copyfile(
        next((ilsvrc["root"] / "train" / "n01440764").iterdir()).resolve(), root / "train" / "n01440764" / "a.JPEG"
    )
    _tar_of_tars(root / "train", tmp_path / "ILSVRC2012_img_train.tar", evil=evil)
    shutil.rmtree(root / "train")
    shutil.move(tmp_path / "ILSVRC2012_img_train.tar", root / "ILSVRC2012_img_train.tar")
    (root / "val").symlink_to(ilsvrc["root"] / "val")
    (root / "val.txt").symlink_to(ilsvrc["root"] / "val.txt")
    (root / "synset_words.txt").symlink_to(ilsvrc["root"] / "synset_words.txt")
    with pytest.raises(
        ValueError,
        match=rf"n01440764\.tar: member '{evil.name}' is (a symbolic link|a device|"
        r"an absolute or '\.\.' path)",
    ):
        ImagenetSource(root=root).splits()


def _run_cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "convnets.cli", "shards", "imagenet", *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _files(split_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(split_dir.iterdir())}


@pytest.mark.slow
def test_sigkilled_conversion_resumes_untouched_and_equals_a_one_worker_run(ilsvrc: dict, tmp_path: Path) -> None:
    """A FIFO stands in for one image: the 2-worker conversion blocks reading it, is SIGKILLed (pool and all),
    the image appears, and the rerun rewrites only unfinished shards; the result equals a --workers 1 run."""
    root = tmp_path / "root"
    shutil.copytree(ilsvrc["root"], root, symlinks=True)
    stand_in = root / "train" / "n02102040" / sorted(p.name for p in (root / "train" / "n02102040").iterdir())[1]
    image = stand_in.read_bytes()
    stand_in.unlink()
    os.mkfifo(stand_in)
    out = tmp_path / "out"
    proc = _run_cli(root, out, "--shard-size", "2", "--workers", "2", start_new_session=True)
    writer = None
    try:
        deadline = time.monotonic() + 120
        while writer is None and time.monotonic() < deadline and proc.poll() is None:
            try:  # succeeds once the converter has the FIFO open for reading: it is blocked mid-conversion
                writer = os.open(stand_in, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.05)
        assert writer is not None, f"the conversion never reached the stand-in image: {proc.communicate()[0]}"
        while len(list((out / "train").glob("*.done"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # let the other worker finish some shards
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if writer is not None:
            os.close(writer)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "train" / "manifest.json").exists()
    done = sorted((out / "train").glob("*.done"))
    assert len(done) >= 3
    finished = {
        p.with_suffix(".tar").name: (p.with_suffix(".tar").stat().st_ino, p.with_suffix(".tar").stat().st_mtime_ns)
        for p in done
    }
    stand_in.unlink()
    stand_in.write_bytes(image)
    resumed = _run_cli(root, out, "--shard-size", "2", "--workers", "2")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert f"resuming, {len(done)} of" in log
    for name, (inode, mtime) in finished.items():
        stat = (out / "train" / name).stat()
        assert (stat.st_ino, stat.st_mtime_ns) == (inode, mtime), f"{name} was rewritten"
    write_shards(ImagenetSource(root=root), tmp_path / "once", shard_size=2, seed=0, workers=1)
    for split in ("train", "val"):
        assert _files(out / split) == _files(tmp_path / "once" / split)
