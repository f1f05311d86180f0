"""Dataset adapters: turn a dataset root into sorted video records (path, label, split).

    from advise_cache.datasets import load_dataset
    index = load_dataset("ucf101", "/data/ucf101", split=1)
    train = index.select("train")

Each adapter reads a dataset as its users download it: the official archives unpacked,
and the common toolkit re-packagings (mmaction2's `videos/` + `annotations/`,
torchvision's video folder + annotation folder, CVDF's Kinetics). docs/DATASETS.md shows
every layout. Annotation files kept elsewhere are found with `annotations=DIR`. Nothing
here decodes a video: adapters only look at paths.

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

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from advise_cache.errors import LayoutError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (
    ".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv",
)  # fmt: skip
SPLIT_FOLDERS = ("train", "val", "test")
SYNTHETIC_MARKER = "SYNTHETIC.json"
DATA_ENV = "ADVISE_DATA"  # parent folder of the default dataset roots
DOCS = "docs/DATASETS.md"
_SYNTHETIC_FAMILIES = {
    "synthetic": "both",
    "synthetic-appearance": "appearance",
    "synthetic-temporal": "temporal",
    "synthetic-motion": "motion",
}
# Folders that archivers add beside the data: never a class or a split.
_IGNORED_FOLDERS = ("__MACOSX",)
_STANDARD_SUBFOLDERS = ("ucfTrainTestlist", "annotations", "testTrainMulti_7030_splits", "labels",
                        "label", "kinetics400")  # where distributions put annotation files
_MISSING_SHOWN = 5  # names quoted in the missing-videos warning
_NEARBY_BUDGET = 20_000  # directory entries the nearby-file search may look at


@dataclass(frozen=True)
class VideoRecord:
    """One video: `name` is unique and stable within its dataset (a store key)."""

    name: str
    path: Path  # absolute
    label: int  # class index; -1 when unknown (unlabelled sets)
    split: str  # "train", "test"; see the module docstring for the others


@dataclass(frozen=True)
class DatasetIndex:
    dataset: str
    root: Path
    classes: list[str]  # class index -> class name
    records: list[VideoRecord]  # sorted by (split, name)
    missing: list[str]  # names the split files list but the disk lacks
    official_split: int = 1  # which official train/test split (UCF101, HMDB51: 1-3)
    annotations: tuple[Path, ...] = ()  # the annotation files read

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def select(self, split: str) -> list[VideoRecord]:
        """The records of one split, in index order."""
        return [r for r in self.records if r.split == split]

    def source(self) -> dict:
        """Where the video list came from, as a store records it."""
        return {
            "split": self.official_split,
            "annotations": [str(p) for p in self.annotations],
            "missing": list(self.missing),
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
        raise LayoutError(
            f"{dataset}: has no unlabelled test set; --holdout applies to {', '.join(_HAS_HOLDOUT)}"
        )
    index = adapter(_Request(dataset, root, split, ann, holdout))
    log.info(
        "%s: %d videos, %d classes, %d missing",
        dataset,
        len(index.records),
        len(index.classes),
        len(index.missing),
    )
    return index


@dataclass(frozen=True)
class _Request:
    dataset: str
    root: Path
    split: int
    annotations: Path | None  # --annotations, absolute
    holdout: bool

    def annotation_dirs(self, *subdirs: str) -> list[Path]:
        """Where annotation files may be: --annotations (and its standard subfolders), or
        the root's standard subfolders, then the root itself."""
        base = self.annotations or self.root
        return [base / s for s in subdirs] + [base]

    def fail(self, message: str) -> NoReturn:
        raise LayoutError(f"{self.dataset}: {message}")


# --- official layouts --------------------------------------------------------------------

# UCF101: UCF101.rar unpacks to UCF-101/<Class>/v_*.avi; the splits zip to ucfTrainTestlist/.
# mmaction2 renames UCF-101 to videos/ and unzips the lists into annotations/.
_UCF_URL = "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip"
_HMDB_URL = "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar"
_DIVING_URL = "http://www.svcl.ucsd.edu/projects/resound/dataset.html"
_SSV2_URL = "https://developer.qualcomm.com/software/ai-datasets/something-something"


