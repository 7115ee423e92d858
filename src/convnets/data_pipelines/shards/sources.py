"""Labelled image sources that `shard_writer.write_shards` turns into webdataset shards.

A source has `classes` (names in label order), `flip_ok` (False for digits: a mirrored 2 is not a 2),
`description` (one line for the manifest), optionally `class_names` (human-readable, for the manifest)
and `skip_unreadable`, and `splits()`: split name -> list of `Sample`. Samples are
lazy (`read()` loads and encodes one image) so that a million-file tree can be listed and shuffled
without holding the images in memory (ImageNet train is about 140 GB of JPEG).

Three sources here: an ImageFolder tree, the MNIST idx files and scikit-learn's bundled 8x8 digits
(ILSVRC-2012 is in imagenet.py). Every problem (missing file, bad header, undecodable image) raises
ValueError naming the file; an undecodable image raises its subclass UnreadableImage, which the writer
skips and reports for sources with `skip_unreadable = True` (ImageNet) and fails on otherwise.
Image bytes go through one function, encode_image: original bytes when plain, else re-encoded.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps

from convnets.errors import ConvnetsInputError

MNIST_IMAGES_MAGIC = 2051  # idx3: unsigned bytes, 3 dimensions
MNIST_LABELS_MAGIC = 2049  # idx1: unsigned bytes, 1 dimension


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One labelled image; `read()` returns (encoded bytes, "jpg" or "png")."""

    key: str  # where it came from, for error messages: a path, or "t10k-images-idx3-ubyte.gz[17]"
    label: int
    read: Callable[[], tuple[bytes, str]] = field(repr=False, compare=False)


class Source(Protocol):
    classes: list[str]
    flip_ok: bool
    description: str

    def splits(self) -> dict[str, list[Sample]]: ...


def stratified_split(labels: np.ndarray, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices), each class split round(n * val_fraction) to val, seeded."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(members) * val_fraction))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def encode_gray_png(pixels: np.ndarray) -> bytes:
    """A 2-D uint8 array as grayscale PNG bytes (deterministic: same pixels, same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


class UnreadableImage(ConvnetsInputError):
    """A source file no decoder reads (empty, truncated, corrupt, not an image); the message names it and why."""


@dataclass(frozen=True, kw_only=True)
class Encoding:
    """How source images are stored in the shards."""

    resize: int | None = None  # shorter side brought down to N px (never up) and re-encoded as JPEG
    quality: int = 90  # JPEG quality of every re-encoded image
    rgb_jpeg: bool = False  # True (ImageNet): every image a 3-channel JPEG; False keeps grayscale JPEGs and PNGs


_JPEG_FORMATS = ("JPEG", "MPO")  # PIL calls a camera's multi-picture JPEG "MPO"; its first image is a plain JPEG


def _orientation(image: Image.Image) -> int:
    return int(image.getexif().get(0x0112, 1) or 1)  # EXIF Orientation; 1 = as stored


def _plain(image: Image.Image, encoding: Encoding) -> bool:
    """True when the original bytes can be stored as they are: a format and mode every decoder reads the
    same way, no rotation to apply, no resize to do. Header fields only: no pixel is decoded."""
    if encoding.resize is not None and min(image.size) > encoding.resize:
        return False
    if image.format in _JPEG_FORMATS:
        modes = ("RGB",) if encoding.rgb_jpeg else ("RGB", "L")  # CMYK/YCCK JPEGs are re-encoded
        return image.mode in modes and _orientation(image) == 1
    return image.format == "PNG" and not (encoding.rgb_jpeg or encoding.resize)


def _reencode(image: Image.Image, encoding: Encoding) -> tuple[bytes, str]:
    """Decoded pixels, upright, as JPEG (quality Q) or, for other formats without rgb_jpeg/resize, as PNG."""
    as_jpeg = encoding.rgb_jpeg or encoding.resize is not None or image.format in _JPEG_FORMATS
    image = ImageOps.exif_transpose(image)
    gray = image.mode in ("1", "L", "LA", "I", "I;16") and not encoding.rgb_jpeg
    image = image.convert("L" if gray else "RGB")
    if encoding.resize is not None and min(image.size) > encoding.resize:
        # FFCV's trick: decoding a 256-px JPEG costs a fraction of the original's, every epoch.
        scale = encoding.resize / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if as_jpeg:
        image.save(buf, format="JPEG", quality=encoding.quality)
        return buf.getvalue(), "jpg"
    image.save(buf, format="PNG")
    return buf.getvalue(), "png"


def encode_image(data: bytes, *, name: str, encoding: Encoding = Encoding()) -> tuple[bytes, str]:
    """(bytes, "jpg" or "png") to store for one source file: the original bytes when plain (the common case,
    found from the header alone), else decoded and re-encoded so no training decoder meets the quirk:
    CMYK JPEG, a PNG named .JPEG, grayscale (with rgb_jpeg), EXIF rotation, other formats.

    The format is sniffed from the bytes, not the name (ILSVRC-2012 train has a PNG and CMYK files named .JPEG).
    A JPEG that does not end in its EOI marker is decoded in full, so truncation is caught here, on write.
    Raises UnreadableImage naming `name` and the reason.
    """
    if not data:
        raise UnreadableImage(f"{name}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            plain = _plain(image, encoding)
            if plain and image.format in _JPEG_FORMATS and data.rstrip(b"\0").endswith(b"\xff\xd9"):
                return data, "jpg"
            if plain and image.format == "PNG":
                image.verify()  # chunk structure and CRCs: no full decode
                return data, "png"
            image.load()  # full decode: raises on a truncated or corrupt file
            if plain:  # a JPEG with bytes after its EOI marker that decodes fine: keep it
                return data, "jpg"
            return _reencode(image, encoding)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{name}: not a decodable image ({type(exc).__name__}: {exc})") from None


def read_image_file(path: Path, *, encoding: Encoding = Encoding()) -> tuple[bytes, str]:
    """One image file as encode_image stores it (UnreadableImage names the file)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableImage(f"{path}: unreadable ({exc.strerror or exc})") from None
    return encode_image(data, name=str(path), encoding=encoding)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def list_images(class_dir: Path) -> list[Path]:
    """Every non-hidden file under class_dir (recursively), sorted so listings are reproducible."""
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        files.extend(Path(dirpath) / f for f in filenames if not _is_hidden(f))
    return sorted(files)


