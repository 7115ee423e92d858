"""ILSVRC-2012 validation labels in their three distributed formats, and the synset (class) lists.

  devkit   ILSVRC2012_validation_ground_truth.txt: line n = ILSVRC2012_ID (1-based) of val image n, where
           the ids are meta.mat's order (by WordNet hierarchy), NOT sorted-wnid order; meta.mat maps id -> wnid
  kaggle   LOC_val_solution.csv: "ImageId,PredictionString", the first token of PredictionString is the wnid
  caffe    val.txt: "ILSVRC2012_val_00000001.JPEG 65", a 0-based index into the SORTED wnid list, which
           comes from a synset list (synset_words.txt, synsets.txt or LOC_synset_mapping.txt)

Each reader returns {val image number: wnid}; the class index is then the wnid's position among the
sorted train wnids (torchvision's convention), computed in one place (imagenet.py).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
CAFFE_VAL = "val.txt"
SYNSET_LISTS = ("synset_words.txt", "LOC_synset_mapping.txt", "synsets.txt")  # names: first one found wins
WNID = re.compile(r"n\d{8}")
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.(?:JPEG|jpeg|jpg|JPG)")


@dataclass(frozen=True)
class ValLabels:
    by_number: dict[int, str]  # val image number (the 8 digits of its name) -> wnid
    origin: str  # "devkit <file> + <meta.mat>" etc., for the manifest's source line


def search_dirs(root: Path) -> list[Path]:
    """Where label files are looked for: ROOT, then the devkit folders in it."""
    dirs = [
        root,
        root / "ILSVRC2012_devkit_t12" / "data",
        root / "ILSVRC2012_devkit_t12",
        root / "devkit" / "data",
        root / "devkit",
    ]
    dirs += sorted(p for p in root.glob("*devkit*/data") if p not in dirs)
    dirs += sorted(p for p in root.glob("*devkit*") if p not in dirs)
    return [d for d in dirs if d.is_dir()]


def find_file(dirs: list[Path], name: str) -> Path | None:
    return next((d / name for d in dirs if (d / name).is_file()), None)


def read_synset_list(path: Path) -> dict[str, str]:
    """wnid -> human-readable name ("" if the list has none), in file order, from "<wnid> <names>" lines."""
    synsets: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not WNID.fullmatch(wnid):
            raise ValueError(f"{path}: line {number} does not start with a WordNet id (nXXXXXXXX): {line[:80]!r}")
        if wnid in synsets:
            raise ValueError(f"{path}: line {number} repeats {wnid}")
        synsets[wnid] = name.strip()
    if not synsets:
        raise ValueError(f"{path}: no synsets in it")
    return synsets


def read_meta_mat(path: Path) -> dict[int, tuple[str, str]]:
    """ILSVRC2012_ID -> (wnid, words) for the leaf synsets of the devkit's meta.mat (1,000 in ILSVRC-2012)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ValueError(
            f"{path}: reading the devkit's meta.mat needs scipy (pip install scipy); or label val "
            f"with {CAFFE_VAL} or {KAGGLE_SOLUTION} (--val-labels)"
        ) from None
    try:
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        ids, wnids, words = synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["words"]
        leaf = synsets["num_children"] if "num_children" in synsets.dtype.names else [0] * len(ids)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not the devkit's meta.mat (a 'synsets' struct with ILSVRC2012_ID, WNID, words; "
            f"{type(exc).__name__}: {exc})"
        ) from None
    return {int(i): (str(w), str(name)) for i, w, name, children in zip(ids, wnids, words, leaf) if int(children) == 0}


def _devkit(ground_truth: Path, meta: Path | None) -> ValLabels:
    if meta is None:
        raise ValueError(
            f"{ground_truth}: its ILSVRC ids need the devkit's {META} (ids are in meta.mat order, not "
            f"sorted-wnid order); put it next to the ground truth or in ROOT"
        )
    id_to_wnid = {i: wnid for i, (wnid, _) in read_meta_mat(meta).items()}
    by_number = {}
    for number, line in enumerate(ground_truth.read_text(encoding="utf-8").split(), start=1):
        if not line.isdigit() or int(line) not in id_to_wnid:
            raise ValueError(
                f"{ground_truth}: line {number} is {line!r}, not an ILSVRC2012_ID of a leaf class in {meta}"
            )
        by_number[number] = id_to_wnid[int(line)]
    return ValLabels(by_number, f"devkit {ground_truth.name} + {META}")


