"""The official dataset layouts: UCF101, HMDB51, Diving48, Something-Something v2, Kinetics-400.

Each adapter reads its dataset as distributed (the archives unpacked) and as the common
toolkits re-package it (mmaction2, torchvision, CVDF's Kinetics); docs/DATASETS.md shows
every layout. Split files name the videos; `finish_index` (dataset_files.py) matches them
against the disk. `datasets.load_dataset` is the entry point.
"""

from __future__ import annotations

from pathlib import Path

from .dataset_files import (
    DatasetIndex,
    Request,
    VideoRecord,
    bad_line,
    check_split,
    entry_fields,
    find_file,
    finish_index,
    is_video,
    listed_records,
    missing_file,
    read_csv,
    read_json,
    read_lines,
)

# --- official layouts --------------------------------------------------------------------

# UCF101: UCF101.rar unpacks to UCF-101/<Class>/v_*.avi; the splits zip to ucfTrainTestlist/.
# mmaction2 renames UCF-101 to videos/ and unzips the lists into annotations/.
_UCF_URL = "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip"
_HMDB_URL = "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar"
_DIVING_URL = "http://www.svcl.ucsd.edu/projects/resound/dataset.html"
_SSV2_URL = "https://developer.qualcomm.com/software/ai-datasets/something-something"


def load_ucf101(req: Request) -> DatasetIndex:
    check_split(req, allowed=(1, 2, 3))
    dirs = req.annotation_dirs("ucfTrainTestlist", "annotations")
    class_file = find_file(req, dirs, ["classInd.txt"], f"the official split files ({_UCF_URL})")
    lists = class_file.parent
    classes = []
    for lineno, line in read_lines(class_file):
        parts = line.split()
        if len(parts) != 2 or parts[0] != str(len(classes) + 1):
            bad_line(req, class_file, lineno, f'"{len(classes) + 1} <ClassName>"')
        classes.append(parts[1])
    # UCF101's casing is inconsistent (HandstandPushups/v_HandStandPushups_*): be lenient.
    lookup = {c.lower(): i for i, c in enumerate(classes)}

    listed = []  # (relative path, label, split)
    files = [class_file]
    for part in ("train", "test"):
        list_file = find_file(req, [lists], [f"{part}list0{req.split}.txt"], f"the official split files ({_UCF_URL})")
        files.append(list_file)
        for lineno, line in read_lines(list_file):
            rel = line.split()[0]
            class_name = rel.split("/")[0]
            if "/" not in rel or class_name.lower() not in lookup:
                bad_line(req, list_file, lineno, '"<Class>/<video>.avi", a class of classInd.txt')
            listed.append((rel, lookup[class_name.lower()], part))
    videos, candidates = listed_records(req, listed, ["UCF-101", "videos", "."])
    return finish_index(req, classes, candidates, f"videos in {videos}/<Class>/", files)


# HMDB51: hmdb51_org.rar holds one rar per class (<class>/*.avi); test_train_splits.rar
# unpacks to testTrainMulti_7030_splits/<class>_test_split<N>.txt. mmaction2: videos/ and
# annotations/.


def load_hmdb51(req: Request) -> DatasetIndex:
    check_split(req, allowed=(1, 2, 3))
    suffix = f"_test_split{req.split}.txt"
    dirs = req.annotation_dirs("testTrainMulti_7030_splits", "annotations")
    split_files: list[Path] = []
    for folder in dirs:
        split_files = sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []
        if split_files:
            break
    if not split_files:
        missing_file(req, dirs, [f"<class>{suffix}"], f"the official splits ({_HMDB_URL})", pattern=f"*{suffix}")
    # Classes in sorted class-name order, as torchvision and mmaction2 number them: the
    # split files sort differently ("climb_stairs_test..." before "climb_test...").
    by_class = {f.name[: -len(suffix)]: f for f in split_files}
    classes = sorted(by_class)
    tags = {"1": "train", "2": "test"}  # "0" marks a video unused by this split

    listed = []
    for label, class_name in enumerate(classes):
        split_file = by_class[class_name]
        for lineno, line in read_lines(split_file):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                bad_line(req, split_file, lineno, '"<video>.avi 0|1|2"')
            if parts[1] in tags:
                listed.append((f"{class_name}/{parts[0]}", label, tags[parts[1]]))
    videos, candidates = listed_records(req, listed, ["videos", "hmdb51_org", "."])
    return finish_index(req, classes, candidates, f"videos in {videos}/<class>/", split_files)


# Diving48: Diving48_V2_{train,test}.json, Diving48_vocab.json and rgb/*.mp4 (from
# Diving48_rgb.tar.gz). mmaction2 moves rgb/ to videos/ and the JSON files to annotations/.


def load_diving48(req: Request) -> DatasetIndex:
    check_split(req, allowed=(1,))
    dirs = req.annotation_dirs("annotations")
    files = []
    vocabs = [d / "Diving48_vocab.json" for d in dirs if (d / "Diving48_vocab.json").is_file()]
    vocab_file = vocabs[0] if vocabs else None
    if vocab_file is not None:
        # Each entry is the dive's four attributes, e.g. ["Back", "15som", "05Twis", "FREE"].
        vocab = read_json(req, vocab_file)
        classes = ["_".join(v) if isinstance(v, list) else str(v) for v in vocab]
        files.append(vocab_file)
    else:
        classes = [f"class_{i}" for i in range(48)]

    listed = []
    for part in ("train", "test"):
        what = f"the official V2 annotations ({_DIVING_URL})"
        split_file = find_file(req, dirs, [f"Diving48_V2_{part}.json"], what)
        files.append(split_file)
        for entry in read_json(req, split_file):
            vid, label = entry_fields(req, split_file, entry, "vid_name", "label")
            if not isinstance(label, int) or not 0 <= label < len(classes):
                req.fail(f"{split_file} gives {vid!r} the label {label!r}; expected an integer in [0, {len(classes)})")
            listed.append((f"{vid}.mp4", label, part))
    videos, candidates = listed_records(req, listed, ["rgb", "videos", "."])
    return finish_index(req, classes, candidates, f"<vid_name>.mp4 videos in {videos}/", files)


