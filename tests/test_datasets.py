"""Dataset adapters on tiny fake layouts: the adapters only read paths, so empty files do."""

import json
import logging
from pathlib import Path

import pytest

from advise_cache.datasets import DATASETS, load_dataset
from advise_cache.errors import LayoutError


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_lines(path: Path, lines: list[str]) -> None:
    touch(path, "\r\n".join(lines) + "\r\n")  # the official UCF101/HMDB51 files use CRLF


def summary(index) -> list[tuple[str, int, str]]:
    return [(r.name, r.label, r.split) for r in index.records]


# --- ucf101 ------------------------------------------------------------------------------


def make_ucf101(root: Path) -> None:
    lists = root / "ucfTrainTestlist"
    write_lines(lists / "classInd.txt", ["1 ApplyEyeMakeup", "2 HandstandPushups"])
    videos = [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g01_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",
    ]
    for v in videos:
        touch(root / "UCF-101" / v)
    # split 1 tests on group 1, split 2 on group 8; one training video was never downloaded
    write_lines(
        lists / "trainlist01.txt",
        [f"{videos[1]} 1", f"{videos[3]} 2", "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi 1"],
    )
    write_lines(lists / "testlist01.txt", [videos[0], videos[2]])
    write_lines(lists / "trainlist02.txt", [f"{videos[0]} 1", f"{videos[2]} 2"])
    write_lines(lists / "testlist02.txt", [videos[1], videos[3]])


@pytest.mark.parametrize(("split", "test_group"), [(1, "g01"), (2, "g08")])
def test_ucf101_reads_the_official_split(tmp_path, split, test_group):
    make_ucf101(tmp_path)
    index = load_dataset("ucf101", tmp_path, split=split)
    assert index.dataset == "ucf101"
    assert index.classes == ["ApplyEyeMakeup", "HandstandPushups"]
    test = index.select("test")
    assert [r.label for r in test] == [0, 1]
    assert all(test_group in r.name for r in test)
    assert len(index.select("train")) == 2
    record = test[0]
    assert record.name == f"ApplyEyeMakeup/v_ApplyEyeMakeup_{test_group}_c01"
    assert record.path == tmp_path / "UCF-101" / f"{record.name}.avi"
    assert record.path.is_absolute()
    assert index.missing == (["ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01"] if split == 1 else [])


def test_missing_videos_are_listed_and_logged(tmp_path, caplog):
    make_ucf101(tmp_path)
    with caplog.at_level(logging.WARNING, logger="advise_cache.datasets"):
        index = load_dataset("ucf101", tmp_path)
    assert index.missing == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01"]
    assert "1 of the 5 listed videos are missing on disk" in caplog.text
    assert "v_ApplyEyeMakeup_g09_c01" in caplog.text


def test_no_listed_video_on_disk_is_an_error(tmp_path):
    make_ucf101(tmp_path)
    for video in (tmp_path / "UCF-101").rglob("*.avi"):
        video.unlink()
    with pytest.raises(LayoutError, match="none of the 5 listed videos exists"):
        load_dataset("ucf101", tmp_path, split=1)


# --- hmdb51 ------------------------------------------------------------------------------


@pytest.mark.parametrize("split_dir", [".", "testTrainMulti_7030_splits"])
def test_hmdb51_reads_split_files_in_root_or_subfolder(tmp_path, split_dir):
    for cls, videos in {"wave": ["w1", "w2", "w3"], "brush_hair": ["b1", "b2"]}.items():
        for v in videos:
            touch(tmp_path / cls / f"{v}.avi")
    splits = tmp_path / split_dir
    write_lines(splits / "wave_test_split1.txt", ["w1.avi 1 ", "w2.avi 2 ", "w3.avi 0 "])
    write_lines(splits / "brush_hair_test_split1.txt", ["b1.avi 2 ", "b2.avi 1 "])
    index = load_dataset("hmdb51", tmp_path, split=1)
    assert index.classes == ["brush_hair", "wave"]
    assert summary(index) == [
        ("brush_hair/b1", 0, "test"),
        ("wave/w2", 1, "test"),
        ("brush_hair/b2", 0, "train"),
        ("wave/w1", 1, "train"),
    ]  # w3 is tagged 0: unused by this split
    assert index.records[0].path == tmp_path / "brush_hair" / "b1.avi"


# --- diving48 ----------------------------------------------------------------------------


