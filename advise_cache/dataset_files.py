"""What every dataset adapter shares: the records it returns, and finding and reading files.

An adapter (official_datasets.py, and the user layouts in datasets.py) gets a `Request`
(dataset, root, split, annotation folder) and returns a `DatasetIndex` of `VideoRecord`s
through `finish_index`, which matches the listed videos against the disk, names the missing
ones and, when none is found, fails saying where it looked and what it saw nearby
(`missing_file`, `nearby_files`). The readers of split files (CSV, JSON, text lines) turn a
malformed line into a `LayoutError` naming the file and the line.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from advise_cache.errors import LayoutError

# Logged under the name users already filter on: these are the dataset adapters' messages.
log = logging.getLogger("advise_cache.datasets")

VIDEO_EXTENSIONS = (
    ".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv",
)  # fmt: skip
SPLIT_FOLDERS = ("train", "val", "test")
DOCS = "docs/DATASETS.md"
# Folders that archivers add beside the data: never a class or a split.
_IGNORED_FOLDERS = ("__MACOSX",)
_STANDARD_SUBFOLDERS = (
    "ucfTrainTestlist",
    "annotations",
    "testTrainMulti_7030_splits",
    "labels",
    "label",
    "kinetics400",
)  # where distributions put annotation files
_MISSING_SHOWN = 5  # names quoted in the missing-videos warning
_NEARBY_BUDGET = 20_000  # directory entries the nearby-file search may look at


@dataclass(frozen=True)
class VideoRecord:
    """One video: `name` is unique and stable within its dataset (a store key)."""

    name: str
    path: Path  # absolute
    label: int  # class index; -1 when unknown (unlabelled sets)
    split: str  # "train", "test"; see datasets.py's docstring for the others


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


@dataclass(frozen=True)
class Request:
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


# --- finding files -----------------------------------------------------------------------


def find_file(req: Request, dirs: Sequence[Path], names: Sequence[str], what: str) -> Path:
    """The first of `names` in the first of `dirs` that has one; else a leading error."""
    for folder in dirs:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    missing_file(req, dirs, names, what)


def missing_file(
    req: Request, dirs: Sequence[Path], names: Sequence[str], what: str, pattern: str | None = None
) -> NoReturn:
    """Say what was expected, where it looked, what it found nearby, and what would work."""
    shown = " or ".join(names)
    looked = ", ".join(str(d) for d in unique(dirs))
    found = nearby_files(req, [pattern] if pattern else list(names))
    if found:
        folders = unique(p.parent for p in found)
        hint = f"found {', '.join(str(p) for p in found[:3])}: try " + " or ".join(suggest(req, f) for f in folders[:2])
    else:
        suffixes = {Path(n).suffix for n in names}
        others = [p for p in nearby_files(req, [f"*{s}" for s in suffixes]) if p.parent in dirs]
        seen = f"; nearby it sees {', '.join(p.name for p in others[:5])}" if others else ""
        hint = f"nothing of that name within {req.root}{seen}"
    req.fail(f"expected {shown} ({what}); looked in {looked}; {hint} (layouts: {DOCS})")


def suggest(req: Request, folder: Path) -> str:
    """The flags that would make the adapter look in `folder`."""
    if folder.name in _STANDARD_SUBFOLDERS and folder.parent != req.root:
        return f"--root {folder.parent} (or --annotations {folder})"
    return f"--annotations {folder}"


def nearby_files(req: Request, patterns: Sequence[str]) -> list[Path]:
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


def listed_records(
    req: Request, listed: Sequence[tuple[str, int, str]], subdirs: Sequence[str]
) -> tuple[Path, list[VideoRecord]]:
    """Records for (relative path, label, split) triples, under the first of root/<subdir>
    that holds the most of them; a record's name is its relative path minus the extension."""
    videos = pick_video_dir(req, subdirs, [rel for rel, _, _ in listed])
    records = [VideoRecord(rel.rsplit(".", 1)[0], videos / rel, label, part) for rel, label, part in listed]
    return videos, records