# SSv2, current download: labels/{labels,train,validation,test}.json and the video parts
# unpacking to 20bn-something-something-v2/<id>.webm. The original 20BN names, used by
# mmaction2 (annotations/), SlowFast and pytorchvideo: something-something-v2-<role>.json.
_SSV2_NAMES = {
    "labels": ("labels.json", "something-something-v2-labels.json"),
    "train": ("train.json", "something-something-v2-train.json"),
    "validation": ("validation.json", "something-something-v2-validation.json"),
    "test": ("test.json", "something-something-v2-test.json"),
}


def load_ssv2(req: Request) -> DatasetIndex:
    """Something-Something v2; its validation set is the evaluation set, split "test"."""
    check_split(req, allowed=(1,))
    dirs = req.annotation_dirs("labels", "label", "annotations")
    what = f"the label map of the official annotations ({_SSV2_URL})"
    labels_file = find_file(req, dirs, list(_SSV2_NAMES["labels"]), what)
    try:
        label_map = {k: int(v) for k, v in read_json(req, labels_file).items()}
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
        split_file = find_file(req, [folder], list(_SSV2_NAMES[role]), what)
        files.append(split_file)
        for entry in read_json(req, split_file):
            if part == "holdout":  # test.json lists ids only
                (vid,) = entry_fields(req, split_file, entry, "id")
                listed.append((f"{vid}.webm", -1, part))
                continue
            vid, template = entry_fields(req, split_file, entry, "id", "template")
            # Templates carry "[something]"; the label map spells it "something".
            key = template.replace("[", "").replace("]", "")
            if key not in label_map:
                req.fail(f"{split_file} gives video {vid} the template {template!r}, which {labels_file} does not list")
            listed.append((f"{vid}.webm", label_map[key], part))
    subdirs = ["20bn-something-something-v2", "videos", "."]
    videos, candidates = listed_records(req, listed, subdirs)
    return finish_index(req, classes, candidates, f"<id>.webm videos in {videos}/", files)


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


def load_kinetics400(req: Request) -> DatasetIndex:
    """Kinetics-400; val.csv is the evaluation set, split "test"; test.csv is "holdout"."""
    check_split(req, allowed=(1,))
    parts = {"train": "train", "val": "test"} | ({"test": "holdout"} if req.holdout else {})
    header = ("label", "youtube_id", "time_start", "time_end", "split")
    dirs = req.annotation_dirs("annotations", "kinetics400")
    what = f"the annotations ({_KINETICS_URL})"
    train_csv = find_file(req, dirs, list(_KINETICS_CSV["train"]), what)
    folder = train_csv.parent
    files, tables = [], {}
    for role in parts:
        path = train_csv if role == "train" else find_file(req, [folder], list(_KINETICS_CSV[role]), what)
        files.append(path)
        tables[role] = (path, read_csv(req, path, header, header[1:4]))
    classes = sorted({row["label"] for row in tables["train"][1] if row.get("label")})
    lookup = {c: i for i, c in enumerate(classes)}
    # CVDF re-encoded the videos that were corrupt in its archives; prefer those.
    replacements = {}
    for sub in ("replacement", "replacement_for_corrupted_k400"):
        replacements |= videos_by_stem(req.root / sub, depth=2)

    candidates = []
    for role, (path, rows) in tables.items():
        folders = [req.root / f for f in _KINETICS_VIDEOS[role]]
        on_disk: dict[str, Path] = {}
        for f in reversed(folders):  # the first folder wins
            on_disk |= videos_by_stem(f, depth=2)
        default = next((f for f in folders if f.is_dir()), folders[0])
        for row in rows:
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError:
                req.fail(
                    f"{path} has a row with time_start {row['time_start']!r}, "
                    f"time_end {row['time_end']!r}; expected numbers"
                )
            stem = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            label_name = row.get("label") or ""
            if label_name and label_name not in lookup:
                req.fail(f"{path} has the label {label_name!r}, which {train_csv.name} does not")
            label = lookup[label_name] if label_name else -1
            video = replacements.get(stem) or on_disk.get(stem) or default / f"{stem}.mp4"
            candidates.append(VideoRecord(f"{role}/{stem}", video, label, parts[role]))
    expected = f"<youtube_id>_<start:06d>_<end:06d>.mp4 in {req.root}/<split>/ or <split>/<label>/ (or videos_<split>/)"
    return finish_index(req, classes, candidates, expected, files)


def videos_by_stem(folder: Path, depth: int) -> dict[str, Path]:
    """Video files in folder/ and, up to `depth`, its subfolders, keyed by stem."""
    found: dict[str, Path] = {}
    if folder.is_dir():
        paths = [p for d in range(1, depth + 1) for p in folder.glob("/".join(["*"] * d))]
        for path in sorted(paths):
            if is_video(path):
                found.setdefault(path.stem, path)
    return found