@pytest.mark.parametrize("with_vocab", [True, False])
def test_diving48(tmp_path, with_vocab):
    touch(tmp_path / "rgb" / "a_00001.mp4")
    touch(tmp_path / "rgb" / "b_00002.mp4")
    entry = {"start_frame": 0, "end_frame": 10}
    touch(
        tmp_path / "Diving48_V2_train.json",
        json.dumps([{"vid_name": "a_00001", "label": 47, **entry}]),
    )
    touch(
        tmp_path / "Diving48_V2_test.json",
        json.dumps(
            [
                {"vid_name": "b_00002", "label": 3, **entry},
                {"vid_name": "c_00003", "label": 3, **entry},
            ]
        ),
    )
    if with_vocab:
        vocab = [["Back", "15som", f"{i:02d}Twis", "FREE"] for i in range(48)]
        touch(tmp_path / "Diving48_vocab.json", json.dumps(vocab))
    index = load_dataset("diving48", tmp_path)
    assert len(index.classes) == 48
    assert index.classes[3] == ("Back_15som_03Twis_FREE" if with_vocab else "class_3")
    assert summary(index) == [("b_00002", 3, "test"), ("a_00001", 47, "train")]
    assert index.missing == ["c_00003"]


# --- ssv2 --------------------------------------------------------------------------------


@pytest.mark.parametrize("video_dir", [".", "20bn-something-something-v2"])
def test_ssv2_looks_labels_up_by_template(tmp_path, video_dir):
    labels = {"Pushing something from left to right": "1", "Holding something": "0"}
    touch(tmp_path / "labels.json", json.dumps(labels))

    def entry(vid, template):
        return {
            "id": vid,
            "label": "holding a cup",
            "template": template,
            "placeholders": ["a cup"],
        }

    touch(
        tmp_path / "something-something-v2-train.json",
        json.dumps(
            [
                entry("12", "Holding [something]"),
                entry("3", "Pushing [something] from left to right"),
            ]
        ),
    )
    touch(
        tmp_path / "something-something-v2-validation.json",
        json.dumps([entry("7", "Holding [something]")]),
    )
    for vid in ("12", "3", "7"):
        touch(tmp_path / video_dir / f"{vid}.webm")
    index = load_dataset("ssv2", tmp_path)
    assert index.classes == ["Holding something", "Pushing something from left to right"]
    assert summary(index) == [("7", 0, "test"), ("12", 0, "train"), ("3", 1, "train")]
    assert index.records[0].path == tmp_path / video_dir / "7.webm"


def test_ssv2_unknown_template_is_an_error(tmp_path):
    touch(tmp_path / "labels.json", json.dumps({"Holding something": "0"}))
    bad = [{"id": "1", "label": "x", "template": "Dropping [something]", "placeholders": []}]
    touch(tmp_path / "something-something-v2-train.json", json.dumps(bad))
    touch(tmp_path / "something-something-v2-validation.json", "[]")
    with pytest.raises(LayoutError, match="template 'Dropping \\[something\\]'"):
        load_dataset("ssv2", tmp_path)


# --- kinetics400 -------------------------------------------------------------------------


@pytest.mark.parametrize(("by_label", "holdout"), [(False, False), (True, False), (False, True)])
def test_kinetics400(tmp_path, by_label, holdout):
    header = "label,youtube_id,time_start,time_end,split,is_cc"
    touch(tmp_path / "train.csv", f"{header}\nabseiling,aaa,14,24,train,0\nzumba,bbb,0,10,train,0\n")
    touch(tmp_path / "val.csv", f"{header}\nzumba,ccc,5,15,val,0\n")
    touch(tmp_path / "test.csv", "youtube_id,time_start,time_end,split\nddd,1,11,test\n")
    for split, label, stem in [
        ("train", "abseiling", "aaa_000014_000024"),
        ("train", "zumba", "bbb_000000_000010"),
        ("val", "zumba", "ccc_000005_000015"),
        ("test", "unknown", "ddd_000001_000011"),
    ]:
        touch(tmp_path / split / (label if by_label else "") / f"{stem}.mp4")
    index = load_dataset("kinetics400", tmp_path, holdout=holdout)
    assert index.classes == ["abseiling", "zumba"]
    assert summary(index) == [
        *([("test/ddd_000001_000011", -1, "holdout")] if holdout else []),
        ("val/ccc_000005_000015", 1, "test"),
        ("train/aaa_000014_000024", 0, "train"),
        ("train/bbb_000000_000010", 1, "train"),
    ]
    assert index.missing == []
    assert all(r.path.is_file() for r in index.records)


# --- folder and manifest -----------------------------------------------------------------


def test_folder_with_classes_only(tmp_path):
    touch(tmp_path / "cats" / "a.MP4")
    touch(tmp_path / "cats" / "notes.txt")
    touch(tmp_path / "cats" / "._a.mp4")  # macOS metadata, not a video
    touch(tmp_path / "dogs" / "sub" / "b.webm")
    (tmp_path / "empty_class").mkdir()
    index = load_dataset("folder", tmp_path)
    assert index.classes == ["cats", "dogs", "empty_class"]
    assert summary(index) == [("cats/a", 0, "train"), ("dogs/sub/b", 1, "train")]
    assert index.records[0].path == tmp_path / "cats" / "a.MP4"


