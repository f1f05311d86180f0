"""Each dataset as its users download it, and as the toolkits re-package it.

Tiny trees in each distribution's real layout (empty files stand in for videos: adapters
only read paths), checked for classes, labels, splits and counts exactly. Every tree lives
in tmp_path/<something> so that the nearby-file search of an error sees only this test.
"""

import json
from pathlib import Path

import pytest

from advise_cache.datasets import default_root, load_dataset
from advise_cache.errors import LayoutError


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def crlf(path: Path, lines: list[str]) -> Path:
    return touch(path, "\r\n".join(lines) + "\r\n")


def summary(index) -> list[tuple[str, int, str]]:
    return [(r.name, r.label, r.split) for r in index.records]


# --- ucf101 ------------------------------------------------------------------------------

UCF_VIDEOS = [
    "Archery/v_Archery_g01_c01.avi",
    "Archery/v_Archery_g02_c01.avi",
    "Bowling/v_Bowling_g01_c01.avi",
    "Bowling/v_Bowling_g02_c01.avi",
]


def ucf_lists(folder: Path) -> None:
    crlf(folder / "classInd.txt", ["1 Archery", "2 Bowling"])
    crlf(folder / "trainlist01.txt", [f"{UCF_VIDEOS[1]} 1", f"{UCF_VIDEOS[3]} 2"])
    crlf(folder / "testlist01.txt", [UCF_VIDEOS[0], UCF_VIDEOS[2]])


UCF_EXPECTED = [
    ("Archery/v_Archery_g01_c01", 0, "test"),
    ("Bowling/v_Bowling_g01_c01", 1, "test"),
    ("Archery/v_Archery_g02_c01", 0, "train"),
    ("Bowling/v_Bowling_g02_c01", 1, "train"),
]


def test_ucf101_mmaction2_layout(tmp_path):
    root = tmp_path / "ucf101"
    ucf_lists(root / "annotations")  # unzip -j of the split files
    for v in UCF_VIDEOS:
        touch(root / "videos" / v)  # UCF-101 renamed to videos/
    index = load_dataset("ucf101", root)
    assert index.classes == ["Archery", "Bowling"]
    assert summary(index) == UCF_EXPECTED
    assert index.records[0].path == root / "videos" / UCF_VIDEOS[0]
    assert [p.name for p in index.annotations] == ["classInd.txt", "trainlist01.txt", "testlist01.txt"]
    assert index.source() == {"split": 1, "annotations": [str(p) for p in index.annotations], "missing": []}


def test_ucf101_torchvision_layout_with_annotations_elsewhere(tmp_path):
    videos, lists = tmp_path / "UCF-101", tmp_path / "splits" / "ucfTrainTestlist"
    ucf_lists(lists)
    for v in UCF_VIDEOS:
        touch(videos / v)
    index = load_dataset("ucf101", videos, annotations=tmp_path / "splits")
    assert summary(index) == UCF_EXPECTED
    assert index.annotations[0] == lists / "classInd.txt"


def test_ucf101_root_one_folder_too_deep_says_which_root_works(tmp_path):
    ucf_lists(tmp_path / "ucfTrainTestlist")
    for v in UCF_VIDEOS:
        touch(tmp_path / "UCF-101" / v)
    with pytest.raises(LayoutError) as e:
        load_dataset("ucf101", tmp_path / "UCF-101")
    msg = str(e.value)
    assert msg.startswith("ucf101: expected classInd.txt (the official split files (https://www.crcv")
    assert f"looked in {tmp_path}/UCF-101/ucfTrainTestlist, {tmp_path}/UCF-101/annotations, " in msg
    assert f"found {tmp_path}/ucfTrainTestlist/classInd.txt: try --root {tmp_path} (or " in msg
    assert f"--annotations {tmp_path}/ucfTrainTestlist)" in msg
    # ... and what it suggests works
    assert summary(load_dataset("ucf101", tmp_path)) == UCF_EXPECTED


def test_videos_in_the_wrong_folder_says_where_they_are(tmp_path):
    root = tmp_path / "ucf101"
    ucf_lists(root / "ucfTrainTestlist")
    for v in UCF_VIDEOS:
        touch(root / "UCF101" / "UCF-101-videos" / v)
    with pytest.raises(LayoutError, match="none of the 4 listed videos exists") as e:
        load_dataset("ucf101", root)
    assert f"the videos are in {root}/UCF101/UCF-101-videos, not in {root}" in str(e.value)


def test_a_missing_split_file_names_what_it_sees_instead(tmp_path):
    root = tmp_path / "hmdb51"
    touch(root / "split_info.txt")
    touch(root / "annotations" / "readme.txt")
    with pytest.raises(LayoutError) as e:
        load_dataset("hmdb51", root)
    assert str(e.value).startswith(
        "hmdb51: expected <class>_test_split1.txt (the official splits (http://serre-lab.clps.brown.edu/"
    )
    assert f"nothing of that name within {root}; nearby it sees split_info.txt, readme.txt" in str(e.value)


