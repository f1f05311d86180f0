"""Dataset adapters: turn a dataset root into sorted video records (path, label, split).

    from advise_cache.datasets import load_dataset
    index = load_dataset("ucf101", "/data/ucf101", split=1)
    train = index.select("train")

Each adapter reads a dataset's official layout (its split files, its folder structure) and
only looks at paths: nothing here decodes a video. Videos named by the split files but
absent on disk are listed in `DatasetIndex.missing` and logged, since partial downloads are
common; a root where none of them exists is a `LayoutError`.

Splits are "train" and "test", where "test" is always the set a paper evaluates on: the
SSv2 validation set and the Kinetics val.csv are returned as "test". The `folder` and
`manifest` layouts keep whatever split names the user gave ("val" included), and the
Kinetics test.csv, when present, becomes "holdout" so it never mixes with val.csv.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterable
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
_SYNTHETIC_FAMILIES = {
    "synthetic": "both",
    "synthetic-appearance": "appearance",
    "synthetic-temporal": "temporal",
}
_MISSING_SHOWN = 5  # names quoted in the missing-videos warning


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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def select(self, split: str) -> list[VideoRecord]:
        """The records of one split, in index order."""
        return [r for r in self.records if r.split == split]


def load_dataset(name: str, root: Path | str, split: int = 1) -> DatasetIndex:
    """Index the dataset `name` (one of `DATASETS`) found at `root`.

    `split` picks one of the official train/test splits of UCF101 and HMDB51 (1, 2 or 3);
    the other datasets have a single split and accept only 1.
    """
    adapter = _ADAPTERS.get(name.lower())
    if adapter is None:
        raise LayoutError(f"unknown dataset {name!r}; supported: {', '.join(DATASETS)}")
    dataset = name.lower()
    root = Path(root).expanduser().absolute()
    if dataset not in _SYNTHETIC_FAMILIES and not root.exists():
        raise LayoutError(f"{dataset}: root {root} does not exist")
    index = adapter(dataset, root, split)
    log.info(
        "%s: %d videos, %d classes, %d missing",
        dataset,
        len(index.records),
        len(index.classes),
        len(index.missing),
    )
    return index


# --- official layouts --------------------------------------------------------------------


def _load_ucf101(dataset: str, root: Path, split: int) -> DatasetIndex:
    _check_split(dataset, split, allowed=(1, 2, 3))
    lists = root / "ucfTrainTestlist"
    # The official archive unpacks to UCF-101/<Class>/; accept the class folders in root too.
    videos = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    class_file = _require_file(dataset, lists / "classInd.txt", "the official split files")
    classes = []
    for lineno, line in _read_lines(class_file):
        parts = line.split()
        if len(parts) != 2 or parts[0] != str(len(classes) + 1):
            _bad_line(dataset, class_file, lineno, f'"{len(classes) + 1} <ClassName>"')
        classes.append(parts[1])
    # UCF101's casing is inconsistent (HandstandPushups/v_HandStandPushups_*): be lenient.
    lookup = {c.lower(): i for i, c in enumerate(classes)}

    candidates = []
    for part in ("train", "test"):
        list_file = _require_file(
            dataset, lists / f"{part}list0{split}.txt", "the official split files"
        )
        for lineno, line in _read_lines(list_file):
            rel = line.split()[0]
            class_name = rel.split("/")[0]
            if "/" not in rel or class_name.lower() not in lookup:
                _bad_line(
                    dataset, list_file, lineno, '"<Class>/<video>.avi", a class of classInd.txt'
                )
            name = rel.rsplit(".", 1)[0]
            candidates.append(VideoRecord(name, videos / rel, lookup[class_name.lower()], part))
    return _finish(dataset, root, classes, candidates, f"videos in {videos}/<Class>/")


def _load_hmdb51(dataset: str, root: Path, split: int) -> DatasetIndex:
    _check_split(dataset, split, allowed=(1, 2, 3))
    suffix = f"_test_split{split}.txt"
    split_files = []
    for folder in (root, root / "testTrainMulti_7030_splits"):
        split_files = sorted(folder.glob(f"*{suffix}"))
        if split_files:
            break
    if not split_files:
        raise LayoutError(
            f"{dataset}: expected <class>{suffix} files (the official splits) in {root} or "
            f"{root / 'testTrainMulti_7030_splits'}; none found"
        )
    classes = [f.name[: -len(suffix)] for f in split_files]
    tags = {"1": "train", "2": "test"}  # "0" marks a video unused by this split

    candidates = []
    for label, (class_name, split_file) in enumerate(zip(classes, split_files, strict=True)):
        for lineno, line in _read_lines(split_file):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                _bad_line(dataset, split_file, lineno, '"<video>.avi 0|1|2"')
            if parts[1] in tags:
                rel = f"{class_name}/{parts[0]}"
                name = rel.rsplit(".", 1)[0]
                candidates.append(VideoRecord(name, root / rel, label, tags[parts[1]]))
    return _finish(dataset, root, classes, candidates, f"videos in {root}/<class>/")


def _load_diving48(dataset: str, root: Path, split: int) -> DatasetIndex:
    _check_split(dataset, split, allowed=(1,))
    vocab_file = root / "Diving48_vocab.json"
    if vocab_file.is_file():
        # Each entry is the dive's four attributes, e.g. ["Back", "15som", "05Twis", "FREE"].
        vocab = _read_json(dataset, vocab_file)
        classes = ["_".join(v) if isinstance(v, list) else str(v) for v in vocab]
    else:
        classes = [f"class_{i}" for i in range(48)]

    candidates = []
    for part in ("train", "test"):
        split_file = _require_file(
            dataset, root / f"Diving48_V2_{part}.json", "the official V2 annotations"
        )
        for entry in _read_json(dataset, split_file):
            vid, label = _fields(dataset, split_file, entry, "vid_name", "label")
            if not isinstance(label, int) or not 0 <= label < len(classes):
                raise LayoutError(
                    f"{dataset}: {split_file} gives {vid!r} the label {label!r}; "
                    f"expected an integer in [0, {len(classes)})"
                )
            candidates.append(VideoRecord(vid, root / "rgb" / f"{vid}.mp4", label, part))
    return _finish(dataset, root, classes, candidates, f"videos in {root / 'rgb'}/")


def _load_ssv2(dataset: str, root: Path, split: int) -> DatasetIndex:
    """Something-Something v2; its validation set is the evaluation set, split "test"."""
    _check_split(dataset, split, allowed=(1,))
    labels_file = _require_file(dataset, root / "labels.json", "the official label map")
    try:
        label_map = {k: int(v) for k, v in _read_json(dataset, labels_file).items()}
    except (AttributeError, TypeError, ValueError):
        label_map = {}
    classes = sorted(label_map, key=label_map.__getitem__)
    if not classes or [label_map[c] for c in classes] != list(range(len(classes))):
        raise LayoutError(f'{dataset}: expected {labels_file} to map each template to "0".."N-1"')
    subfolder = root / "20bn-something-something-v2"
    videos = subfolder if subfolder.is_dir() else root

    candidates = []
    for part, file_part in (("train", "train"), ("test", "validation")):
        split_file = _require_file(
            dataset, root / f"something-something-v2-{file_part}.json", "the official splits"
        )
        for entry in _read_json(dataset, split_file):
            vid, template = _fields(dataset, split_file, entry, "id", "template")
            # Templates carry "[something]"; labels.json spells it "something".
            key = template.replace("[", "").replace("]", "")
            if key not in label_map:
                raise LayoutError(
                    f"{dataset}: {split_file} gives video {vid} the template {template!r}, "
                    f"which {labels_file} does not list"
                )
            candidates.append(VideoRecord(str(vid), videos / f"{vid}.webm", label_map[key], part))
    return _finish(dataset, root, classes, candidates, f"<id>.webm videos in {videos}/")


def _load_kinetics400(dataset: str, root: Path, split: int) -> DatasetIndex:
    """Kinetics-400; val.csv is the evaluation set, split "test"; test.csv is "holdout"."""
    _check_split(dataset, split, allowed=(1,))
    parts = {"train": "train", "val": "test", "test": "holdout"}
    header = ("label", "youtube_id", "time_start", "time_end", "split")
    tables = {
        csv_split: _read_csv(dataset, root / f"{csv_split}.csv", header, header[1:4])
        for csv_split in parts
        if csv_split == "train" or (root / f"{csv_split}.csv").is_file()
    }
    classes = sorted({row["label"] for row in tables["train"] if row.get("label")})
    lookup = {c: i for i, c in enumerate(classes)}

    candidates = []
    for csv_split, rows in tables.items():
        on_disk = _videos_by_stem(root / csv_split)
        for row in rows:
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError:
                raise LayoutError(
                    f"{dataset}: {root / f'{csv_split}.csv'} has a row with time_start "
                    f"{row['time_start']!r}, time_end {row['time_end']!r}; expected numbers"
                ) from None
            stem = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            label_name = row.get("label") or ""
            if label_name and label_name not in lookup:
                raise LayoutError(
                    f"{dataset}: {csv_split}.csv has the label {label_name!r}, "
                    "which train.csv does not"
                )
            label = lookup[label_name] if label_name else -1
            path = on_disk.get(stem, root / csv_split / f"{stem}.mp4")
            candidates.append(VideoRecord(f"{csv_split}/{stem}", path, label, parts[csv_split]))
    expected = f"<youtube_id>_<start:06d>_<end:06d>.mp4 in {root}/<split>/ or <split>/<label>/"
    return _finish(dataset, root, classes, candidates, expected)


def _videos_by_stem(folder: Path) -> dict[str, Path]:
    """Video files in folder/ and folder/*/, keyed by stem (Kinetics ships both layouts)."""
    found: dict[str, Path] = {}
    if folder.is_dir():
        for path in sorted([*folder.glob("*"), *folder.glob("*/*")]):
            if _is_video(path):
                found.setdefault(path.stem, path)
    return found