def _class_dirs(tree: Path) -> dict[str, Path]:
    """Class name -> folder for <tree>/<class>/; a stray file at the top level is an error."""
    if not tree.is_dir():
        raise ValueError(f"{tree}: not a directory (expected an ImageFolder tree <root>/<class>/<image>)")
    dirs = {}
    for entry in sorted(tree.iterdir()):
        if _is_hidden(entry.name):
            continue
        if not entry.is_dir():
            raise ValueError(f"{entry}: a file directly under {tree}; expected <root>/<class>/<image>")
        dirs[entry.name] = entry
    if not dirs:
        raise ValueError(f"{tree}: no class folders (expected <root>/<class>/<image>)")
    return dirs


def _tree_samples(
    tree: Path, class_index: dict[str, int], *, require_images: bool, reader=read_image_file
) -> list[Sample]:
    samples = []
    for name, class_dir in _class_dirs(tree).items():
        if name not in class_index:
            raise ValueError(
                f"{class_dir}: class {name!r} is not among the train classes; add it to train/ or remove it"
            )
        images = list_images(class_dir)
        if require_images and not images:
            raise ValueError(f"{class_dir}: class folder has no images")
        samples.extend(Sample(key=str(p), label=class_index[name], read=partial(reader, p)) for p in images)
    return samples


def check_reencode(*, resize: int | None, quality: int) -> None:
    """The --resize/--quality pair of every source that can re-encode on write."""
    if resize is not None and resize < 8:
        raise ValueError(f"--resize {resize}: the shorter side must be at least 8 px")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality {quality}: JPEG quality must be 1..100")


@dataclass(kw_only=True)
class ImageFolderSource:
    """<root>/<class>/<image>, or <root>/train/<class>/... plus <root>/val/<class>/... when both exist.

    Without train/ and val/ the one tree is split stratified by `val_fraction` with `seed`.
    """

    root: Path
    val_fraction: float = 0.1
    seed: int = 0
    flip_ok: bool = True
    resize: int | None = None  # shorter side in px, re-encoded as JPEG; None keeps the original bytes
    quality: int = 90
    classes: list[str] = field(init=False)
    description: str = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        check_reencode(resize=self.resize, quality=self.quality)
        has_train, has_val = (self.root / "train").is_dir(), (self.root / "val").is_dir()
        if has_train != has_val:
            missing = "val" if has_train else "train"
            present = "train" if has_train else "val"
            raise ValueError(
                f"{self.root}: has {present}/ but no {missing}/; provide both or a plain <root>/<class>/ tree"
            )
        self._presplit = has_train
        self.classes = sorted(_class_dirs(self.root / "train" if has_train else self.root))
        how = "train/ + val/" if has_train else f"val_fraction={self.val_fraction}, seed={self.seed}"
        resized = f", shorter side <= {self.resize} px, JPEG q{self.quality}" if self.resize else ""
        self.description = f"imagefolder {self.root.resolve()} ({how}{resized})"

    def splits(self) -> dict[str, list[Sample]]:
        class_index = {name: i for i, name in enumerate(self.classes)}
        reader = partial(read_image_file, encoding=Encoding(resize=self.resize, quality=self.quality))
        if self._presplit:
            train = _tree_samples(self.root / "train", class_index, require_images=True, reader=reader)
            return {
                "train": train,
                "val": _tree_samples(self.root / "val", class_index, require_images=False, reader=reader),
            }
        samples = _tree_samples(self.root, class_index, require_images=True, reader=reader)
        labels = np.array([s.label for s in samples])
        train_idx, val_idx = stratified_split(labels, val_fraction=self.val_fraction, seed=self.seed)
        return {"train": [samples[i] for i in train_idx], "val": [samples[i] for i in val_idx]}


