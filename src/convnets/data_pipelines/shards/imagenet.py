"""ILSVRC-2012 as a shard Source: `convnets shards imagenet ROOT OUT`.

ROOT holds train as train/<wnid>/*.JPEG or as ILSVRC2012_img_train.tar (1,000 per-class tars, read in
place, see tar_members), and val as a flat folder val/ILSVRC2012_val_<8 digits>.JPEG (or val/<wnid>/...
already sorted into classes) or as ILSVRC2012_img_val.tar, labelled by any format of imagenet_labels.

Class index = the wnid's position among the sorted train wnids (torchvision's and Caffe's convention);
`class_names` (manifest) from synset_words.txt or the like when found. Every image goes through
sources.encode_image with rgb_jpeg: plain RGB JPEGs keep their bytes; CMYK, PNG-named-.JPEG, grayscale and
EXIF-rotated files become upright RGB JPEGs; empty, truncated or corrupt files are skipped and listed in
the manifest (`skipped`), never silently and without stopping the conversion. Images are never upscaled
(the pipeline's resize does that); the manifest counts those below 224 px (`small_images`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from convnets.data_pipelines.shards.imagenet_labels import VAL_NAME, WNID, ValLabels, find_synsets, find_val_labels
from convnets.data_pipelines.shards.sources import (
    Encoding,
    Sample,
    UnreadableImage,
    check_reencode,
    encode_image,
    list_images,
    read_image_file,
)
from convnets.data_pipelines.shards.tar_members import TarMember, list_members, read_member

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"


def read_tar_image(member: TarMember, *, encoding: Encoding) -> tuple[bytes, str]:
    try:
        data = read_member(member)
    except (OSError, ValueError) as exc:
        raise UnreadableImage(f"{member.where}: unreadable ({exc})") from None
    return encode_image(data, name=member.where, encoding=encoding)


@dataclass(frozen=True)
class _Image:
    """One source image: a file, or a member of a tar read in place."""

    where: str  # for messages and the manifest
    name: str  # its base name (the val number is in it)
    read: partial


def _file_images(paths: list[Path], encoding: Encoding) -> list[_Image]:
    return [_Image(str(p), p.name, partial(read_image_file, p, encoding=encoding)) for p in paths]


def _tar_images(members: list[TarMember], encoding: Encoding) -> list[_Image]:
    return [_Image(m.where, m.name.rsplit("/", 1)[-1], partial(read_tar_image, m, encoding=encoding)) for m in members]


def _train_classes(root: Path) -> tuple[str, list[str]]:
    """("dirs" or "tar", sorted wnids) of the train set, from folder or inner-tar names (no image listed yet)."""
    if (root / "train").is_dir():
        names = sorted(p.name for p in (root / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
        kind, where = "dirs", root / "train"
    elif (root / TRAIN_TAR).is_file():
        names = sorted(m.name.removesuffix(".tar") for m in list_members(root / TRAIN_TAR))
        kind, where = "tar", root / TRAIN_TAR
    else:
        raise ValueError(
            f"{root}: no train/ folder and no {TRAIN_TAR}; expected ROOT/train/<wnid>/*.JPEG "
            f"or the {TRAIN_TAR} from image-net.org"
        )
    bad = [n for n in names if not WNID.fullmatch(n)]
    if bad or not names:
        raise ValueError(
            f"{where}: {'entry ' + repr(bad[0]) + ' is not' if bad else 'holds no'} "
            "per-class WordNet id (nXXXXXXXX) folders or tars"
        )
    return kind, names


def _train_images(root: Path, kind: str, wnids: list[str], encoding: Encoding) -> dict[str, list[_Image]]:
    if kind == "dirs":
        return {w: _file_images(list_images(root / "train" / w), encoding) for w in wnids}
    images = {}
    for inner in list_members(root / TRAIN_TAR):
        wnid = inner.name.removesuffix(".tar")
        images[wnid] = _tar_images(
            list_members(root / TRAIN_TAR, start=inner.offset, size=inner.size, prefix=inner.name + "/"), encoding
        )
    return images


def _val_in_folders(root: Path) -> bool:
    """True for a val/ already sorted into <wnid>/ folders (valprep.sh's layout): labels from the folders."""
    val = root / "val"
    return val.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in val.iterdir())


