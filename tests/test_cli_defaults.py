"""The README's commands as typed: default dataset root, store and run folder; missing
videos reported with the default logging, counted, recorded and shown by `info`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST_EXTRACT, write_video
from typer.testing import CliRunner

from advise_cache.cli import _setup_logging, app
from advise_cache.cli_train import default_run_dir
from advise_cache.store import open_store

runner = CliRunner()
FAST = [*FAST_EXTRACT, *"--frames-per-shard 8 --batch-size 16".split()]
LISTED = {  # class -> (train videos, test videos); two of them never downloaded
    "Archery": (["v_Archery_g02_c01", "v_Archery_g03_c01"], ["v_Archery_g01_c01"]),
    "Bowling": (["v_Bowling_g02_c01", "v_Bowling_g03_c01"], ["v_Bowling_g01_c01"]),
}
GONE = {"Archery/v_Archery_g03_c01", "Bowling/v_Bowling_g01_c01"}


@pytest.fixture(scope="module", autouse=True)
def cli_logging_only():
    """This module tests the CLI's own logging set-up; in-process runs of other tests
    (pipelines/studies/ablation.py) leave a handler on the advise_cache logger, bound to a capture
    stream that is closed by now, and stop propagation. Set them aside meanwhile."""
    logger = logging.getLogger("advise_cache")
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers.clear()
    logger.propagate, logger.level = True, logging.NOTSET
    yield
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]


@pytest.fixture(scope="module")
def ucf_workdir(tmp_path_factory) -> Path:
    """A folder with data/ucf101 in the official UCF101 layout (tiny real videos)."""
    work = tmp_path_factory.mktemp("work")
    root = work / "data" / "ucf101"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 Archery\r\n2 Bowling\r\n")
    train, test = [], []
    for i, (cls, (tr, te)) in enumerate(LISTED.items()):
        train += [f"{cls}/{v}.avi {i + 1}" for v in tr]
        test += [f"{cls}/{v}.avi" for v in te]
        for j, v in enumerate(tr + te):
            if f"{cls}/{v}" not in GONE:
                write_video(root / "UCF-101" / cls / f"{v}.avi", frames=10 + j, seed=j, size=(32, 32))
    (lists / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")
    (lists / "testlist01.txt").write_text("\r\n".join(test) + "\r\n")
    return work


@pytest.fixture(scope="module")
def ucf_store(ucf_workdir) -> tuple[Path, object]:
    """`advise-cache extract ucf101` run in that folder, with no --root and no --out."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ucf_workdir)
        mp.delenv("ADVISE_DATA", raising=False)
        result = runner.invoke(app, ["extract", "ucf101", *FAST])
    return ucf_workdir / "ucf101.zarr", result


def test_extract_reads_the_default_root_and_writes_the_default_store(ucf_workdir, ucf_store):
    path, result = ucf_store
    assert result.exit_code == 0, result.output
    store = open_store(path)
    assert store.meta["root"] == str(ucf_workdir / "data" / "ucf101")
    assert sorted(store.videos.name.tolist()) == sorted(
        f"{c}/{v}" for c, (tr, te) in LISTED.items() for v in tr + te if f"{c}/{v}" not in GONE
    )
    assert "videos: 4 extracted, 0 already done, 0 failed (of 4); 2 listed videos missing on disk" in result.stdout


def test_missing_videos_are_reported_with_the_default_logging(ucf_store):
    _, result = ucf_store
    assert (
        "WARNING advise_cache.datasets: ucf101: 2 of the 6 listed videos are missing on disk "
        "and will not be extracted (first: Archery/v_Archery_g03_c01, Bowling/v_Bowling_g01_c01)"
    ) in result.stderr


def test_info_shows_split_sources_and_missing_videos(ucf_workdir, ucf_store):
    path, _ = ucf_store
    root = ucf_workdir / "data" / "ucf101"
    text = runner.invoke(app, ["info", str(path)])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0] == f"{path}: dataset ucf101 split 1, 4 videos (test 1, train 3), 2 classes"
    assert lines[1] == (
        f"  from {root}; annotations classInd.txt, trainlist01.txt, testlist01.txt in {root / 'ucfTrainTestlist'}"
    )
    assert lines[2] == (
        "  2 listed videos missing on disk, not extracted: Archery/v_Archery_g03_c01, Bowling/v_Bowling_g01_c01"
    )
    info = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    assert info["missing"] == sorted(GONE) and info["split"] == 1 and info["format"] == 3
    assert info["annotations"][0] == str(root / "ucfTrainTestlist" / "classInd.txt")