def _read_idx_file(path: Path, *, magic: int, header: str) -> tuple[tuple[int, ...], np.ndarray]:
    """(dims, flat uint8 payload) of an idx file (gzip or plain), validating magic and length."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable or truncated ({type(exc).__name__}: {exc})") from None
    size = struct.calcsize(header)
    if len(data) < size:
        raise ValueError(f"{path}: truncated header ({len(data)} bytes, expected at least {size})")
    found, *dims = struct.unpack(header, data[:size])
    if found != magic:
        raise ValueError(f"{path}: bad magic {found} (expected {magic}); not an MNIST idx file of this kind")
    expected = size + int(np.prod(dims))
    if len(data) != expected:
        raise ValueError(
            f"{path}: {len(data)} bytes but the header {tuple(dims)} needs {expected}; truncated or corrupt"
        )
    return tuple(dims), np.frombuffer(data, dtype=np.uint8, offset=size)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_mnist_set(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray, Path] | None:
    """(images N x 28 x 28 uint8, labels N uint8, images path) for prefix "train" or "t10k"; None if absent."""
    images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    if images_path is None and labels_path is None:
        return None
    if images_path is None or labels_path is None:
        raise ValueError(f"{root}: has {(images_path or labels_path).name} but not its {prefix} images/labels partner")
    (n, rows, cols), pixels = _read_idx_file(images_path, magic=MNIST_IMAGES_MAGIC, header=">IIII")
    (n_labels,), labels = _read_idx_file(labels_path, magic=MNIST_LABELS_MAGIC, header=">II")
    if n != n_labels:
        raise ValueError(f"{labels_path}: {n_labels} labels but {images_path.name} has {n} images")
    if (rows, cols) != (28, 28):
        raise ValueError(f"{images_path}: images are {rows}x{cols}, expected 28x28")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0-9")
    return pixels.reshape(n, rows, cols), labels, images_path


def _array_samples(images: np.ndarray, labels: np.ndarray, origin: str, indices: np.ndarray) -> list[Sample]:
    def encode(i: int) -> tuple[bytes, str]:
        return encode_gray_png(images[i]), "png"

    return [Sample(key=f"{origin}[{i}]", label=int(labels[i]), read=partial(encode, int(i))) for i in indices]


@dataclass(kw_only=True)
class MnistSource:
    """MNIST idx files in `root`; with only the t10k set present, its first `n_train` are train, the rest val."""

    root: Path
    n_train: int = 8000
    flip_ok: bool = field(init=False, default=False)  # a mirrored digit is a different glyph
    classes: list[str] = field(init=False, default_factory=lambda: [str(d) for d in range(10)])
    description: str = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if _find_idx(self.root, "train-images-idx3-ubyte") is not None:
            how = "train: train-*, val: t10k-*"
        else:
            how = f"t10k only: first {self.n_train} train, the rest val"
        self.description = f"mnist {self.root.resolve()} ({how})"

    def splits(self) -> dict[str, list[Sample]]:
        test = load_mnist_set(self.root, "t10k")
        if test is None:
            raise ValueError(f"{self.root}: no t10k-images-idx3-ubyte(.gz) / t10k-labels-idx1-ubyte(.gz)")
        images, labels, path = test
        train = load_mnist_set(self.root, "train")
        if train is not None:
            return {
                "train": _array_samples(train[0], train[1], train[2].name, np.arange(len(train[1]))),
                "val": _array_samples(images, labels, path.name, np.arange(len(labels))),
            }
        if not 0 < self.n_train < len(labels):
            raise ValueError(
                f"n_train={self.n_train} must be in [1, {len(labels) - 1}] for {path} ({len(labels)} images)"
            )
        return {
            "train": _array_samples(images, labels, path.name, np.arange(self.n_train)),
            "val": _array_samples(images, labels, path.name, np.arange(self.n_train, len(labels))),
        }


@dataclass(kw_only=True)
class DigitsSource:
    """scikit-learn's bundled digits: 1,797 real 8x8 scans, values 0..16, stored as 8x8 PNG scaled to 0..255."""

    val_fraction: float = 0.2
    seed: int = 0
    flip_ok: bool = field(init=False, default=False)
    classes: list[str] = field(init=False, default_factory=lambda: [str(d) for d in range(10)])
    description: str = field(init=False)

    def __post_init__(self) -> None:
        self.description = f"sklearn digits (1797 8x8 images, val_fraction={self.val_fraction}, seed={self.seed})"

    def splits(self) -> dict[str, list[Sample]]:
        from sklearn.datasets import load_digits  # imported here: sklearn costs ~1 s to import

        digits = load_digits()
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        labels = digits.target.astype(np.int64)
        train_idx, val_idx = stratified_split(labels, val_fraction=self.val_fraction, seed=self.seed)
        return {
            "train": _array_samples(images, labels, "sklearn-digits", train_idx),
            "val": _array_samples(images, labels, "sklearn-digits", val_idx),
        }