def _val_images(root: Path, encoding: Encoding) -> tuple[list[_Image], dict[str, str]]:
    """(flat val images, {} ) or, for a val/ already sorted into <wnid>/ folders, (images, where -> wnid)."""
    val = root / "val"
    if val.is_dir():
        subdirs = sorted(p for p in val.iterdir() if p.is_dir() and not p.name.startswith("."))
        if subdirs:
            images, by_folder = [], {}
            for sub in subdirs:
                for image in _file_images(list_images(sub), encoding):
                    images.append(image)
                    by_folder[image.where] = sub.name
            return images, by_folder
        return _file_images(list_images(val), encoding), {}
    if (root / VAL_TAR).is_file():
        return _tar_images(list_members(root / VAL_TAR), encoding), {}
    raise ValueError(f"{root}: no val/ folder and no {VAL_TAR}; expected ROOT/val/ILSVRC2012_val_<8 digits>.JPEG")


def _val_wnid(image: _Image, labels: ValLabels) -> str:
    match = VAL_NAME.fullmatch(image.name)
    if match is None:
        raise ValueError(f"{image.where}: not named ILSVRC2012_val_<8 digits>.JPEG, so no val label can name it")
    number = int(match.group(1))
    if number not in labels.by_number:
        raise ValueError(f"{image.where}: no label for val image {number} in the {labels.origin} labels")
    return labels.by_number[number]


@dataclass(kw_only=True)
class ImagenetSource:
    """ILSVRC-2012 train + val from ROOT (see the module docstring); keyword-only like the other sources."""

    root: Path
    val_labels: Path | None = None  # a label file in any of the three formats; default: found in ROOT
    synsets: Path | None = None  # a synset list (names; needed by val.txt); default: found in ROOT
    resize: int | None = None  # shorter side brought down to N px on write
    quality: int = 90  # JPEG quality of re-encoded images
    flip_ok: bool = field(init=False, default=True)
    skip_unreadable: bool = field(init=False, default=True)  # a corrupt file is reported, not fatal
    classes: list[str] = field(init=False)
    class_names: list[str] = field(init=False)
    description: str = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        check_reencode(resize=self.resize, quality=self.quality)
        self._train_kind, self.classes = _train_classes(self.root)
        self._synsets, self._synsets_path = find_synsets(self.root, self.synsets and Path(self.synsets))
        if self._synsets is not None:
            missing = [w for w in self.classes if w not in self._synsets]
            if missing:
                raise ValueError(
                    f"{self._synsets_path}: lacks train class {missing[0]} ({len(missing)} missing); "
                    "a synset list of another dataset?"
                )
        self.class_names = [(self._synsets or {}).get(w) or w for w in self.classes]
        self._encoding = Encoding(resize=self.resize, quality=self.quality, rgb_jpeg=True)
        self._labels = (
            None
            if _val_in_folders(self.root)
            else find_val_labels(
                self.root,
                self.val_labels and Path(self.val_labels),
                synsets=self._synsets,
                synsets_path=self._synsets_path,
            )
        )
        resized = f", shorter side <= {self.resize} px" if self.resize else ""
        self.description = (
            f"imagenet {self.root.resolve()} (train: {self._train_kind}, val labels: "
            f"{self._labels.origin if self._labels else 'val/<wnid>/ folders'}{resized}, "
            f"re-encoded JPEG q{self.quality})"
        )

    def splits(self) -> dict[str, list[Sample]]:
        index = {wnid: i for i, wnid in enumerate(self.classes)}
        train = [
            Sample(key=image.where, label=index[wnid], read=image.read)
            for wnid, images in _train_images(self.root, self._train_kind, self.classes, self._encoding).items()
            for image in images
        ]
        images, by_folder = _val_images(self.root, self._encoding)
        val = []
        for image in images:
            wnid = by_folder.get(image.where) or _val_wnid(image, self._labels)
            if wnid not in index:
                raise ValueError(f"{image.where}: val class {wnid} is not among the {len(index)} train classes")
            val.append(Sample(key=image.where, label=index[wnid], read=image.read))
        return {"train": train, "val": val}
