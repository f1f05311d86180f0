"""A full disk or a read-only destination during extract (issue 15): one clear line, exit 2,
a store that stays consistent, and a rerun that continues.

We run as root in CI, where chmod does not stop a write, so the errors are injected where the
kernel would raise them: the writes of shard files (`atomic.write_all`, a disk with so many
bytes free, cutting a file where the disk ends), `os.mkdir` and `os.access`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_EXTRACT, extract_config, write_folder_tree
from typer.testing import CliRunner

from advise_cache import atomic
from advise_cache.cli import app
from advise_cache.extract import extract_videos
from advise_cache.integrity import verify
from advise_cache.store import DONE, PENDING, open_store

runner = CliRunner()
FRAMES = (7, 10, 12, 9)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_folder_tree(tmp_path_factory.mktemp("videos"), FRAMES)


@pytest.fixture(scope="module")
def reference(root, tmp_path_factory) -> Path:
    """The store an undisturbed run makes."""
    out = tmp_path_factory.mktemp("reference") / "s.zarr"
    assert extract_videos(extract_config(root, out, dataset="folder", frames_per_shard=4)).done == len(FRAMES)
    return out


def args(root: Path, out: Path) -> list[str]:
    where = ["extract", "folder", "--root", str(root), "--out", str(out)]
    return [*where, *FAST_EXTRACT, *"--frames-per-shard 4 --batch-size 16".split()]


def messages(output: str) -> list[str]:
    """What a user reads once the progress bars (tqdm, on stderr beside the message) are gone."""
    bar = re.compile(r"(probe|extract [\w.-]+):\s+\d+%\|")
    return [t for t in re.split(r"[\r\n]", output) if t.strip() and not bar.match(t)]


def disk_with(free: int):
    """atomic.write_all on a disk with `free` bytes left: it writes what fits, then raises
    ENOSPC as write(2) does, leaving the file cut there."""
    real, lock, left = atomic.write_all, threading.Lock(), [free]

    def write_all(fd: int, buffers: list) -> None:
        for buf in buffers:
            view = memoryview(buf).cast("B")
            with lock:
                n = min(view.nbytes, left[0])
                left[0] -= n
            real(fd, [view[:n]])
            if n < view.nbytes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write_all


def test_a_full_disk_ends_in_one_line_a_consistent_store_and_a_rerun_that_continues(
    root, reference, tmp_path, monkeypatch
):
    out = tmp_path / "s.zarr"
    tokens = open_store(reference).ifm("test-vit").tokens
    frame = int(np.prod(tokens.shape[1:])) * tokens.dtype.itemsize
    # Room for about one and a half videos' shards: some get written whole, one is cut.
    # One writer thread, so which shard meets the end of the disk is always the same.
    monkeypatch.setattr(atomic, "write_all", disk_with(int(frame * 1.5 * FRAMES[0])))
    r = runner.invoke(app, [*args(root, out), "--writers", "1"])
    monkeypatch.undo()
    assert r.exit_code == 2, r.output
    told = f"error: writing {out} failed: No space left on device; fix that and run the same command again"
    assert messages(r.output) == [told + " to continue"], r.output

    # Consistent: the only problems verify finds are the videos not written yet; none failed.
    store = open_store(out)
    status = store.ifm("test-vit").status()
    assert set(status) <= {DONE, PENDING} and (status == PENDING).any() and (status == DONE).any(), status
    pending = {f"test-vit: {store.videos.name[v]}: not extracted yet" for v in np.flatnonzero(status == PENDING)}
    assert set(verify(store)) == pending
    ref = open_store(reference).ifm("test-vit")
    for v in np.flatnonzero(status == DONE):
        assert np.array_equal(store.ifm("test-vit").read_video(int(v)), ref.read_video(int(v)))

    # The same command again, with room: it continues (done videos stay done) and ends whole.
    r = runner.invoke(app, args(root, out))
    assert r.exit_code == 0, r.output
    assert f"videos: {int((status == PENDING).sum())} extracted, {int((status == DONE).sum())} already done" in r.output
    assert verify(open_store(out), deep=True) == []
    assert np.array_equal(open_store(out).ifm("test-vit").tokens[:], ref.tokens[:])


def _refuse_writes_in(folder: Path, monkeypatch, how: str) -> None:
    """`folder` as on a read-only file system (access(2) says so, or mkdir(2) fails with
    EROFS), or on a disk that fills after zarr has written three files there."""
    if how == "full":
        from zarr.storage import _local

        real_put, files = _local._put, []

        def put(path, value, exclusive=False):
            if folder in Path(path).parents:
                files.append(path)
                if len(files) > 3:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real_put(path, value, exclusive)

        monkeypatch.setattr(_local, "_put", put)
    elif how == "access":
        real_access = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda p, mode, *a, **kw: False if Path(p) == folder and mode & os.W_OK else real_access(p, mode, *a, **kw),
        )
    else:
        real_mkdir = os.mkdir

        def mkdir(p, *a, **kw):
            if Path(p).parent == folder or folder in Path(p).parents:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(p))
            return real_mkdir(p, *a, **kw)

        monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("how", ["access", "mkdir", "full"])
def test_a_read_only_or_full_destination_is_one_line_and_leaves_nothing(root, tmp_path, monkeypatch, how):
    ro = tmp_path / "ro"
    ro.mkdir()
    _refuse_writes_in(ro, monkeypatch, how)
    r = runner.invoke(app, args(root, ro / "s.zarr"))
    monkeypatch.undo()
    assert r.exit_code == 2, r.output
    why = {
        "access": f"create the store {ro / 's.zarr'}: {ro} is not writable",
        "mkdir": f"write the store {ro / 's.zarr'}: Read-only file system",
        "full": f"write the store {ro / 's.zarr'}: No space left on device",
    }[how]
    assert messages(r.output) == [f"error: cannot {why}"], r.output
    assert list(ro.iterdir()) == []  # not even a hidden half-built folder


@pytest.mark.parametrize("how", ["mkdir", "full"])
def test_a_store_on_a_read_only_or_full_disk_gets_no_half_made_group(root, reference, tmp_path, monkeypatch, how):
    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    _refuse_writes_in(out, monkeypatch, how)
    r = runner.invoke(app, [*args(root, out), "--name", "second"])  # a second IFM group
    monkeypatch.undo()
    assert r.exit_code == 2, r.output
    why = "Read-only file system" if how == "mkdir" else "No space left on device"
    assert messages(r.output) == [f"error: cannot write the store {out}: {why}"], r.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert verify(open_store(out)) == []