def _load_ucf101(req: _Request) -> DatasetIndex:
    _check_split(req, allowed=(1, 2, 3))
    dirs = req.annotation_dirs("ucfTrainTestlist", "annotations")
    class_file = _find_file(req, dirs, ["classInd.txt"], f"the official split files ({_UCF_URL})")
    lists = class_file.parent
    classes = []
    for lineno, line in _read_lines(class_file):
        parts = line.split()
        if len(parts) != 2 or parts[0] != str(len(classes) + 1):
            _bad_line(req, class_file, lineno, f'"{len(classes) + 1} <ClassName>"')
        classes.append(parts[1])
    # UCF101's casing is inconsistent (HandstandPushups/v_HandStandPushups_*): be lenient.
    lookup = {c.lower(): i for i, c in enumerate(classes)}

    listed = []  # (relative path, label, split)
    files = [class_file]
    for part in ("train", "test"):
        list_file = _find_file(
            req, [lists], [f"{part}list0{req.split}.txt"], f"the official split files ({_UCF_URL})"
        )
        files.append(list_file)
        for lineno, line in _read_lines(list_file):
            rel = line.split()[0]
            class_name = rel.split("/")[0]
            if "/" not in rel or class_name.lower() not in lookup:
                _bad_line(req, list_file, lineno, '"<Class>/<video>.avi", a class of classInd.txt')
            listed.append((rel, lookup[class_name.lower()], part))
    videos, candidates = _listed_records(req, listed, ["UCF-101", "videos", "."])
    return _finish(req, classes, candidates, f"videos in {videos}/<Class>/", files)


# HMDB51: hmdb51_org.rar holds one rar per class (<class>/*.avi); test_train_splits.rar
# unpacks to testTrainMulti_7030_splits/<class>_test_split<N>.txt. mmaction2: videos/ and
# annotations/.


def _load_hmdb51(req: _Request) -> DatasetIndex:
    _check_split(req, allowed=(1, 2, 3))
    suffix = f"_test_split{req.split}.txt"
    dirs = req.annotation_dirs("testTrainMulti_7030_splits", "annotations")
    split_files: list[Path] = []
    for folder in dirs:
        split_files = sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []
        if split_files:
            break
    if not split_files:
        _missing_file(req, dirs, [f"<class>{suffix}"], f"the official splits ({_HMDB_URL})",
                      pattern=f"*{suffix}")
    # Classes in sorted class-name order, as torchvision and mmaction2 number them: the
    # split files sort differently ("climb_stairs_test..." before "climb_test...").
    by_class = {f.name[: -len(suffix)]: f for f in split_files}
    classes = sorted(by_class)
    tags = {"1": "train", "2": "test"}  # "0" marks a video unused by this split

    listed = []
    for label, class_name in enumerate(classes):
        split_file = by_class[class_name]
        for lineno, line in _read_lines(split_file):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                _bad_line(req, split_file, lineno, '"<video>.avi 0|1|2"')
            if parts[1] in tags:
                listed.append((f"{class_name}/{parts[0]}", label, tags[parts[1]]))
    videos, candidates = _listed_records(req, listed, ["videos", "hmdb51_org", "."])
    return _finish(req, classes, candidates, f"videos in {videos}/<class>/", split_files)


# Diving48: Diving48_V2_{train,test}.json, Diving48_vocab.json and rgb/*.mp4 (from
# Diving48_rgb.tar.gz). mmaction2 moves rgb/ to videos/ and the JSON files to annotations/.