# --- hmdb51 ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["official", "mmaction2"])
def test_hmdb51_classes_in_sorted_class_name_order(tmp_path, layout):
    root = tmp_path / "hmdb51"
    splits = root / ("testTrainMulti_7030_splits" if layout == "official" else "annotations")
    videos = root if layout == "official" else root / "videos"
    # Sorted split-file names put climb_stairs before climb; torchvision and mmaction2 number
    # the classes in sorted class-name order: climb 0, climb_stairs 1, kick 2, kick_ball 3.
    for cls in ("kick_ball", "climb_stairs", "kick", "climb"):
        crlf(splits / f"{cls}_test_split1.txt", [f"{cls}_a.avi 1 ", f"{cls}_b.avi 2 ", f"{cls}_c.avi 0 "])
        crlf(splits / f"{cls}_test_split2.txt", [f"{cls}_a.avi 2 ", f"{cls}_b.avi 1 ", f"{cls}_c.avi 1 "])
        for v in "abc":
            touch(videos / cls / f"{cls}_{v}.avi")
    index = load_dataset("hmdb51", root, split=2)
    assert index.classes == ["climb", "climb_stairs", "kick", "kick_ball"]
    assert [(r.name.split("/")[0], r.label) for r in index.select("test")] == [
        ("climb", 0),
        ("climb_stairs", 1),
        ("kick", 2),
        ("kick_ball", 3),
    ]
    assert len(index.select("train")) == 8 and index.missing == []
    assert index.select("test")[0].path == videos / "climb" / "climb_a.avi"
    assert index.official_split == 2 and len(index.annotations) == 4


def test_hmdb51_class_archives_left_packed_are_named(tmp_path):
    root = tmp_path / "hmdb51"
    crlf(root / "testTrainMulti_7030_splits" / "wave_test_split1.txt", ["w1.avi 1", "w2.avi 2"])
    touch(root / "hmdb51_org" / "wave.rar")
    with pytest.raises(
        LayoutError, match="none of the 2 listed videos exists; .*found the archives wave.rar: unpack them first"
    ):
        load_dataset("hmdb51", root)


# --- diving48 ----------------------------------------------------------------------------


def test_diving48_mmaction2_layout(tmp_path):
    root = tmp_path / "diving48"
    ann = root / "annotations"
    touch(
        ann / "Diving48_V2_train.json", json.dumps([{"vid_name": "a1", "label": 5, "start_frame": 0, "end_frame": 9}])
    )
    touch(ann / "Diving48_V2_test.json", json.dumps([{"vid_name": "b2", "label": 7, "start_frame": 0, "end_frame": 9}]))
    touch(ann / "Diving48_vocab.json", json.dumps([["Back", "1som", f"{i:02d}Twis", "NO"] for i in range(48)]))
    touch(root / "videos" / "a1.mp4")
    touch(root / "videos" / "b2.mp4")
    index = load_dataset("diving48", root)
    assert summary(index) == [("b2", 7, "test"), ("a1", 5, "train")]
    assert index.classes[7] == "Back_1som_07Twis_NO"
    assert index.records[0].path == root / "videos" / "b2.mp4"


# --- ssv2 --------------------------------------------------------------------------------

SSV2_LABELS = {"Holding something": "0", "Pushing something from left to right": "1"}


def ssv2_entry(vid: str, template: str) -> dict:
    return {"id": vid, "label": "x", "template": template, "placeholders": ["a cup"]}


def write_ssv2(folder: Path, names: dict[str, str]) -> None:
    touch(folder / names["labels"], json.dumps(SSV2_LABELS))
    touch(
        folder / names["train"],
        json.dumps(
            [ssv2_entry("12", "Holding [something]"), ssv2_entry("3", "Pushing [something] from left to right")]
        ),
    )
    touch(folder / names["validation"], json.dumps([ssv2_entry("7", "Holding [something]")]))
    touch(folder / names["test"], json.dumps([{"id": "99"}, {"id": "98"}]))


CURRENT = {r: f"{r}.json" for r in ("labels", "train", "validation", "test")}
TWENTY_BN = {r: f"something-something-v2-{r}.json" for r in ("labels", "train", "validation", "test")}