# --- user layouts ------------------------------------------------------------------------


def _load_folder(dataset: str, root: Path, split: int) -> DatasetIndex:
    """root/<class>/<video> (all "train"), or root/<split>/<class>/<video>."""
    _check_split(dataset, split, allowed=(1,))
    expected = f"{root}/<class>/<video> or {root}/<train|val|test>/<class>/<video>"
    subdirs = _subdirs(root) if root.is_dir() else []
    if not subdirs:
        raise LayoutError(f"{dataset}: expected {expected}; {root} has no subfolders")
    if all(d.name in SPLIT_FOLDERS for d in subdirs):
        split_dirs = [(d.name, d) for d in subdirs]
    else:
        split_dirs = [("train", root)]

    class_dirs = [(part, d) for part, folder in split_dirs for d in _subdirs(folder)]
    classes = sorted({d.name for _, d in class_dirs})
    lookup = {c: i for i, c in enumerate(classes)}
    candidates = []
    for part, class_dir in class_dirs:
        for path in sorted(class_dir.rglob("*")):
            if _is_video(path):
                name = path.relative_to(root).with_suffix("").as_posix()
                candidates.append(VideoRecord(name, path, lookup[class_dir.name], part))
    for _, folder in split_dirs:
        loose = [p for p in folder.iterdir() if _is_video(p)]
        if loose:
            log.warning(
                "%s: ignoring %d videos outside a class folder in %s", dataset, len(loose), folder
            )
    kinds = ", ".join(VIDEO_EXTENSIONS)
    return _finish(dataset, root, classes, candidates, f"video files ({kinds}) in {expected}")