def _load_diving48(req: _Request) -> DatasetIndex:
    _check_split(req, allowed=(1,))
    dirs = req.annotation_dirs("annotations")
    files = []
    vocabs = [d / "Diving48_vocab.json" for d in dirs if (d / "Diving48_vocab.json").is_file()]
    vocab_file = vocabs[0] if vocabs else None
    if vocab_file is not None:
        # Each entry is the dive's four attributes, e.g. ["Back", "15som", "05Twis", "FREE"].
        vocab = _read_json(req, vocab_file)
        classes = ["_".join(v) if isinstance(v, list) else str(v) for v in vocab]
        files.append(vocab_file)
    else:
        classes = [f"class_{i}" for i in range(48)]

    listed = []
    for part in ("train", "test"):
        what = f"the official V2 annotations ({_DIVING_URL})"
        split_file = _find_file(req, dirs, [f"Diving48_V2_{part}.json"], what)
        files.append(split_file)
        for entry in _read_json(req, split_file):
            vid, label = _fields(req, split_file, entry, "vid_name", "label")
            if not isinstance(label, int) or not 0 <= label < len(classes):
                req.fail(f"{split_file} gives {vid!r} the label {label!r}; "
                         f"expected an integer in [0, {len(classes)})")
            listed.append((f"{vid}.mp4", label, part))
    videos, candidates = _listed_records(req, listed, ["rgb", "videos", "."])
    return _finish(req, classes, candidates, f"<vid_name>.mp4 videos in {videos}/", files)


# SSv2, current download: labels/{labels,train,validation,test}.json and the video parts
# unpacking to 20bn-something-something-v2/<id>.webm. The original 20BN names, used by
# mmaction2 (annotations/), SlowFast and pytorchvideo: something-something-v2-<role>.json.
_SSV2_NAMES = {
    "labels": ("labels.json", "something-something-v2-labels.json"),
    "train": ("train.json", "something-something-v2-train.json"),
    "validation": ("validation.json", "something-something-v2-validation.json"),
    "test": ("test.json", "something-something-v2-test.json"),
}


def _load_ssv2(req: _Request) -> DatasetIndex:
    """Something-Something v2; its validation set is the evaluation set, split "test"."""
    _check_split(req, allowed=(1,))
    dirs = req.annotation_dirs("labels", "label", "annotations")
    what = f"the label map of the official annotations ({_SSV2_URL})"
    labels_file = _find_file(req, dirs, list(_SSV2_NAMES["labels"]), what)
    try:
        label_map = {k: int(v) for k, v in _read_json(req, labels_file).items()}
    except (AttributeError, TypeError, ValueError):
        label_map = {}
    classes = sorted(label_map, key=label_map.__getitem__)
    if not classes or [label_map[c] for c in classes] != list(range(len(classes))):
        req.fail(f'expected {labels_file} to map each template to "0".."N-1"')

    folder = labels_file.parent
    listed = []
    files = [labels_file]
    roles = [("train", "train"), ("validation", "test")]
    roles += [("test", "holdout")] if req.holdout else []
    for role, part in roles:
        what = f"the official annotations ({_SSV2_URL})"
        split_file = _find_file(req, [folder], list(_SSV2_NAMES[role]), what)
        files.append(split_file)
        for entry in _read_json(req, split_file):
            if part == "holdout":  # test.json lists ids only
                (vid,) = _fields(req, split_file, entry, "id")
                listed.append((f"{vid}.webm", -1, part))
                continue
            vid, template = _fields(req, split_file, entry, "id", "template")
            # Templates carry "[something]"; the label map spells it "something".
            key = template.replace("[", "").replace("]", "")
            if key not in label_map:
                req.fail(f"{split_file} gives video {vid} the template {template!r}, "
                         f"which {labels_file} does not list")
            listed.append((f"{vid}.webm", label_map[key], part))
    subdirs = ["20bn-something-something-v2", "videos", "."]
    videos, candidates = _listed_records(req, listed, subdirs)
    return _finish(req, classes, candidates, f"<id>.webm videos in {videos}/", files)


# Kinetics-400. CVDF: k400/{train,val,test}/*.mp4, k400/annotations/{train,val,test}.csv
# (older scripts: the CSVs in k400/), k400/replacement/replacement_for_corrupted_k400/.
# DeepMind's annotation archive: kinetics400/{train,validate,test}.csv. mmaction2:
# annotations/kinetics_{train,val,test}.csv and videos_{train,val}/<label>/. torchvision:
# <split>/<label>/ and annotations/<split>.csv.
_KINETICS_CSV = {
    "train": ("train.csv", "kinetics_train.csv"),
    "val": ("val.csv", "validate.csv", "kinetics_val.csv"),
    "test": ("test.csv", "kinetics_test.csv"),
}
_KINETICS_VIDEOS = {
    "train": ("train", "videos_train"),
    "val": ("val", "validate", "videos_val"),
    "test": ("test", "videos_test"),
}
_KINETICS_URL = "https://github.com/cvdfoundation/kinetics-dataset"


