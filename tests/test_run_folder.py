"""A run folder under stress: two runs into one folder, a learning rate that breaks the weights,
a full disk or a read-only folder mid-run. Each case broke at 96c9d02 (the red-team pass): runs
mixed, a checkpoint of 2.5e29-sized weights was called good, disk faults ended in tracebacks."""

from __future__ import annotations

import errno
import os
import re
import threading
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, train_config
from typer.testing import CliRunner

from advise_cache import atomic
from advise_cache import checkpoint as checkpoint_mod
from advise_cache.checkpoint import load_checkpoint
from advise_cache.cli import app
from advise_cache.errors import AdviseCacheError, DiskError
from advise_cache.train import TrainingDiverged, train

runner = CliRunner()


def test_a_second_run_into_a_busy_folder_is_refused_and_the_first_stays_whole(synthetic_store, tmp_path):
    run = tmp_path / "run"
    started, second_tried = threading.Event(), threading.Event()

    def hold(step, loss):  # the first run waits, mid-epoch, until the second has tried
        if step == 1:
            started.set()
            second_tried.wait(60)

    first = threading.Thread(target=train, args=(train_config(synthetic_store, run, epochs=1, seed=0), hold))
    first.start()
    try:
        assert started.wait(60)
        with pytest.raises(AdviseCacheError, match=r"is in use by another run"):
            train(train_config(synthetic_store, run, epochs=1, seed=1))
    finally:
        second_tried.set()
        first.join()
    assert load_checkpoint(run).meta.config.seed == 0
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 7))  # one run's lines only
    train(train_config(synthetic_store, tmp_path / "after", epochs=1))  # a finished run lets go


def test_refused_before_its_first_write_a_run_leaves_no_folder(tmp_path):
    with pytest.raises(AdviseCacheError):
        train(train_config(tmp_path / "no-such.zarr", tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("lr", [1e30, 1e10])
def test_weights_broken_by_the_last_update_are_never_called_good(synthetic_store, tmp_path, lr):
    # One step an epoch (96 clips, batch 96): the checkpoint after step 1 holds weights that one
    # AdamW step at this lr made ~lr-sized. The epoch's logged loss is that of the weights before
    # the step, and was fine; 96c9d02 saved them and named them the last good checkpoint.
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"No good checkpoint was written$"):
        train(train_config(synthetic_store, run, epochs=3, batch_size=96, lr=lr))
    assert not (run / "checkpoint.pt").exists()


def test_a_good_checkpoint_is_kept_and_named_when_a_later_update_breaks_the_weights(synthetic_store, tmp_path):
    run = tmp_path / "run"
    train(train_config(synthetic_store, run, epochs=3, batch_size=96, max_steps=1))
    before = load_checkpoint(run)
    with pytest.raises(TrainingDiverged, match=r"The last good checkpoint is .*checkpoint\.pt$"):
        train(train_config(synthetic_store, run, epochs=3, batch_size=96, lr=1e30, resume=True, override=True))
    after = load_checkpoint(run)
    assert after.step == before.step == 1
    assert all(torch.equal(before.model[k], after.model[k]) for k in before.model)


def disk_with(free: int):
    """atomic.write_all on a disk with `free` bytes left: it writes what fits, then raises
    ENOSPC as write(2) does, leaving the file cut there."""
    real, left = atomic.write_all, [free]

    def write_all(fd: int, buffers: list) -> None:
        for buf in buffers:
            view = memoryview(buf).cast("B")
            n = min(view.nbytes, left[0])
            left[0] -= n
            real(fd, [view[:n]])
            if n < view.nbytes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write_all


def cli_train(cache: Path, out: Path, *extra: str):
    args = ["train", "--cache", str(cache), "--out", str(out)]
    args += "--epochs 2 --batch-size 16 --hidden 32 --out-dim 64 --device cpu --loader-threads 2 --log-every 1".split()
    return runner.invoke(app, [*args, *extra])


def one_line(result) -> str:
    """The one line a user reads once the progress bar (tqdm, on stderr beside it) is gone."""
    lines = [t for t in re.split(r"[\r\n]", result.stderr) if t.strip() and not re.match(r"prp [\w-]+:\s+\d+%\|", t)]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("where", ["second checkpoint", "metrics line"])
def test_a_full_disk_mid_run_is_one_line_and_the_resumed_run_is_the_same(synthetic_store, tmp_path, monkeypatch, where):
    reference = tmp_path / "reference"
    assert cli_train(synthetic_store, reference).exit_code == 0
    run = tmp_path / "run"
    first_checkpoint = (reference / "checkpoint.pt").stat().st_size
    # The bytes a run writes through write_all before the fault: config, metrics lines of the
    # first epoch, its checkpoint; then the disk fills inside the next write of that kind.
    if where == "second checkpoint":
        free = first_checkpoint + 40_000
    else:
        free = 3_000  # config.json and a few metric lines
    monkeypatch.setattr(atomic, "write_all", disk_with(free))
    line = one_line(cli_train(synthetic_store, run))
    monkeypatch.undo()
    file = run / ("checkpoint.pt" if where == "second checkpoint" else "metrics.jsonl")
    assert line.startswith(f"error: cannot write {file}: No space left on device; free space there")
    assert line.endswith("then add --resume to the same command to continue from the last checkpoint")
    assert not list(run.glob(".*.tmp"))  # no cut temporary file holding the space
    assert cli_train(synthetic_store, run, "--resume").exit_code == 0
    a, b = load_checkpoint(reference), load_checkpoint(run)
    assert a.step == b.step == 12
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    drop = ("clips_per_s", "data_wait_frac", "seconds")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]  # noqa: E731
    for kind in ("step", "epoch"):
        assert strip(read_metrics(run, kind)) == strip(read_metrics(reference, kind))


def test_a_run_folder_in_a_read_only_place_is_one_line(synthetic_store, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    real = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).is_relative_to(ro):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    line = one_line(cli_train(synthetic_store, ro / "run"))
    assert line == f"error: cannot write {ro / 'run'}: Read-only file system; choose a folder you can write to"


def test_a_disk_error_is_a_disk_error_only(tmp_path):
    # Other OSErrors are bugs, not user errors: they keep their traceback.
    with pytest.raises(DiskError, match="Disk quota exceeded; free space there"):
        with checkpoint_mod.writing(tmp_path):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    with pytest.raises(OSError, match="Bad file descriptor"):
        with checkpoint_mod.writing(tmp_path):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))


def test_finetune_resume_of_no_run_needs_init_or_scratch(synthetic_store, tmp_path):
    r = runner.invoke(
        app,
        ["finetune", "--cache", str(synthetic_store), "--out", str(tmp_path / "ft"), "--resume", "--device", "cpu"],
    )
    assert one_line(r) == (
        f"error: --resume: {tmp_path / 'ft'} holds no run to continue; start it with --init CHECKPOINT or --scratch"
    )
    assert not (tmp_path / "ft").exists()