def _load_manifest(dataset: str, root: Path, split: int) -> DatasetIndex:
    """A CSV `path,label,split`: label is a class name (empty: -1), split defaults to train."""
    _check_split(dataset, split, allowed=(1,))
    manifest = root / "manifest.csv" if root.is_dir() else root
    rows = _read_csv(dataset, manifest, ("path", "label", "split"), ("path",))
    rows = [row for row in rows if (row.get("path") or "").strip()]
    classes = sorted({(row.get("label") or "").strip() for row in rows} - {""})
    lookup = {c: i for i, c in enumerate(classes)}

    candidates = []
    for row in rows:
        rel = Path(row["path"].strip()).expanduser()
        label = lookup.get((row.get("label") or "").strip(), -1)
        part = (row.get("split") or "").strip() or "train"
        name = rel.with_suffix("").as_posix()
        candidates.append(VideoRecord(name, manifest.parent / rel, label, part))
    return _finish(dataset, manifest.parent, classes, candidates, f"the paths listed in {manifest}")


def _load_synthetic(dataset: str, root: Path, split: int) -> DatasetIndex:
    """The built-in generated dataset, written on first use, then read as a `folder`."""
    if not (root / SYNTHETIC_MARKER).is_file():
        from advise_cache.synthetic import generate_synthetic

        family = _SYNTHETIC_FAMILIES[dataset]
        log.info("%s: generating the %s family in %s", dataset, family, root)
        generate_synthetic(root, family=family)
    return _load_folder(dataset, root, split)