def _kaggle(solution: Path) -> ValLabels:
    by_number = {}
    with open(solution, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.DictReader(f), start=2):
            match = re.fullmatch(r"ILSVRC2012_val_(\d{8})", (row.get("ImageId") or "").strip())
            wnid = (row.get("PredictionString") or "").split()[:1]
            if match is None or not wnid or not WNID.fullmatch(wnid[0]):
                raise ValueError(f"{solution}: line {number} is not 'ILSVRC2012_val_<8 digits>,<wnid> ...': {row}")
            by_number[int(match.group(1))] = wnid[0]
    return ValLabels(by_number, f"kaggle {solution.name}")


def _caffe(val_txt: Path, synsets: dict[str, str] | None, synsets_path: Path | None) -> ValLabels:
    if synsets is None:
        raise ValueError(
            f"{val_txt}: its 0-based indices need the synset list (one of {', '.join(SYNSET_LISTS)} "
            "in ROOT, or --synsets FILE)"
        )
    ordered = sorted(synsets)  # Caffe's index is into the sorted wnids (synset_words.txt is already sorted)
    by_number = {}
    for number, line in enumerate(val_txt.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        match = VAL_NAME.fullmatch(parts[0]) if len(parts) == 2 else None
        if match is None or not parts[1].isdigit() or int(parts[1]) >= len(ordered):
            raise ValueError(
                f"{val_txt}: line {number} is not 'ILSVRC2012_val_<8 digits>.JPEG <index < "
                f"{len(ordered)}>': {line[:80]!r}"
            )
        by_number[int(match.group(1))] = ordered[int(parts[1])]
    return ValLabels(by_number, f"caffe {val_txt.name} + {synsets_path.name if synsets_path else 'synsets'}")


def find_synsets(root: Path, given: Path | None) -> tuple[dict[str, str] | None, Path | None]:
    """(wnid -> name, its file) from --synsets or the first standard list found in ROOT; (None, None) if none."""
    path = given or next((p for name in SYNSET_LISTS if (p := find_file(search_dirs(root), name))), None)
    if path is None:
        return None, None
    if not Path(path).is_file():
        raise ValueError(f"--synsets {path}: no such file")
    return read_synset_list(Path(path)), Path(path)


def find_val_labels(
    root: Path, given: Path | None, *, synsets: dict[str, str] | None, synsets_path: Path | None
) -> ValLabels:
    """The val labels from --val-labels FILE (format from its name) or the first standard file in ROOT,
    in the order devkit, Kaggle, Caffe."""
    dirs = search_dirs(root)
    if given is not None:
        if not given.is_file():
            raise ValueError(f"--val-labels {given}: no such file")
        dirs = [given.parent] + dirs
        if given.suffix == ".csv":
            return _kaggle(given)
        if "ground_truth" in given.name:
            return _devkit(given, find_file(dirs, META))
        return _caffe(given, synsets, synsets_path)
    if (ground_truth := find_file(dirs, GROUND_TRUTH)) is not None:
        return _devkit(ground_truth, find_file(dirs, META))
    if (solution := find_file(dirs, KAGGLE_SOLUTION)) is not None:
        return _kaggle(solution)
    if (val_txt := find_file(dirs, CAFFE_VAL)) is not None:
        return _caffe(val_txt, synsets, synsets_path)
    raise ValueError(
        f"{root}: no val labels found (looked for {GROUND_TRUTH} + {META}, {KAGGLE_SOLUTION}, "
        f"{CAFFE_VAL} in {', '.join(str(d) for d in dirs)}); name one with --val-labels FILE"
    )