def _load_kinetics400(req: _Request) -> DatasetIndex:
    """Kinetics-400; val.csv is the evaluation set, split "test"; test.csv is "holdout"."""
    _check_split(req, allowed=(1,))
    parts = {"train": "train", "val": "test"} | ({"test": "holdout"} if req.holdout else {})
    header = ("label", "youtube_id", "time_start", "time_end", "split")
    dirs = req.annotation_dirs("annotations", "kinetics400")
    what = f"the annotations ({_KINETICS_URL})"
    train_csv = _find_file(req, dirs, list(_KINETICS_CSV["train"]), what)
    folder = train_csv.parent
    files, tables = [], {}
    for role in parts:
        path = train_csv if role == "train" else _find_file(
            req, [folder], list(_KINETICS_CSV[role]), what
        )
        files.append(path)
        tables[role] = (path, _read_csv(req, path, header, header[1:4]))
    classes = sorted({row["label"] for row in tables["train"][1] if row.get("label")})
    lookup = {c: i for i, c in enumerate(classes)}
    # CVDF re-encoded the videos that were corrupt in its archives; prefer those.
    replacements = {}
    for sub in ("replacement", "replacement_for_corrupted_k400"):
        replacements |= _videos_by_stem(req.root / sub, depth=2)

    candidates = []
    for role, (path, rows) in tables.items():
        folders = [req.root / f for f in _KINETICS_VIDEOS[role]]
        on_disk: dict[str, Path] = {}
        for f in reversed(folders):  # the first folder wins
            on_disk |= _videos_by_stem(f, depth=2)
        default = next((f for f in folders if f.is_dir()), folders[0])
        for row in rows:
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError:
                req.fail(f"{path} has a row with time_start {row['time_start']!r}, "
                         f"time_end {row['time_end']!r}; expected numbers")
            stem = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            label_name = row.get("label") or ""
            if label_name and label_name not in lookup:
                req.fail(f"{path} has the label {label_name!r}, which {train_csv.name} does not")
            label = lookup[label_name] if label_name else -1
            video = replacements.get(stem) or on_disk.get(stem) or default / f"{stem}.mp4"
            candidates.append(VideoRecord(f"{role}/{stem}", video, label, parts[role]))
    expected = (f"<youtube_id>_<start:06d>_<end:06d>.mp4 in {req.root}/<split>/ or "
                "<split>/<label>/ (or videos_<split>/)")
    return _finish(req, classes, candidates, expected, files)


def _videos_by_stem(folder: Path, depth: int) -> dict[str, Path]:
    """Video files in folder/ and, up to `depth`, its subfolders, keyed by stem."""
    found: dict[str, Path] = {}
    if folder.is_dir():
        paths = [p for d in range(1, depth + 1) for p in folder.glob("/".join(["*"] * d))]
        for path in sorted(paths):
            if _is_video(path):
                found.setdefault(path.stem, path)
    return found


# --- user layouts ------------------------------------------------------------------------