def test_another_split_into_the_same_store_names_both_splits(ucf_workdir, ucf_store):
    lists = ucf_workdir / "data" / "ucf101" / "ucfTrainTestlist"
    (lists / "trainlist02.txt").write_text("Archery/v_Archery_g02_c01.avi 1\r\n")
    (lists / "testlist02.txt").write_text("Bowling/v_Bowling_g02_c01.avi\r\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ucf_workdir)
        result = runner.invoke(app, ["extract", "ucf101", "--split", "2", *FAST])
    assert result.exit_code == 2
    assert "(ucf101 split 1, 4 videos; now ucf101 split 2, 2 videos). Use a new --out" in result.stderr


def test_train_without_out_writes_a_documented_run_folder(ucf_workdir, ucf_store, monkeypatch):
    monkeypatch.chdir(ucf_workdir)
    # Rates up to 4: at rate 8 a clip's frames would be more than these 11-frame videos apart.
    args = (
        "train --cache ucf101.zarr --epochs 1 --batch-size 4 --hidden 8 --out-dim 16 --device cpu --loader-threads 1 "
        "--rates 1,2,4"
    ).split()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "run folder: runs/ucf101-prp"
    assert (ucf_workdir / "runs" / "ucf101-prp" / "checkpoint.pt").is_file()


def test_default_run_folders_do_not_collide():
    assert default_run_dir(Path("data/ucf101.zarr"), "prp") == Path("runs/ucf101-prp")
    assert default_run_dir(Path("ucf101.zarr/"), "classify") == Path("runs/ucf101-ft")
    assert default_run_dir(Path("ucf101.zarr"), "classify", scratch=True) == Path("runs/ucf101-scratch")
    assert default_run_dir(Path("ucf101.zarr"), "classify", scratch=True, tmm="none") == Path("runs/ucf101-scratch-avg")


def test_logging_shows_our_warnings_and_only_errors_of_other_libraries(capsys):
    ours, theirs = logging.getLogger("advise_cache.datasets"), logging.getLogger("somelib")
    try:
        _setup_logging(verbose=False)
        assert logging.getLogger("huggingface_hub").level == logging.ERROR
        ours.info("probing")
        ours.warning("3 listed videos are missing")
        theirs.warning("no weights in the cache")
        theirs.error("hub unreachable")
        assert capsys.readouterr().err.splitlines() == [
            "WARNING advise_cache.datasets: 3 listed videos are missing",
            "ERROR somelib: hub unreachable",
        ]
        _setup_logging(verbose=True)
        ours.debug("details")
        theirs.info("chatter")
        assert capsys.readouterr().err.splitlines() == ["DEBUG advise_cache.datasets: details", "INFO somelib: chatter"]
    finally:  # the levels the next tests expect
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("huggingface_hub").setLevel(logging.WARNING)


# The CLI as `advise-cache` runs it, several commands in one process, then which heavy modules
# were imported by the end.
_COMMANDS = """
import sys
from advise_cache.cli import app
for argv in eval(sys.argv[1]):
    try:
        app(argv, prog_name="advise-cache")
    except SystemExit as e:
        assert e.code == 0, (argv, e.code)
print("heavy:", sorted(m for m in ("torch", "zarr") if m in sys.modules))
"""


def _heavy_imports(commands: list[list[str]]) -> str:
    r = subprocess.run([sys.executable, "-c", _COMMANDS, repr(commands)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()[-1]


def test_help_imports_neither_torch_nor_zarr():
    """`advise-cache --help` and a command's --help answer at once: the configs the flags' defaults
    come from import neither torch nor zarr (seconds between them), nor does the CLI itself."""
    assert _heavy_imports([["--help"], ["extract", "--help"], ["train", "--help"]]) == "heavy: []"


def test_info_and_verify_do_not_import_torch(synthetic_store):
    """Reading a store's summary or checking it needs zarr, not torch (int8 rows decode in numpy)."""
    assert _heavy_imports([["info", str(synthetic_store)], ["verify", str(synthetic_store)]]) == "heavy: ['zarr']"