@pytest.mark.parametrize(
    ("names", "ann_dir", "video_dir"),
    [
        (CURRENT, "labels", "20bn-something-something-v2"),  # the current download
        (TWENTY_BN, ".", "20bn-something-something-v2"),  # the original 20BN files
        (TWENTY_BN, "annotations", "videos"),  # mmaction2
    ],
)
@pytest.mark.parametrize("holdout", [False, True])
def test_ssv2_as_distributed(tmp_path, names, ann_dir, video_dir, holdout):
    root = tmp_path / "ssv2"
    write_ssv2(root / ann_dir, names)
    for vid in ("12", "3", "7", "99"):  # test video 98 was never downloaded
        touch(root / video_dir / f"{vid}.webm")
    index = load_dataset("ssv2", root, holdout=holdout)
    assert index.classes == ["Holding something", "Pushing something from left to right"]
    assert summary(index) == [
        *([("99", -1, "holdout")] if holdout else []),
        ("7", 0, "test"),
        ("12", 0, "train"),
        ("3", 1, "train"),
    ]
    assert index.missing == (["98"] if holdout else [])
    assert index.records[-1].path == root / video_dir / "3.webm"
    assert [p.name for p in index.annotations] == [
        names[r] for r in ("labels", "train", "validation", *(["test"] if holdout else []))
    ]


# --- kinetics400 -------------------------------------------------------------------------

K_HEADER = "label,youtube_id,time_start,time_end,split,is_cc"


def kinetics_csvs(folder: Path, val_name: str = "val.csv", prefix: str = "", labelled_test=False) -> None:
    touch(
        folder / f"{prefix}train.csv",
        f"{K_HEADER}\n"
        "abseiling,aaa,14,24,train,0\nzumba,bbb,0,10,train,0\n"
        "abseiling,gone1,1,11,train,0\nzumba,bad,3,13,train,0\n",
    )
    touch(folder / f"{prefix}{val_name}", f"{K_HEADER}\nzumba,ccc,5,15,val,0\nabseiling,gone2,2,12,val,0\n")
    if labelled_test:
        touch(folder / f"{prefix}test.csv", f"{K_HEADER}\nzumba,ddd,1,11,test,0\n")
    else:  # the unlabelled test.csv of some mirrors
        touch(folder / f"{prefix}test.csv", "youtube_id,time_start,time_end,split\nddd,1,11,test\n")


@pytest.mark.parametrize("holdout", [False, True])
def test_kinetics400_cvdf(tmp_path, holdout):
    root = tmp_path / "k400"
    kinetics_csvs(root / "annotations")
    for split, stem in [
        ("train", "aaa_000014_000024"),
        ("train", "bbb_000000_000010"),
        ("train", "bad_000003_000013"),
        ("val", "ccc_000005_000015"),
        ("test", "ddd_000001_000011"),
    ]:
        touch(root / split / f"{stem}.mp4")
    replacement = touch(root / "replacement" / "replacement_for_corrupted_k400" / "bad_000003_000013.mp4")
    index = load_dataset("kinetics400", root, holdout=holdout)
    assert index.classes == ["abseiling", "zumba"]
    assert summary(index) == [
        *([("test/ddd_000001_000011", -1, "holdout")] if holdout else []),
        ("val/ccc_000005_000015", 1, "test"),
        ("train/aaa_000014_000024", 0, "train"),
        ("train/bad_000003_000013", 1, "train"),
        ("train/bbb_000000_000010", 1, "train"),
    ]
    assert index.missing == ["train/gone1_000001_000011", "val/gone2_000002_000012"]
    by_name = {r.name: r.path for r in index.records}
    assert by_name["train/bad_000003_000013"] == replacement  # not the corrupt original
    assert by_name["val/ccc_000005_000015"] == root / "val" / "ccc_000005_000015.mp4"
    assert [p.name for p in index.annotations] == ["train.csv", "val.csv", *(["test.csv"] if holdout else [])]


def test_kinetics400_deepmind_validate_csv(tmp_path):
    root = tmp_path / "k400"
    kinetics_csvs(root / "kinetics400", val_name="validate.csv", labelled_test=True)
    for split, label, stem in [
        ("train", "zumba", "bbb_000000_000010"),
        ("val", "zumba", "ccc_000005_000015"),
        ("test", "zumba", "ddd_000001_000011"),
    ]:
        touch(root / split / label / f"{stem}.mp4")  # torchvision's <split>/<label>/
    index = load_dataset("kinetics400", root, holdout=True)
    assert summary(index) == [
        ("test/ddd_000001_000011", 1, "holdout"),  # this mirror's test.csv has labels
        ("val/ccc_000005_000015", 1, "test"),
        ("train/bbb_000000_000010", 1, "train"),
    ]
    assert index.annotations[1] == root / "kinetics400" / "validate.csv"
    assert index.missing == [
        "train/aaa_000014_000024",
        "train/bad_000003_000013",
        "train/gone1_000001_000011",
        "val/gone2_000002_000012",
    ]


