"""Nothing lost, nothing read wrong (issue 15): overlapping writers, kills, corrupt input and
damaged stores end in a correct store or one clear line, never in silently wrong tokens."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    FAST_EXTRACT,
    assert_same_tokens,
    extract_config,
    frame_chunk,
    patch_frame,
    small_store,
    write_video,
)
from typer.testing import CliRunner

from advise_cache.cli import app
from advise_cache.errors import StoreError
from advise_cache.extract import extract_videos
from advise_cache.integrity import verify
from advise_cache.store import DONE, PENDING, open_store

runner = CliRunner()
CLI = [sys.executable, "-m", "advise_cache.cli"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    for i, frames in enumerate((7, 10, 12, 9)):
        write_video(root / "ab"[i % 2] / f"v{i}.mp4", frames, seed=i)
    return root


@pytest.fixture(scope="module")
def tiny_store(tiny_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-stores") / "tiny.zarr"
    summary = extract_videos(extract_config(tiny_root, out, dataset="folder", frames_per_shard=4))
    assert summary.exit_code == 0 and summary.done == 4, summary.failed
    return out


# -- 1. ownership of videos -----------------------------------------------------------------
_HOLD = """
import sys, time
from advise_cache.store import open_store
a = open_store(sys.argv[1], mode="a").ifm("k")
print(a.claim([0]), flush=True)
time.sleep(600)
"""


def test_a_claim_keeps_other_writers_out_and_dies_with_its_process(tmp_path):
    a, tokens = small_store(tmp_path / "s.zarr")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path / "s.zarr")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout.readline().strip() == "[0]"
        assert a.claim([0, 1, 2]) == [1, 2]  # video 0 belongs to the other process
        with pytest.raises(StoreError, match="another process"):
            a.write_shard(0, 0, tokens[0][:4])
        with pytest.raises(StoreError, match="another process"):
            a.clear_video(0)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert a.claim([0]) == [0]  # the kernel dropped the dead process's claim: no stale lock
    a.write_video(0, tokens[0])
    assert a.status()[0] == DONE


def test_a_writer_with_a_stale_view_never_touches_a_done_video(tmp_path):
    """The defect: a second writer read `status` before the first marked the video done,
    then cleared it. Claims are checked against the status read under the claim."""
    first, tokens = small_store(tmp_path / "s.zarr")
    second = open_store(tmp_path / "s.zarr", mode="a").ifm("k")
    stale = second.status()
    assert (stale == PENDING).all()
    for v, t in enumerate(tokens):
        first.write_video(v, t)
    files = sorted(p for p in (tmp_path / "s.zarr" / "ifm" / "k" / "tokens").rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    assert second.claim(np.flatnonzero(stale == PENDING)) == []  # nothing pending any more
    for v in range(len(tokens)):
        with pytest.raises(StoreError, match="done"):
            second.clear_video(v)
        with pytest.raises(StoreError, match="done"):
            second.write_shard(v, 0, tokens[v][:4])
        with pytest.raises(StoreError, match="done"):
            second.mark_failed(v, "no")
    assert {p: p.read_bytes() for p in files} == before
    assert verify(open_store(tmp_path / "s.zarr")) == []


def test_extract_with_a_stale_status_leaves_done_videos_alone(tiny_root, tiny_store, tmp_path, monkeypatch):
    from advise_cache import store as store_mod

    out = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, out)
    shards = sorted(p for p in (out / "ifm" / "test-vit" / "tokens").rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    real_status = store_mod.IFMArrays.status
    monkeypatch.setattr(
        store_mod.IFMArrays,
        "status",  # another process finished them after we looked
        lambda self: np.full(len(self.frames), PENDING, "int8"),
    )
    summary = extract_videos(extract_config(tiny_root, out, dataset="folder", frames_per_shard=4))
    monkeypatch.setattr(store_mod.IFMArrays, "status", real_status)
    assert summary.done == 0 and not summary.failed
    assert {p: p.stat().st_mtime_ns for p in shards} == stamps  # not one shard rewritten or removed
    assert_same_tokens(out, tiny_store)


@pytest.mark.slow
def test_overlapping_shard_runs_with_one_killed_leave_a_correct_store(tiny_root, tiny_store, tmp_path):
    """Two writers of the same videos (overlapping --shard specs), one SIGKILLed part-way:
    here the other runs in a thread of this process (one torch import less)."""
    import threading

    out = tmp_path / "overlap.zarr"
    cfg = extract_config(tiny_root, out, dataset="folder", frames_per_shard=4, batch_size=4)
    args = [*CLI, "extract", "folder", "--root", str(tiny_root), "--out", str(out), *FAST_EXTRACT]
    args += "--frames-per-shard 4 --batch-size 4".split()
    killed = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    status_dir = out / "ifm" / "test-vit" / "status" / "c"
    try:
        while killed.poll() is None and not (status_dir.exists() and any(status_dir.iterdir())):
            time.sleep(0.02)  # the other process is writing its first videos
        legit = threading.Thread(target=lambda: results.update(s=extract_videos(cfg)))
        legit.start()
        time.sleep(0.2)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    legit.join()
    assert results["s"].exit_code == 0
    again = extract_videos(cfg)  # finishes whatever the killed one held
    assert again.exit_code == 0
    assert verify(open_store(out)) == []
    assert_same_tokens(out, tiny_store)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_extract_repairs_a_done_video_whose_shard_is_damaged(tiny_root, tiny_store, tmp_path, damage):
    out = tmp_path / "damaged.zarr"
    shutil.copytree(tiny_store, out)
    store = open_store(out)
    name = str(store.videos.name[2])
    shard = store.ifm("test-vit").shard_paths(2)[1]
    if damage == "delete":
        shard.unlink()
    else:
        os.truncate(shard, shard.stat().st_size // 2)
    problems = verify(open_store(out), check_values=False)  # found from file sizes alone
    assert len(problems) == 1 and name in problems[0] and ("missing" in problems[0] or "bytes" in problems[0])
    summary = extract_videos(extract_config(tiny_root, out, dataset="folder", frames_per_shard=4))
    assert summary.done == 1 and summary.already_done == 3
    assert verify(open_store(out)) == []
    a, b = (open_store(path).ifm("test-vit").tokens[:] for path in (out, tiny_store))
    np.testing.assert_array_equal(a, b)


# -- 2. every decoder error is one video's failure --------------------------------------------
def _corrupt_first_frame(good: Path, out: Path) -> Path:
    """A valid container whose first frame's compressed bytes are overwritten: it opens and
    has an index, but decord raises its own DECORDError on decoding frame 0."""
    import av

    with av.open(str(good)) as c:
        pos, size = next((int(p.pos), p.size) for p in c.demux(video=0) if p.size)
    data = bytearray(good.read_bytes())
    data[pos : pos + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("workers", [0, 1])
def test_a_video_with_a_corrupt_first_frame_is_recorded_and_the_run_goes_on(tmp_path, workers):
    good = write_video(tmp_path / "data" / "a" / "good.mp4", 9, seed=1)
    _corrupt_first_frame(good, tmp_path / "data" / "b" / "bad.mp4")
    out = tmp_path / "s.zarr"
    summary = extract_videos(extract_config(tmp_path / "data", out, dataset="folder", workers=workers))
    assert summary.done == 1
    assert [f["name"] for f in summary.failed] == ["b/bad"]
    assert "bad.mp4" in summary.failed[0]["reason"] and "frame 0" in summary.failed[0]["reason"]
    assert verify(open_store(out)) == []


# -- 3. leftovers of an interrupted IFM group creation ------------------------------------------
def test_a_group_left_half_built_by_a_killed_run_is_ignored_then_cleaned(tiny_root, tiny_store, tmp_path):
    out = tmp_path / "left.zarr"
    shutil.copytree(tiny_store, out)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid no process has any more
    left = out / "ifm" / f".other.tmp-{gone.pid}-0123abcd"
    shutil.copytree(out / "ifm" / "test-vit", left, ignore=shutil.ignore_patterns("tokens", "status"))
    assert open_store(out).ifm().key == "test-vit"  # what train and evaluate call without --ifm
    for args in (["info", str(out)], ["verify", str(out)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0 and "Traceback" not in r.output, r.output
        assert "other" not in r.output
    os.utime(left, (time.time() - 3600, time.time() - 3600))  # long past any build
    summary = extract_videos(extract_config(tiny_root, out, dataset="folder", frames_per_shard=4))
    assert summary.already_done == 4
    assert not left.exists()


def test_a_store_build_left_by_a_kill_is_removed_by_the_next_run(tiny_root, tmp_path):
    # A SIGKILL while the store itself is built leaves its hidden folder beside --out; 96c9d02
    # removed it only once a minute old, and never beside the store: the resumed run left it.
    out = tmp_path / "s.zarr"
    build = "lambda tmp: (tmp.mkdir(), (tmp / 'half').write_text('x'), os.kill(os.getpid(), signal.SIGKILL))"
    code = f"import os, signal, pathlib; from advise_cache.atomic import atomic_create; atomic_create(pathlib.Path({str(out)!r}), {build})"
    killed = subprocess.run([sys.executable, "-c", code])
    assert killed.returncode == -signal.SIGKILL and len(list(tmp_path.glob(".s.zarr.tmp-*"))) == 1
    summary = extract_videos(extract_config(tiny_root, out, dataset="folder", frames_per_shard=4))
    assert summary.done == 4
    assert list(tmp_path.glob(".s.zarr.tmp-*")) == []


# -- 4. Ctrl-C and kills end the workers too -----------------------------------------------------
@pytest.fixture(scope="module")
def long_root(tmp_path_factory) -> Path:
    """Enough decoding that a run is still going when it is interrupted."""
    root = tmp_path_factory.mktemp("long")
    for i in range(8):
        write_video(root / "ab"[i % 2] / f"v{i}.mp4", 150, seed=i)
    return root


def _session(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def _spawned(sid: int) -> list[int]:
    """Processes of session `sid` started by multiprocessing (workers, its resource tracker)."""
    out = []
    for pid in _session(sid):
        try:
            if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            continue
    return out


def _start_with_workers(long_root: Path, out: Path) -> subprocess.Popen:
    args = [*CLI, "extract", "folder", "--root", str(long_root), "--out", str(out)]
    args += "--model test-vit --pretrained none --workers 2 --batch-size 4 --device cpu".split()
    # start_new_session: its own process group, as a terminal job is. SIGINT at its default, as
    # in a terminal: a runner started in the background by a shell without job control ignores
    # SIGINT, its children inherit that, and Python then never turns SIGINT into KeyboardInterrupt.
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # A first spawned worker is starting (not a helper that importing torch may run for a moment,
    # which would have the signal land while the CLI is still importing).
    while proc.poll() is None and not _spawned(proc.pid):
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read()
    return proc


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ctrl_c_ends_extract_and_its_workers(long_root, tmp_path):
    proc = _start_with_workers(long_root, tmp_path / "s.zarr")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole group
    try:
        _, err = proc.communicate(timeout=120)  # a guard against the hang, not a timing
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    for _ in range(100):
        if not _session(proc.pid):
            break
        time.sleep(0.1)
    assert _session(proc.pid) == []


_POOL = """
import time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp
from advise_cache.video import init_worker, sigint_blocked
pool = ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"), initializer=init_worker)
with sigint_blocked():
    futures = [pool.submit(time.sleep, 600) for _ in range(2)]