# --- shared helpers ----------------------------------------------------------------------


def _finish(
    dataset: str, root: Path, classes: list[str], candidates: Iterable[VideoRecord], expected: str
) -> DatasetIndex:
    """Deduplicate, split off missing videos, sort; fail if nothing is on disk."""
    by_name: dict[str, VideoRecord] = {}
    for record in candidates:
        seen = by_name.setdefault(record.name, record)
        if seen != record:  # identical repeats in a split file are harmless
            raise LayoutError(
                f"{dataset}: two entries share the name {record.name!r} "
                f"({seen.path}, {seen.split} and {record.path}, {record.split}); "
                "expected video names to be unique"
            )
    if not by_name:
        raise LayoutError(f"{dataset}: no videos found; expected {expected}")
    present, missing = [], []
    for record in by_name.values():
        (present if record.path.is_file() else missing).append(record)
    if not present:
        raise LayoutError(
            f"{dataset}: none of the {len(missing)} listed videos exists; expected {expected}"
        )
    missing_names = sorted(r.name for r in missing)
    if missing_names:
        log.warning(
            "%s: %d listed videos are missing on disk (first: %s)",
            dataset,
            len(missing_names),
            ", ".join(missing_names[:_MISSING_SHOWN]),
        )
    present.sort(key=lambda r: (r.split, r.name))
    return DatasetIndex(dataset, root, list(classes), present, missing_names)


def _check_split(dataset: str, split: int, allowed: tuple[int, ...]) -> None:
    if split not in allowed:
        choices = " or ".join(map(str, allowed))
        raise LayoutError(
            f"{dataset}: expected split {choices} (the official splits); got {split!r}"
        )


def _require_file(dataset: str, path: Path, what: str) -> Path:
    if not path.is_file():
        raise LayoutError(f"{dataset}: expected {path} ({what}); not found")
    return path


def _read_csv(
    dataset: str, path: Path, header: tuple[str, ...], needed: tuple[str, ...]
) -> list[dict[str, str]]:
    """Rows of a CSV file that must have at least the `needed` columns of `header`."""
    columns = ",".join(header)
    _require_file(dataset, path, f"a CSV with the header {columns}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        found = reader.fieldnames or []
        if not set(needed) <= set(found):
            raise LayoutError(
                f"{dataset}: expected {path} to have the header {columns}; found {','.join(found)}"
            )
        return list(reader)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank stripped lines with their 1-based numbers (the official files use CRLF)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(i, line.strip()) for i, line in enumerate(lines, 1) if line.strip()]


def _read_json(dataset: str, path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LayoutError(f"{dataset}: expected {path} to be JSON; {e}") from e


def _fields(dataset: str, path: Path, entry: object, *keys: str) -> list:
    if not isinstance(entry, dict) or not all(k in entry for k in keys):
        raise LayoutError(
            f"{dataset}: expected every entry of {path} to have the keys {', '.join(keys)}; "
            f"found {str(entry)[:80]}"
        )
    return [entry[k] for k in keys]


def _bad_line(dataset: str, path: Path, lineno: int, expected: str) -> NoReturn:
    raise LayoutError(f"{dataset}: {path} line {lineno}: expected {expected}")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_video(path: Path) -> bool:
    # "._x.mp4" files are macOS metadata, not videos.
    return (
        path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".") and path.is_file()
    )


_ADAPTERS: dict[str, Callable[[str, Path, int], DatasetIndex]] = {
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