def test_kinetics400_mmaction2(tmp_path):
    root = tmp_path / "kinetics400"
    kinetics_csvs(root / "annotations", prefix="kinetics_")
    touch(root / "videos_train" / "abseiling" / "aaa_000014_000024.mp4")
    touch(root / "videos_val" / "zumba" / "ccc_000005_000015.mp4")
    index = load_dataset("kinetics400", root)
    assert summary(index) == [("val/ccc_000005_000015", 1, "test"), ("train/aaa_000014_000024", 0, "train")]
    assert index.records[1].path == root / "videos_train" / "abseiling" / "aaa_000014_000024.mp4"
    assert index.annotations[1].name == "kinetics_val.csv"


def test_kinetics400_without_an_evaluation_csv_is_an_error(tmp_path):
    root = tmp_path / "k400"
    touch(root / "annotations" / "train.csv", f"{K_HEADER}\nzumba,bbb,0,10,train,0\n")
    touch(root / "train" / "bbb_000000_000010.mp4")
    with pytest.raises(LayoutError, match="expected val.csv or validate.csv or kinetics_val.csv"):
        load_dataset("kinetics400", root)


# --- folder and manifest -----------------------------------------------------------------


def test_folder_refuses_split_folders_beside_other_folders(tmp_path):
    root = tmp_path / "clips"
    touch(root / "train" / "cats" / "a.mp4")
    touch(root / "test" / "cats" / "b.mp4")
    touch(root / "annotations" / "cats" / "notes.mp4")
    with pytest.raises(
        LayoutError,
        match="cannot tell splits from classes .*split folders test, train and the other folders annotations",
    ):
        load_dataset("folder", root)


def test_folder_ignores_macos_archive_folders(tmp_path):
    root = tmp_path / "clips"
    touch(root / "train" / "cats" / "a.mp4")
    touch(root / "test" / "dogs" / "b.mp4")
    touch(root / "__MACOSX" / "train" / "cats" / "._a.mp4")
    touch(root / "train" / "cats" / "__MACOSX" / "x.mp4")
    index = load_dataset("folder", root)
    assert index.classes == ["cats", "dogs"]
    assert summary(index) == [("test/dogs/b", 1, "test"), ("train/cats/a", 0, "train")]


def test_manifest_saved_by_excel_with_a_byte_order_mark(tmp_path):
    root = tmp_path / "mine"
    for v in "abcd":
        touch(root / f"{v}.mp4")
    rows = ["path,label,split", "a.mp4,10,train", "b.mp4,2,train", "c.mp4,1,test", "d.mp4,2,test"]
    (root / "manifest.csv").write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    index = load_dataset("manifest", root)
    assert index.classes == ["1", "2", "10"]  # numeric order, not "1", "10", "2"
    assert summary(index) == [("c", 0, "test"), ("d", 1, "test"), ("a", 2, "train"), ("b", 1, "train")]


def test_manifest_header_mismatch_shows_the_header_found(tmp_path):
    touch(tmp_path / "m" / "manifest.csv", "file;class\nx.mp4;a\n")
    with pytest.raises(LayoutError, match=r"header path,label,split; found \['file;class'\]"):
        load_dataset("manifest", tmp_path / "m")


# --- options -----------------------------------------------------------------------------


def test_default_root_follows_advise_data(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISE_DATA", str(tmp_path / "datasets"))
    assert default_root("UCF101") == tmp_path / "datasets" / "ucf101"
    ucf_lists(tmp_path / "datasets" / "ucf101" / "ucfTrainTestlist")
    for v in UCF_VIDEOS:
        touch(tmp_path / "datasets" / "ucf101" / "UCF-101" / v)
    assert summary(load_dataset("ucf101")) == UCF_EXPECTED
    monkeypatch.delenv("ADVISE_DATA")
    monkeypatch.chdir(tmp_path)
    assert default_root("ucf101") == Path("data/ucf101")
    with pytest.raises(
        LayoutError,
        match=r"root .*/data/ucf101 does not exist; point --root at the "
        r"dataset \(default: \$ADVISE_DATA/ucf101, or data/ucf101",
    ):
        load_dataset("ucf101")


@pytest.mark.parametrize(
    ("name", "kw", "message"),
    [
        ("ucf101", {"holdout": True}, "ucf101: has no unlabelled test set; --holdout applies to kinetics400, ssv2"),
        ("folder", {"annotations": "."}, "folder: takes no --annotations"),
        ("ucf101", {"annotations": "nowhere"}, "ucf101: --annotations .*nowhere is not a folder"),
    ],
)
def test_options_that_do_not_apply_are_errors(tmp_path, name, kw, message):
    (tmp_path / "root").mkdir()
    with pytest.raises(LayoutError, match=message):
        load_dataset(name, tmp_path / "root", **kw)