time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_die_with_a_killed_parent():
    """extract's probe and decode processes are set up by `init_worker`: SIGKILL the parent
    (no handler of its own can run) and the kernel ends them too."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _POOL],
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        while proc.poll() is None and len(_spawned(proc.pid)) < 2:  # the pool's processes are up
            time.sleep(0.05)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)  # the parent only
        proc.wait()
        for _ in range(100):
            if not _session(proc.pid):
                break
            time.sleep(0.1)
        assert _session(proc.pid) == []
    finally:
        for pid in _session(proc.pid):
            os.kill(pid, signal.SIGKILL)


# -- 5. bad flags and damaged stores: one line, exit 2 (verify: a problem, exit 1) ----------------
@pytest.mark.parametrize("name", ["../../x", ".hidden", "a/b", ""])
def test_an_unsafe_name_is_refused(tmp_path, name):
    args = ["extract", "folder", "--root", str(tmp_path), "--out", str(tmp_path / "s.zarr"), "--model", "test-vit"]
    r = runner.invoke(app, [*args, "--name", name])
    assert r.exit_code == 2 and "--name" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path.parent / "x").exists()


def test_out_at_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    r = runner.invoke(
        app, ["extract", "folder", "--root", str(tmp_path), "--out", str(tmp_path / "file"), "--model", "test-vit"]
    )
    assert r.exit_code == 2 and "is a file" in r.output and len(r.output.strip().splitlines()) == 1


def test_out_in_a_read_only_folder_is_refused(tiny_root, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    # What access(2) says of a folder we may not write (chmod does not stop root: injected).
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda p, mode, *a, **kw: not (Path(p) == ro and mode & os.W_OK) and real_access(p, mode, *a, **kw),
    )
    args = ["extract", "folder", "--root", str(tiny_root), "--out", str(ro / "s.zarr")]
    r = runner.invoke(app, [*args, *"--model test-vit --pretrained none --device cpu".split()])
    monkeypatch.undo()
    assert r.exit_code == 2 and "not writable" in r.output
    assert list(ro.iterdir()) == []


def _damage_store(store: Path, how: str) -> None:
    if how == "cut zarr.json":
        data = (store / "zarr.json").read_bytes()
        (store / "zarr.json").write_bytes(data[: len(data) // 2])
    elif how == "no offset array":
        shutil.rmtree(store / "ifm" / "test-vit" / "offset")
    elif how == "no label array":
        shutil.rmtree(store / "videos" / "label")
    elif how == "cut group zarr.json":
        (store / "ifm" / "test-vit" / "zarr.json").write_text("{")
    elif how == "no videos group":
        shutil.rmtree(store / "videos")
    elif how == "no status metadata":
        (store / "ifm" / "test-vit" / "status" / "zarr.json").unlink()


DAMAGE = ["cut zarr.json", "no offset array", "no label array", "cut group zarr.json", "no videos group"]


@pytest.mark.parametrize("how", [*DAMAGE, "no status metadata"])
@pytest.mark.parametrize("command", ["info", "verify", "train"])
def test_a_damaged_store_is_one_line(tiny_store, tmp_path, how, command):
    out = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, out)
    _damage_store(out, how)
    args = [command, str(out)] if command != "train" else [command, "--cache", str(out), "--out", str(tmp_path / "r")]
    r = runner.invoke(app, [*args, *(["--device", "cpu"] if command == "train" else [])])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert "damaged" in r.output or "not a store" in r.output


@pytest.mark.parametrize("how", ["truncate", "index checksum"])
def test_verify_names_a_video_whose_shard_cannot_be_read(tiny_store, tmp_path, how):
    out = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, out)
    store = open_store(out)
    name = str(store.videos.name[1])
    shard = store.ifm("test-vit").shard_paths(1)[0]
    data = bytearray(shard.read_bytes())
    if how == "truncate":
        shard.write_bytes(bytes(data[:100]))
    else:
        data[-10] ^= 0xFF  # inside the index: its crc32c no longer matches
        shard.write_bytes(bytes(data))
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = [line for line in r.output.splitlines() if name in line]
    assert len(lines) == 1, r.output


def test_a_dangling_link_is_recorded_as_failed_not_skipped(tmp_path):
    write_video(tmp_path / "data" / "a" / "good.mp4", 9, seed=1)
    (tmp_path / "data" / "b").mkdir()
    (tmp_path / "data" / "b" / "gone.mp4").symlink_to(tmp_path / "elsewhere" / "gone.mp4")
    summary = extract_videos(extract_config(tmp_path / "data", tmp_path / "s.zarr", dataset="folder"))
    assert summary.done == 1
    assert [f["name"] for f in summary.failed] == ["b/gone"]
    assert "does not exist" in summary.failed[0]["reason"]


def test_an_unreadable_folder_is_recorded_as_failed_not_skipped(tmp_path, monkeypatch):
    write_video(tmp_path / "data" / "a" / "good.mp4", 9, seed=1)
    hidden = write_video(tmp_path / "data" / "b" / "inner" / "x.mp4", 9, seed=2).parent
    # Listing the folder fails as it does for a folder we may not read (root reads through
    # chmod 0, so the kernel's EACCES is injected where the listing asks for it).
    real_scandir, real_listdir = os.scandir, os.listdir

    def refuse(real):
        def listing(p=".", *a, **kw):
            if isinstance(p, (str, os.PathLike)) and Path(p) == hidden:  # not a folder's fd
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
            return real(p, *a, **kw)

        return listing

    monkeypatch.setattr(os, "scandir", refuse(real_scandir))
    monkeypatch.setattr(os, "listdir", refuse(real_listdir))
    summary = extract_videos(extract_config(tmp_path / "data", tmp_path / "s.zarr", dataset="folder"))
    monkeypatch.undo()
    assert summary.done == 1
    assert [f["name"] for f in summary.failed] == ["b/inner"]
    assert "cannot be read" in summary.failed[0]["reason"]


# -- 6. per-video checksums: tokens rewritten with a matching crc32c are found by verify --deep ---
def test_verify_deep_finds_a_frame_rewritten_with_a_matching_crc(tiny_store, tmp_path):
    """A chunk replaced whole, its crc32c included (a frame copied from elsewhere): every frame
    passes its own check, only the video's checksum written at extraction sees it."""
    out = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, out)
    r = runner.invoke(app, ["verify", "--deep", str(out)])
    assert r.exit_code == 0 and "ok" in r.output, r.output
    name = str(open_store(out).videos.name[3])
    path, start, _ = frame_chunk(out, 3, 1)
    value = np.frombuffer(path.read_bytes()[start + 10 : start + 12], "<u2") ^ 1  # lowest mantissa bit: still finite
    patch_frame(out, 3, 1, 10, value.astype("<u2").tobytes())
    assert verify(open_store(out)) == []  # every frame passes its crc32c
    r = runner.invoke(app, ["verify", "--deep", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    flagged = [line for line in r.output.splitlines() if "checksum" in line]
    assert len(flagged) == 1 and name in flagged[0]


def test_verify_deep_says_when_a_group_has_no_checksums(tiny_store, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, out)
    shutil.rmtree(out / "ifm" / "test-vit" / "checksum")  # as groups made before checksums
    problems = verify(open_store(out), deep=True)
    assert len(problems) == 1 and "no checksums" in problems[0]
    assert verify(open_store(out)) == []


# -- 7. frame checksums (issue 25, red-team case 1): a frame overwritten on disk is found by every read
TRAIN_SMALL = (
    "--epochs 1 --rates 1,2 --clips-per-video 8 --hidden 16 --out-dim 32 --device cpu --loader-threads 1".split()
)


def _overwrite_frame(store: Path, video: int, frame: int, value: float = 30000.0) -> str:
    """Overwrite one stored frame's values with a finite value (not its crc32c); the video's name."""
    path, start, size = frame_chunk(store, video, frame)
    data = bytearray(path.read_bytes())
    data[start : start + size] = np.full(size // 2, value, "<f2").tobytes()
    path.write_bytes(bytes(data))
    return str(open_store(store).videos.name[video])


def _said(output: str) -> list[str]:
    """The lines a user reads, without progress bars (which share lines with them through \\r)."""
    return [t for t in re.split(r"[\r\n]", output) if t.strip() and not re.search(r"\d+%\|", t)]


def test_a_frame_overwritten_with_finite_values_stops_training_and_verify_names_it(tiny_store, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, out)
    name = _overwrite_frame(out, 1, 2)
    r = runner.invoke(app, ["train", "--cache", str(out), "--out", str(tmp_path / "r"), *TRAIN_SMALL])
    lines = _said(r.stderr)
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
    assert f"{name}: frame 2 fails its crc32c check" in lines[0], lines[0]
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    flagged = [line for line in r.output.splitlines() if name in line]
    assert len(flagged) == 1 and "frame 2 fails its crc32c check" in flagged[0], r.output


def test_skip_damaged_trains_without_the_video_and_says_so(tiny_store, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, out)
    name = _overwrite_frame(out, 1, 2)
    r = runner.invoke(app, ["train", "--cache", str(out), "--out", str(tmp_path / "r"), *TRAIN_SMALL, "--skip-damaged"])
    assert r.exit_code == 0, r.output
    said = [line for line in re.split(r"[\r\n]", r.stderr) if "skipping video" in line]
    assert len(said) == 1 and name in said[0] and "frame 2 fails its crc32c check" in said[0], r.stderr