def _load_folder(req: _Request) -> DatasetIndex:
    """root/<class>/<video> (all "train"), or root/<split>/<class>/<video>."""
    _check_split(req, allowed=(1,))
    root = req.root
    expected = f"{root}/<class>/<video> or {root}/<train|val|test>/<class>/<video>"
    subdirs = _subdirs(root) if root.is_dir() else []
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

    class_dirs = [(part, d) for part, folder in split_dirs for d in _subdirs(folder)]
    classes = sorted({d.name for _, d in class_dirs})
    lookup = {c: i for i, c in enumerate(classes)}
    candidates = []
    for part, class_dir in class_dirs:
        for path in sorted(class_dir.rglob("*")):
            if (_is_video(path) or _is_dangling_video(path)) and not _in_ignored(path, class_dir):
                name = path.relative_to(root).with_suffix("").as_posix()
                candidates.append(VideoRecord(name, path, lookup[class_dir.name], part))
        # A folder that cannot be read would hide its videos: it becomes a record whose probe
        # fails with the reason, so the store and the summary name it.
        for folder in _unreadable_folders(class_dir):
            name = folder.relative_to(root).as_posix()
            log.warning("%s: cannot read the folder %s; recorded as failed", req.dataset, folder)
            candidates.append(VideoRecord(name, folder, lookup[class_dir.name], part))
    for _, folder in split_dirs:
        loose = [p for p in folder.iterdir() if _is_video(p)]
        if loose:
            log.warning(
                "%s: ignoring %d videos outside a class folder in %s",
                req.dataset,
                len(loose),
                folder,
            )
    kinds = ", ".join(VIDEO_EXTENSIONS)
    return _finish(req, classes, candidates, f"video files ({kinds}) in {expected}", [])


def _load_manifest(req: _Request) -> DatasetIndex:
    """A CSV `path,label,split`: label is a class name (empty: -1), split defaults to train.

    Classes are sorted by name, or by value when every label is an integer ("2" before
    "10"), so integer labels 0..N-1 keep their own numbers."""
    _check_split(req, allowed=(1,))
    manifest = req.root / "manifest.csv" if req.root.is_dir() else req.root
    rows = _read_csv(req, manifest, ("path", "label", "split"), ("path",))
    rows = [row for row in rows if (row.get("path") or "").strip()]
    names = {(row.get("label") or "").strip() for row in rows} - {""}
    numeric = bool(names) and all(_is_int(n) for n in names)
    classes = sorted(names, key=(lambda n: (int(n), n)) if numeric else None)
    lookup = {c: i for i, c in enumerate(classes)}

    candidates = []
    for row in rows:
        rel = Path(row["path"].strip()).expanduser()
        label = lookup.get((row.get("label") or "").strip(), -1)
        part = (row.get("split") or "").strip() or "train"
        name = rel.with_suffix("").as_posix()
        candidates.append(VideoRecord(name, manifest.parent / rel, label, part))
    req = _Request(req.dataset, manifest.parent, req.split, None, False)
    return _finish(req, classes, candidates, f"the paths listed in {manifest}", [manifest])


def _load_synthetic(req: _Request) -> DatasetIndex:
    """The built-in generated dataset, written on first use, then read as a `folder`."""
    if not (req.root / SYNTHETIC_MARKER).is_file():
        from advise_cache.synthetic import generate_synthetic

        family = _SYNTHETIC_FAMILIES[req.dataset]
        log.info("%s: generating the %s family in %s", req.dataset, family, req.root)
        generate_synthetic(req.root, family=family)
    return _load_folder(req)


# --- finding files -----------------------------------------------------------------------


def _find_file(req: _Request, dirs: Sequence[Path], names: Sequence[str], what: str) -> Path:
    """The first of `names` in the first of `dirs` that has one; else a leading error."""
    for folder in dirs:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    _missing_file(req, dirs, names, what)


def _missing_file(
    req: _Request, dirs: Sequence[Path], names: Sequence[str], what: str, pattern: str | None = None
) -> NoReturn:
    """Say what was expected, where it looked, what it found nearby, and what would work."""
    shown = " or ".join(names)
    looked = ", ".join(str(d) for d in _unique(dirs))
    found = _nearby(req, [pattern] if pattern else list(names))
    if found:
        folders = _unique(p.parent for p in found)
        hint = f"found {', '.join(str(p) for p in found[:3])}: try " + " or ".join(
            _suggest(req, f) for f in folders[:2]
        )
    else:
        suffixes = {Path(n).suffix for n in names}
        others = [p for p in _nearby(req, [f"*{s}" for s in suffixes]) if p.parent in dirs]
        seen = f"; nearby it sees {', '.join(p.name for p in others[:5])}" if others else ""
        hint = f"nothing of that name within {req.root}{seen}"
    req.fail(f"expected {shown} ({what}); looked in {looked}; {hint} (layouts: {DOCS})")