def pick_video_dir(req: Request, subdirs: Sequence[str], rels: Sequence[str]) -> Path:
    """The first of root/<subdir> holding the most of a sample of the listed videos."""
    candidates = [d for d in unique(req.root / s for s in subdirs) if d.is_dir()]
    if not candidates or not rels:
        return req.root / subdirs[0]
    step = max(1, len(rels) // 200)
    sample = rels[::step]
    counts = [sum((d / r).is_file() for r in sample) for d in candidates]
    best = max(range(len(candidates)), key=lambda i: (counts[i], -i))
    return candidates[best]


# --- shared helpers ----------------------------------------------------------------------


def finish_index(
    req: Request,
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
        found = nearby_files(req, [example.name])
        if found:
            shared = shared_tail(found[0], example)  # file name, class folder, ...
            hint = (
                f"found {found[0]}: the videos are in {found[0].parents[shared - 1]}, not in "
                f"{example.parents[shared - 1]}; {hint}"
            )
        elif archives := [
            p for p in nearby_files(req, ["*.rar", "*.zip", "*.tar", "*.tar.gz", "*.tgz"]) if p.is_relative_to(req.root)
        ]:
            names = ", ".join(p.name for p in archives[:3])
            hint = f"found the archives {names}: unpack them first; {hint}"
        req.fail(f"none of the {len(missing)} listed videos exists; expected {expected}, e.g. {example} ({hint})")
    missing_names = sorted(r.name for r in missing)
    if missing_names:
        log.warning(
            "%s: %d of the %d listed videos are missing on disk and will not be extracted (first: %s)",
            req.dataset,
            len(missing_names),
            len(by_name),
            ", ".join(missing_names[:_MISSING_SHOWN]),
        )
    present.sort(key=lambda r: (r.split, r.name))
    return DatasetIndex(req.dataset, req.root, list(classes), present, missing_names, req.split, tuple(files))


def check_split(req: Request, allowed: tuple[int, ...]) -> None:
    if req.split not in allowed:
        choices = " or ".join(map(str, allowed))
        req.fail(f"expected split {choices} (the official splits); got {req.split!r}")


def read_csv(req: Request, path: Path, header: tuple[str, ...], needed: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file that must have at least the `needed` columns of `header`.
    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped."""
    columns = ",".join(header)
    if not path.is_file():
        missing_file(req, [path.parent], [path.name], f"a CSV with the header {columns}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        found = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = found
        if not set(needed) <= set(found):
            req.fail(f"expected {path} to have the header {columns}; found {found!r}")
        return list(reader)


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank stripped lines with their 1-based numbers (the official files use CRLF)."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [(i, line.strip()) for i, line in enumerate(lines, 1) if line.strip()]


def read_json(req: Request, path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        req.fail(f"expected {path} to be JSON; {e}")


def entry_fields(req: Request, path: Path, entry: object, *keys: str) -> list:
    if not isinstance(entry, dict) or not all(k in entry for k in keys):
        req.fail(f"expected every entry of {path} to have the keys {', '.join(keys)}; found {str(entry)[:80]}")
    return [entry[k] for k in keys]


def bad_line(req: Request, path: Path, lineno: int, expected: str) -> NoReturn:
    req.fail(f"{path} line {lineno}: expected {expected}")


def subfolders(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_FOLDERS
    )


def in_ignored(path: Path, top: Path) -> bool:
    return any(part in _IGNORED_FOLDERS for part in path.relative_to(top).parts)


def is_video(path: Path) -> bool:
    # "._x.mp4" files are macOS metadata, not videos.
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def is_false_video(path: Path) -> bool:
    """Named like a video but no file to decode: a link whose target is gone, or a folder. Kept,
    so that its failure is recorded instead of the video going missing without a word."""
    return (
        path.suffix.lower() in VIDEO_EXTENSIONS
        and not path.name.startswith(".")
        and ((path.is_symlink() and not path.exists()) or path.is_dir())
    )


def unreadable_folders(top: Path) -> list[Path]:
    errors: list[OSError] = []
    for _ in os.walk(top, onerror=errors.append):
        pass
    return sorted({Path(e.filename) for e in errors if e.filename and not in_ignored(Path(e.filename), top)})


def shared_tail(a: Path, b: Path) -> int:
    """How many trailing parts two paths have in common."""
    k = 0
    while k < min(len(a.parts), len(b.parts)) - 1 and a.parts[-k - 1] == b.parts[-k - 1]:
        k += 1
    return k


def is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def unique(items: Iterable) -> list:
    return list(dict.fromkeys(items))