def test_folder_with_split_folders(tmp_path):
    touch(tmp_path / "train" / "cats" / "a.avi")
    touch(tmp_path / "train" / "dogs" / "b.mkv")
    touch(tmp_path / "val" / "dogs" / "c.mov")
    touch(tmp_path / "test" / "birds" / "d.mpg")
    index = load_dataset("folder", tmp_path)
    assert index.classes == ["birds", "cats", "dogs"]
    assert summary(index) == [
        ("test/birds/d", 0, "test"),
        ("train/cats/a", 1, "train"),
        ("train/dogs/b", 2, "train"),
        ("val/dogs/c", 2, "val"),
    ]


def test_folder_names_must_be_unique(tmp_path):
    touch(tmp_path / "cats" / "a.avi")
    touch(tmp_path / "cats" / "a.mp4")
    with pytest.raises(LayoutError, match="two entries share the name 'cats/a'"):
        load_dataset("folder", tmp_path)


@pytest.mark.parametrize("as_folder", [False, True])
def test_manifest(tmp_path, as_folder):
    touch(tmp_path / "clips" / "x.mp4")
    touch(tmp_path / "clips" / "y.mp4")
    touch(tmp_path / "other" / "z.avi")
    elsewhere = tmp_path / "other" / "z.avi"
    rows = [
        "path,label,split",
        "clips/x.mp4,run,",
        "clips/y.mp4,jump,test",
        f"{elsewhere},,test",
        "clips/gone.mp4,run,train",
    ]
    manifest = touch(tmp_path / "manifest.csv", "\n".join(rows) + "\n")
    index = load_dataset("manifest", tmp_path if as_folder else manifest)
    assert index.classes == ["jump", "run"]
    assert summary(index) == [
        (elsewhere.with_suffix("").as_posix(), -1, "test"),
        ("clips/y", 0, "test"),
        ("clips/x", 1, "train"),
    ]
    assert index.records[2].path == tmp_path / "clips" / "x.mp4"
    assert index.missing == ["clips/gone"]


def test_synthetic_reads_an_existing_generated_root(tmp_path):
    touch(tmp_path / "SYNTHETIC.json", "{}")
    touch(tmp_path / "train" / "appearance_red" / "v0.mp4")
    touch(tmp_path / "test" / "temporal_forward" / "v1.mp4")
    index = load_dataset("synthetic", tmp_path)
    assert index.dataset == "synthetic"
    assert index.classes == ["appearance_red", "temporal_forward"]
    assert summary(index) == [
        ("test/temporal_forward/v1", 1, "test"),
        ("train/appearance_red/v0", 0, "train"),
    ]


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in DATASETS if not n.startswith("synthetic")])
def test_missing_root(tmp_path, name):
    with pytest.raises(LayoutError, match=f"{name}: root .*nowhere does not exist"):
        load_dataset(name, tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ucf101", "expected classInd.txt \\(the official split files .*looked in .*ucfTrainTestlist"),
        ("hmdb51", "expected <class>_test_split1.txt \\(the official splits.*testTrainMulti_7030_splits"),
        ("diving48", "expected Diving48_V2_train.json"),
        ("ssv2", "expected labels.json or something-something-v2-labels.json"),
        ("kinetics400", "expected train.csv or kinetics_train.csv"),
        ("folder", "expected .*<class>/<video>.*has no subfolders"),
        ("manifest", "expected .*manifest.csv"),
    ],
)
def test_wrong_layout_says_what_was_expected(tmp_path, name, expected):
    touch(tmp_path / "root" / "README.txt")
    with pytest.raises(LayoutError, match=f"{name}: {expected}"):
        load_dataset(name, tmp_path / "root")


def test_folder_without_videos(tmp_path):
    touch(tmp_path / "cats" / "notes.txt")
    with pytest.raises(LayoutError, match="folder: no videos found; expected video files"):
        load_dataset("folder", tmp_path)


def test_malformed_split_line(tmp_path):
    make_ucf101(tmp_path)
    write_lines(tmp_path / "ucfTrainTestlist" / "testlist01.txt", ["Nope/v_x.avi"])
    with pytest.raises(LayoutError, match=r"testlist01\.txt line 1: expected"):
        load_dataset("ucf101", tmp_path)


@pytest.mark.parametrize(("name", "split"), [("ucf101", 4), ("diving48", 2)])
def test_bad_split_number(tmp_path, name, split):
    with pytest.raises(LayoutError, match=f"expected split .*; got {split}"):
        load_dataset(name, tmp_path, split=split)


def test_unknown_dataset_lists_supported_names(tmp_path):
    with pytest.raises(LayoutError, match="unknown dataset 'ucf102'; supported: ucf101, hmdb51"):
        load_dataset("ucf102", tmp_path)


def test_records_are_deterministic(tmp_path):
    make_ucf101(tmp_path)
    first, second = load_dataset("ucf101", tmp_path), load_dataset("ucf101", str(tmp_path))
    assert first == second
    keys = [(r.split, r.name) for r in first.records]
    assert keys == sorted(keys)
    assert len({r.name for r in first.records}) == len(first.records)