def _suggest(req: _Request, folder: Path) -> str:
    """The flags that would make the adapter look in `folder`."""
    if folder.name in _STANDARD_SUBFOLDERS and folder.parent != req.root:
        return f"--root {folder.parent} (or --annotations {folder})"
    return f"--annotations {folder}"


def _nearby(req: _Request, patterns: Sequence[str]) -> list[Path]:
    """Files matching `patterns` within three folder levels of the root and of --annotations,
    and one level of the root's parent (its other children are often other datasets),
    looking at a bounded number of directory entries."""
    starts = [(req.root, 3), (req.root.parent, 1)]
    if req.annotations is not None:
        starts.insert(0, (req.annotations, 3))
    found: list[Path] = []
    budget = _NEARBY_BUDGET
    queue = [(folder, 0, limit) for folder, limit in starts]
    seen: set[Path] = set()
    while queue and budget > 0:
        folder, depth, limit = queue.pop(0)
        if folder in seen:
            continue
        seen.add(folder)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries[:budget]:
            budget -= 1
            path = Path(entry.path)
            if entry.is_dir() and depth < limit and not entry.name.startswith("."):
                queue.append((path, depth + 1, limit))
            elif entry.is_file() and any(path.match(p) for p in patterns) and path not in found:
                found.append(path)
    return found


def _listed_records(
    req: _Request, listed: Sequence[tuple[str, int, str]], subdirs: Sequence[str]
) -> tuple[Path, list[VideoRecord]]:
    """Records for (relative path, label, split) triples, under the first of root/<subdir>
    that holds the most of them; a record's name is its relative path minus the extension."""
    videos = _pick_video_dir(req, subdirs, [rel for rel, _, _ in listed])
    records = [VideoRecord(rel.rsplit(".", 1)[0], videos / rel, label, part)
               for rel, label, part in listed]
    return videos, records


