"""Dataset adapters: turn a dataset root into sorted video records (path, label, split).

    from advise_cache.datasets import load_dataset
    index = load_dataset("ucf101", "/data/ucf101", split=1)
    train = index.select("train")

Each adapter reads a dataset as its users download it: the official archives unpacked,
and the common toolkit re-packagings (mmaction2's `videos/` + `annotations/`,
torchvision's video folder + annotation folder, CVDF's Kinetics). docs/DATASETS.md shows
every layout. Annotation files kept elsewhere are found with `annotations=DIR`. Nothing
here decodes a video: adapters only look at paths. This module is the entry point and holds
the user layouts (`folder`, `manifest`, the synthetic families); the official layouts are in
official_datasets.py, what every adapter shares in dataset_files.py.

Videos named by the split files but absent on disk are listed in `DatasetIndex.missing`
and logged as a warning, since partial downloads are common; a root where none of them
exists is a `LayoutError` that says where it looked and what it found nearby.

Splits are "train" and "test", where "test" is always the set a paper evaluates on: the
SSv2 validation set and the Kinetics val.csv (validate.csv) are returned as "test". The
unlabelled test sets (Kinetics test.csv, SSv2 test.json) are indexed only on request
(`holdout=True`), as split "holdout". The `folder` and `manifest` layouts keep whatever
split names the user gave ("val" included).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from advise_cache.errors import LayoutError

from .dataset_files import (
    DOCS,
    SPLIT_FOLDERS,
    VIDEO_EXTENSIONS,
    DatasetIndex,
    Request,
    VideoRecord,
    check_split,
    finish_index,
    in_ignored,
    is_false_video,
    is_int,
    is_video,
    read_csv,
    subfolders,
    unreadable_folders,
)
from .official_datasets import (
    load_diving48,
    load_hmdb51,
    load_kinetics400,
    load_ssv2,
    load_ucf101,
)

log = logging.getLogger(__name__)

SYNTHETIC_MARKER = "SYNTHETIC.json"
DATA_ENV = "ADVISE_DATA"  # parent folder of the default dataset roots
_SYNTHETIC_FAMILIES = {
    "synthetic": "both",
    "synthetic-appearance": "appearance",
    "synthetic-temporal": "temporal",
    "synthetic-motion": "motion",
    "synthetic-shifted": "shifted",
}


def default_root(dataset: str) -> Path:
    """The root read without `--root`: $ADVISE_DATA/<dataset>, else data/<dataset>."""
    return Path(os.environ.get(DATA_ENV) or "data") / dataset.lower()


def load_dataset(
    name: str,
    root: Path | str | None = None,
    split: int = 1,
    annotations: Path | str | None = None,
    holdout: bool = False,
) -> DatasetIndex:
    """Index the dataset `name` (one of `DATASETS`) found at `root` (default: `default_root`).

    `split` picks one of the official train/test splits of UCF101 and HMDB51 (1, 2 or 3);
    the other datasets have a single split and accept only 1. `annotations` is a folder
    holding the split/label files when they are not inside the root. `holdout` adds the
    unlabelled test set of Kinetics-400 and SSv2 as split "holdout".
    """
    adapter = _ADAPTERS.get(name.lower())
    if adapter is None:
        raise LayoutError(f"unknown dataset {name!r}; supported: {', '.join(DATASETS)}")
    dataset = name.lower()
    root = Path(root if root is not None else default_root(dataset)).expanduser().absolute()
    if dataset not in _SYNTHETIC_FAMILIES and not root.exists():
        raise LayoutError(
            f"{dataset}: root {root} does not exist; point --root at the dataset (default: "
            f"${DATA_ENV}/{dataset}, or data/{dataset} when {DATA_ENV} is unset; layouts in {DOCS})"
        )
    ann = None
    if annotations is not None:
        ann = Path(annotations).expanduser().absolute()
        if dataset not in _USES_ANNOTATIONS:
            raise LayoutError(f"{dataset}: takes no --annotations (its labels come from {root})")
        if not ann.is_dir():
            raise LayoutError(f"{dataset}: --annotations {ann} is not a folder")
    if holdout and dataset not in _HAS_HOLDOUT:
        raise LayoutError(f"{dataset}: has no unlabelled test set; --holdout applies to {', '.join(_HAS_HOLDOUT)}")
    index = adapter(Request(dataset, root, split, ann, holdout))
    log.info(
        "%s: %d videos, %d classes, %d missing",
        dataset,
        len(index.records),
        len(index.classes),
        len(index.missing),
    )
    return index


# --- user layouts ------------------------------------------------------------------------


def _load_folder(req: Request) -> DatasetIndex:
    """root/<class>/<video> (all "train"), or root/<split>/<class>/<video>."""
    check_split(req, allowed=(1,))
    root = req.root
    expected = f"{root}/<class>/<video> or {root}/<train|val|test>/<class>/<video>"
    subdirs = subfolders(root) if root.is_dir() else []
    if not subdirs:
        req.fail(f"expected {expected}; {root} has no subfolders")
    splits = [d.name for d in subdirs if d.name in SPLIT_FOLDERS]
    others = [d.name for d in subdirs if d.name not in SPLIT_FOLDERS]
    if splits and others:
        # Either the others are classes beside split folders or the split names are
        # classes: guessing leaks one split into another.
        req.fail(
            f"cannot tell splits from classes in {root}: it holds the split folders "
            f"{', '.join(splits)} and the other folders {', '.join(others)}; expected only "
            f"{'/'.join(SPLIT_FOLDERS)} (move the others away) or only class folders, or use "
            "a manifest"
        )
    split_dirs = [(d.name, d) for d in subdirs] if splits else [("train", root)]

    class_dirs = [(part, d) for part, folder in split_dirs for d in subfolders(folder)]
    classes = sorted({d.name for _, d in class_dirs})
    lookup = {c: i for i, c in enumerate(classes)}
    candidates = []
    for part, class_dir in class_dirs:
        for path in sorted(class_dir.rglob("*")):
            if (is_video(path) or is_false_video(path)) and not in_ignored(path, class_dir):
                name = path.relative_to(root).with_suffix("").as_posix()
                candidates.append(VideoRecord(name, path, lookup[class_dir.name], part))
        # A folder that cannot be read would hide its videos: it becomes a record whose probe
        # fails with the reason, so the store and the summary name it.
        for folder in unreadable_folders(class_dir):
            name = folder.relative_to(root).as_posix()
            log.warning("%s: cannot read the folder %s; recorded as failed", req.dataset, folder)
            candidates.append(VideoRecord(name, folder, lookup[class_dir.name], part))
    for _, folder in split_dirs:
        loose = [p for p in folder.iterdir() if is_video(p)]
        if loose:
            log.warning(
                "%s: ignoring %d videos outside a class folder in %s",
                req.dataset,
                len(loose),
                folder,
            )
    kinds = ", ".join(VIDEO_EXTENSIONS)
    return finish_index(req, classes, candidates, f"video files ({kinds}) in {expected}", [])


def _load_manifest(req: Request) -> DatasetIndex:
    """A CSV `path,label,split`: label is a class name (empty: -1), split defaults to train.

    Classes are sorted by name, or by value when every label is an integer ("2" before
    "10"), so integer labels 0..N-1 keep their own numbers."""
    check_split(req, allowed=(1,))
    manifest = req.root / "manifest.csv" if req.root.is_dir() else req.root
    rows = read_csv(req, manifest, ("path", "label", "split"), ("path",))
    rows = [row for row in rows if (row.get("path") or "").strip()]
    names = {(row.get("label") or "").strip() for row in rows} - {""}
    numeric = bool(names) and all(is_int(n) for n in names)
    classes = sorted(names, key=(lambda n: (int(n), n)) if numeric else None)
    lookup = {c: i for i, c in enumerate(classes)}

    candidates = []
    for row in rows:
        rel = Path(row["path"].strip()).expanduser()
        label = lookup.get((row.get("label") or "").strip(), -1)
        part = (row.get("split") or "").strip() or "train"
        name = rel.with_suffix("").as_posix()
        candidates.append(VideoRecord(name, manifest.parent / rel, label, part))
    req = Request(req.dataset, manifest.parent, req.split, None, False)
    return finish_index(req, classes, candidates, f"the paths listed in {manifest}", [manifest])


def _load_synthetic(req: Request) -> DatasetIndex:
    """The built-in generated dataset, written on first use, then read as a `folder`."""
    if not (req.root / SYNTHETIC_MARKER).is_file():
        from advise_cache.synthetic import generate_synthetic

        family = _SYNTHETIC_FAMILIES[req.dataset]
        log.info("%s: generating the %s family in %s", req.dataset, family, req.root)
        generate_synthetic(req.root, family=family)
    return _load_folder(req)


_ADAPTERS: dict[str, Callable[[Request], DatasetIndex]] = {
    "ucf101": load_ucf101,
    "hmdb51": load_hmdb51,
    "diving48": load_diving48,
    "ssv2": load_ssv2,
    "kinetics400": load_kinetics400,
    "folder": _load_folder,
    "manifest": _load_manifest,
    **{name: _load_synthetic for name in _SYNTHETIC_FAMILIES},
}
DATASETS = tuple(_ADAPTERS)
_USES_ANNOTATIONS = ("ucf101", "hmdb51", "diving48", "ssv2", "kinetics400")
_HAS_HOLDOUT = ("kinetics400", "ssv2")