def _pick_video_dir(req: _Request, subdirs: Sequence[str], rels: Sequence[str]) -> Path:
    """The first of root/<subdir> holding the most of a sample of the listed videos."""
    candidates = [d for d in _unique(req.root / s for s in subdirs) if d.is_dir()]
    if not candidates or not rels:
        return req.root / subdirs[0]
    step = max(1, len(rels) // 200)
    sample = rels[::step]
    counts = [sum((d / r).is_file() for r in sample) for d in candidates]
    best = max(range(len(candidates)), key=lambda i: (counts[i], -i))
    return candidates[best]


# --- shared helpers ----------------------------------------------------------------------


def _finish(
    req: _Request,
    classes: list[str],
    candidates: Iterable[VideoRecord],
    expected: str,
    files: Sequence[Path],
) -> DatasetIndex:
    """Deduplicate, split off missing videos, sort; fail if nothing is on disk."""
    by_name: dict[str, VideoRecord] = {}
    for record in candidates:
        seen = by_name.setdefault(record.name, record)
        if seen != record:  # identical repeats in a split file are harmless
            req.fail(
                f"two entries share the name {record.name!r} "
                f"({seen.path}, {seen.split} and {record.path}, {record.split}); "
                "expected video names to be unique"
            )
    if not by_name:
        req.fail(f"no videos found; expected {expected}")
    present, missing = [], []
    for record in by_name.values():
        # A dangling link or an unreadable folder is there, just not readable: its probe fails.
        there = record.path.is_file() or record.path.is_symlink() or record.path.is_dir()
        (present if there else missing).append(record)
    if not present:
        example = missing[0].path
        hint = f"layouts: {DOCS}"
        found = _nearby(req, [example.name])
        if found:
            shared = _shared_tail(found[0], example)  # file name, class folder, ...
            hint = (f"found {found[0]}: the videos are in {found[0].parents[shared - 1]}, not in "
                    f"{example.parents[shared - 1]}; {hint}")
        elif archives := [p for p in _nearby(req, ["*.rar", "*.zip", "*.tar", "*.tar.gz", "*.tgz"])
                          if p.is_relative_to(req.root)]:
            names = ", ".join(p.name for p in archives[:3])
            hint = f"found the archives {names}: unpack them first; {hint}"
        req.fail(f"none of the {len(missing)} listed videos exists; expected {expected}, "
                 f"e.g. {example} ({hint})")
    missing_names = sorted(r.name for r in missing)
    if missing_names:
        log.warning(
            "%s: %d of the %d listed videos are missing on disk and will not be extracted "
            "(first: %s)",
            req.dataset,
            len(missing_names),
            len(by_name),
            ", ".join(missing_names[:_MISSING_SHOWN]),
        )
    present.sort(key=lambda r: (r.split, r.name))
    return DatasetIndex(
        req.dataset, req.root, list(classes), present, missing_names, req.split, tuple(files)
    )


def _check_split(req: _Request, allowed: tuple[int, ...]) -> None:
    if req.split not in allowed:
        choices = " or ".join(map(str, allowed))
        req.fail(f"expected split {choices} (the official splits); got {req.split!r}")


def _read_csv(
    req: _Request, path: Path, header: tuple[str, ...], needed: tuple[str, ...]
) -> list[dict[str, str]]:
    """Rows of a CSV file that must have at least the `needed` columns of `header`.
    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped."""
    columns = ",".join(header)
    if not path.is_file():
        _missing_file(req, [path.parent], [path.name], f"a CSV with the header {columns}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        found = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = found
        if not set(needed) <= set(found):
            req.fail(f"expected {path} to have the header {columns}; found {found!r}")
        return list(reader)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank stripped lines with their 1-based numbers (the official files use CRLF)."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [(i, line.strip()) for i, line in enumerate(lines, 1) if line.strip()]


def _read_json(req: _Request, path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        req.fail(f"expected {path} to be JSON; {e}")


def _fields(req: _Request, path: Path, entry: object, *keys: str) -> list:
    if not isinstance(entry, dict) or not all(k in entry for k in keys):
        req.fail(f"expected every entry of {path} to have the keys {', '.join(keys)}; "
                 f"found {str(entry)[:80]}")
    return [entry[k] for k in keys]


def _bad_line(req: _Request, path: Path, lineno: int, expected: str) -> NoReturn:
    req.fail(f"{path} line {lineno}: expected {expected}")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_FOLDERS
    )


def _in_ignored(path: Path, top: Path) -> bool:
    return any(part in _IGNORED_FOLDERS for part in path.relative_to(top).parts)


def _is_video(path: Path) -> bool:
    # "._x.mp4" files are macOS metadata, not videos.
    return (
        path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".") and path.is_file()
    )


def _is_dangling_video(path: Path) -> bool:
    """A link named like a video whose target is gone: kept, so its failure is recorded."""
    return (path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")
            and path.is_symlink() and not path.exists())


def _unreadable_folders(top: Path) -> list[Path]:
    errors: list[OSError] = []
    for _ in os.walk(top, onerror=errors.append):
        pass
    return sorted({Path(e.filename) for e in errors if e.filename and not _in_ignored(Path(e.filename), top)})


def _shared_tail(a: Path, b: Path) -> int:
    """How many trailing parts two paths have in common."""
    k = 0
    while k < min(len(a.parts), len(b.parts)) - 1 and a.parts[-k - 1] == b.parts[-k - 1]:
        k += 1
    return k


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _unique(items: Iterable) -> list:
    return list(dict.fromkeys(items))


_ADAPTERS: dict[str, Callable[[_Request], DatasetIndex]] = {
    "ucf101": _load_ucf101,
    "hmdb51": _load_hmdb51,
    "diving48": _load_diving48,
    "ssv2": _load_ssv2,
    "kinetics400": _load_kinetics400,
    "folder": _load_folder,
    "manifest": _load_manifest,
    **{name: _load_synthetic for name in _SYNTHETIC_FAMILIES},
}
DATASETS = tuple(_ADAPTERS)
_USES_ANNOTATIONS = ("ucf101", "hmdb51", "diving48", "ssv2", "kinetics400")
_HAS_HOLDOUT = ("kinetics400", "ssv2")
