"""Stage 1 end to end on generated videos with the random-init test-vit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_EXTRACT, assert_same_tokens, extract_config, small_store, write_video
from typer.testing import CliRunner

from advise_cache.cli import app
from advise_cache.errors import AdviseCacheError, StoreError
from advise_cache.extract import EXIT_SOME_FAILED, extract_videos, parse_shard
from advise_cache.ifm import create_ifm
from advise_cache.integrity import verify
from advise_cache.store import DONE, FAILED, open_store
from advise_cache.summary import summarize
from advise_cache.video import decode_frames

runner = CliRunner()
CLI = [sys.executable, "-m", "advise_cache.cli"]


def test_stored_tokens_equal_a_direct_forward(synthetic_root, synthetic_store):
    store = open_store(synthetic_store)
    a = store.ifm("test-vit")
    ifm = create_ifm("test-vit", "none", device="cpu")
    assert a.meta.weights_sha256 == ifm.weights_sha256
    assert (a.grid, a.dim, a.meta.dtype) == ((4, 4), 64, "float16")
    for v in range(0, len(store.videos), 5):
        frames = decode_frames(Path(store.videos.path[v]), ifm.spec)
        direct = ifm.encode(frames).numpy()
        stored = a.read_video(v).astype(np.float32)
        assert stored.shape == direct.shape == (store.videos.source_frames[v], 4, 4, 64)
        # float16 storage: relative precision 2^-11, so 1e-3 relative plus 1e-3 absolute.
        np.testing.assert_allclose(stored, direct, rtol=1e-3, atol=1e-3)
        picked = a.read_frames(v, [0, len(direct) - 1, 3])
        np.testing.assert_array_equal(picked, a.read_video(v)[[0, len(direct) - 1, 3]])


def test_frame_stride_keeps_every_nth_frame(synthetic_root, synthetic_store, tmp_path):
    out = tmp_path / "s2.zarr"
    extract_videos(extract_config(synthetic_root, out, frame_stride=3, frames_per_shard=4))
    full = open_store(synthetic_store).ifm("test-vit")
    strided = open_store(out).ifm("test-vit")
    assert strided.meta.frame_stride == 3
    for v in range(3):
        n = int(full.frames[v])
        assert strided.frames[v] == -(-n // 3)
        np.testing.assert_array_equal(strided.read_video(v), full.read_video(v)[::3])


def test_store_is_self_describing(synthetic_store):
    store = open_store(synthetic_store)
    assert store.dataset == "synthetic"
    assert len(store.classes) == 8 and all(c.startswith(("appearance_", "temporal_")) for c in store.classes)
    m = store.ifm("test-vit").meta.stored  # the attributes as written
    keys = "model pretrained weights_sha256 input_size normalisation grid dim dtype frame_stride version mean std codec"
    for key in keys.split():
        assert key in m, key
    t = store.videos
    assert set(t.split.tolist()) == {"train", "test"}
    assert (t.fps > 0).all() and (t.source_frames >= 10).all()
    a = store.ifm("test-vit")
    assert (a.offset % 8 == 0).all() and (np.diff(a.offset) >= a.frames[:-1]).all()


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(synthetic_root, synthetic_store, tmp_path, monkeypatch):
    from advise_cache import store as store_mod

    out = tmp_path / "resumed.zarr"
    original = store_mod.IFMArrays.write_shard
    calls = {"n": 0}

    def dying_write(self, video, index, tokens):
        calls["n"] += 1
        if calls["n"] == 12:  # die half-way through writing a shard, a few videos in
            path = self.shard_paths(video)[index]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tokens.tobytes()[:1000])
            raise KeyboardInterrupt
        return original(self, video, index, tokens)

    monkeypatch.setattr(store_mod.IFMArrays, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        extract_videos(extract_config(synthetic_root, out))
    status = open_store(out).ifm("test-vit").status()
    done_before = int((status == DONE).sum())
    assert 0 < done_before < len(status)
    monkeypatch.setattr(store_mod.IFMArrays, "write_shard", original)
    summary = extract_videos(extract_config(synthetic_root, out))
    assert summary.already_done == done_before and summary.done == len(status) - done_before
    assert_same_tokens(out, synthetic_store)


def _wait_for_done(path: Path, timeout: float = 120) -> None:
    status_dir = path / "ifm" / "test-vit" / "status" / "c"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if status_dir.exists() and any(status_dir.iterdir()):
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_store(synthetic_root, synthetic_store, tmp_path):
    out = tmp_path / "killed.zarr"
    args = [*CLI, "extract", "synthetic", "--root", str(synthetic_root), "--out", str(out), *FAST_EXTRACT]
    args += "--frames-per-shard 8 --batch-size 16".split()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_done(out)
    proc.send_signal(signal.SIGKILL)  # wherever it is: mid-write, mid-forward, ...
    proc.wait()
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_tokens(out, synthetic_store)


@pytest.mark.slow
def test_two_shard_processes_at_once_give_a_complete_store(synthetic_root, synthetic_store, tmp_path):
    out = tmp_path / "sharded.zarr"
    args = [*CLI, "extract", "synthetic", "--root", str(synthetic_root), "--out", str(out)]
    args += "--model test-vit --pretrained none --workers 1 --frames-per-shard 8 --batch-size 16 --device cpu".split()
    procs = [
        subprocess.Popen([*args, "--shard", f"{k}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert verify(open_store(out)) == []
    assert_same_tokens(out, synthetic_store)


def _bad_files(root: Path) -> dict[str, str]:
    """One class folder of broken files, named by what is wrong; returns name -> reason pattern."""
    d = root / "broken"
    d.mkdir(parents=True)
    (d / "zero_bytes.mp4").write_bytes(b"")
    (d / "not_a_video.mp4").write_text("just some text, not a video\n" * 50)
    good = write_video(root / "ok" / "fine.mp4", 12, seed=1)
    data = good.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    garbage = bytearray(data)
    garbage[:64] = os.urandom(64)  # header smashed
    (d / "corrupt.mp4").write_bytes(bytes(garbage))
    avi = write_video(root / "tmp" / "x.avi", 6, seed=2).read_bytes()
    (d / "unsupported_codec.avi").write_bytes(avi.replace(b"FMP4", b"QZX9"))  # unknown FourCC
    shutil.rmtree(root / "tmp")
    import av

    with av.open(str(d / "no_video_stream.mp4"), "w") as c:  # audio only
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in [*s.encode(frame), *s.encode()]:
            c.mux(p)
    blank = bytearray(data)  # a sound container whose every frame is blanked out
    at = data.index(b"mdat")
    size = int.from_bytes(data[at - 4 : at], "big")
    blank[at + 4 : at - 4 + size] = bytes(size - 8)
    (d / "no_frames.mp4").write_bytes(bytes(blank))
    return {
        "broken/zero_bytes": "empty file",
        "broken/not_a_video": "cannot open as video",
        "broken/truncated": "cannot open|decoding failed",
        "broken/corrupt": "cannot open|decoding failed",
        "broken/unsupported_codec": "no decodable video stream",
        "broken/no_video_stream": "no decodable video stream",
        "broken/no_frames": "cannot open|decoding failed|no decodable frame",
    }


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_files_are_recorded_as_failed_and_the_run_goes_on(tmp_path, workers):
    expected = _bad_files(tmp_path / "data")
    out = tmp_path / "bad.zarr"
    summary = extract_videos(extract_config(tmp_path / "data", out, dataset="folder", workers=workers))
    assert summary.exit_code == EXIT_SOME_FAILED
    assert summary.done == 1
    failed = {f["name"]: f["reason"] for f in summary.failed}
    assert set(failed) == set(expected)
    import re

    for name, pattern in expected.items():
        assert re.search(pattern, failed[name]), (name, failed[name])
    store = open_store(out)
    status = store.ifm("test-vit").status()
    assert (status == FAILED).sum() == len(expected) and (status == DONE).sum() == 1
    assert verify(store) == []
    info = summarize(store)["ifms"]["test-vit"]
    assert {f["name"] for f in info["failed"]} == set(expected)
    again = extract_videos(extract_config(tmp_path / "data", out, dataset="folder", workers=workers))
    assert again.done == 0 and len(again.failed) == len(expected)  # failures stay recorded


def test_cli_extract_info_verify(tmp_path):
    write_video(tmp_path / "data" / "a" / "one.mp4", 9)
    write_video(tmp_path / "data" / "b" / "two.mp4", 14, seed=3)
    (tmp_path / "data" / "b" / "bad.mp4").write_bytes(b"")
    out = tmp_path / "cli.zarr"
    args = ["extract", "folder", "--root", str(tmp_path / "data"), "--out", str(out)]
    r = runner.invoke(app, [*args, *"--model test-vit --workers 0 --device cpu".split()])
    assert r.exit_code == EXIT_SOME_FAILED, r.output
    assert "1 failed" in r.output and "FAILED b/bad" in r.output and "kB per frame" in r.output
    r = runner.invoke(app, ["info", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["videos"] == 3 and info["done"] == 2 and info["frames"] == 23
    assert info["failed"] == [{"name": "b/bad", "reason": info["failed"][0]["reason"]}]
    assert (info["model"], info["grid"], info["dim"], info["dtype"]) == ("test-vit", [4, 4], 64, "float16")
    assert info["bytes"] > 0
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 0 and "ok" in r.output
    # Break it: drop a shard of a done video; verify must notice.
    a = open_store(out).ifm("test-vit")
    a.shard_paths(int(np.flatnonzero(a.status() == DONE)[0]))[0].unlink()
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 1 and "missing" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "ucf101", "--root", "/nonexistent/ucf", "--out", "x.zarr"], "does not exist"),
        (["extract", "nosuchset", "--root", ".", "--out", "x.zarr"], "unknown dataset"),
        (["extract", "folder", "--root", "{tmp}", "--out", "x.zarr", "--shard", "2/2"], "--shard"),
        (["info", "/nonexistent/store.zarr"], "does not exist"),
        (["verify", "{tmp}"], "not a store"),
        (["stats", "--clip", "8,14"], "four integers"),
        (["train", "--cache", "/nonexistent.zarr", "--out", "{tmp}/run"], "does not exist"),
    ],
)
def test_user_mistakes_get_one_clear_line(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_weights_that_cannot_be_found_are_an_error_not_random(tmp_path):
    with pytest.raises(AdviseCacheError, match="does not exist"):
        create_ifm("ViT-B-16", str(tmp_path / "missing.pt"), device="cpu")
    with pytest.raises(AdviseCacheError, match="no pretrained weights"):
        create_ifm("test-vit", "openai", device="cpu")


@pytest.mark.slow
def test_a_second_model_lives_beside_the_first(synthetic_root, synthetic_store, tmp_path):
    out = tmp_path / "two.zarr"
    shutil.copytree(synthetic_store, out)
    extract_videos(extract_config(synthetic_root, out, name="test-vit-seed1", seed=1))
    store = open_store(out)
    assert store.ifm_keys() == ["test-vit", "test-vit-seed1"]
    assert store.ifm("test-vit").meta.weights_sha256 != store.ifm("test-vit-seed1").meta.weights_sha256
    with pytest.raises(StoreError, match="made differently"):  # same key, other weights
        extract_videos(extract_config(synthetic_root, out, seed=2))


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "a/b", "1"):
        with pytest.raises(AdviseCacheError):
            parse_shard(bad)


def test_missing_weights_fail_fast_before_any_store(tmp_path, monkeypatch):
    from huggingface_hub import constants

    write_video(tmp_path / "data" / "a" / "one.mp4", 6)
    out = tmp_path / "never.zarr"
    args = ["extract", "folder", "--root", str(tmp_path / "data"), "--out", str(out)]
    args += "--model ViT-B-16 --pretrained openai --device cpu --workers 0".split()
    # Not in the cache and the hub unreachable (a closed local port stands for no network):
    # one line at once, where the hub's retries used to take about a minute after creating
    # the store.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output
    assert "--pretrained PATH" in lines[0] and "--pretrained none" in lines[0] and "127.0.0.1" in lines[0]
    assert not out.exists()
    # HF_HUB_OFFLINE set: the same, without even trying the network.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "HF_HUB_OFFLINE" in r.output and not out.exists()


def test_resolve_launch_takes_torchrun_ranks(monkeypatch):
    from advise_cache.extract import resolve_launch

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_launch((1, 2), "cpu") == ((1, 2), "cpu")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_launch((0, 1), "cpu") == ((1, 3), "cpu")
    assert resolve_launch((1, 2), "cpu") == ((4, 6), "cpu")  # --shard composes: part 1*3+1 of 2*3
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(AdviseCacheError, match="WORLD_SIZE"):
        resolve_launch((0, 1), "cpu")


@pytest.mark.slow
def test_torchrun_ranks_fill_one_store_equal_to_one_process(synthetic_root, synthetic_store, tmp_path):
    """Two processes launched as torchrun would (RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
    set) fill one store: each probes half of the videos over a gloo group, and rank 0 reports."""
    import socket

    with socket.socket() as sock:  # a free port: other test runs may share this machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ranks.zarr"
    args = [*CLI, "extract", "synthetic", "--root", str(synthetic_root), "--out", str(out), *FAST_EXTRACT]
    args += "--frames-per-shard 8 --batch-size 16 --json".split()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = []
    for p in procs:
        stdout, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outputs.append(stdout)
    # One report for the job: rank 0's covers both parts; rank 1 prints nothing.
    assert outputs[1] == ""
    job = json.loads(outputs[0])
    n = len(open_store(out).videos)
    assert (job["done"], job["videos"], tuple(job["shard"]), job["rank"]) == (n, n, (0, 1), 0)
    assert job["device"].startswith("2 ranks")
    assert verify(open_store(out)) == []
    assert_same_tokens(out, synthetic_store)


def test_shards_written_directly_are_the_bytes_zarr_writes(tmp_path):
    """`write_shard` writes plain shards itself (no fill-value scans, one fsync per file): the
    files must be exactly what zarr writes, partial last shards included."""
    lengths = (5, 8, 13)
    for how in ("zarr", "direct"):
        a, tokens = small_store(tmp_path / how, lengths)
        for v, t in enumerate(tokens):
            if how == "zarr":
                a.tokens[int(a.offset[v]) : int(a.offset[v]) + len(t)] = t
            else:
                assert a.shards_of(v) == -(-len(t) // 4)
                a.write_video(v, t)
    files = {
        how: sorted(p for p in (tmp_path / how / "ifm" / "k" / "tokens" / "c").rglob("*") if p.is_file())
        for how in ("zarr", "direct")
    }
    assert len(files["direct"]) == sum(-(-n // 4) for n in lengths) == len(files["zarr"])
    for z, d in zip(files["zarr"], files["direct"], strict=True):
        assert z.relative_to(tmp_path / "zarr") == d.relative_to(tmp_path / "direct")
        assert z.read_bytes() == d.read_bytes()
    b = open_store(tmp_path / "direct").ifm("k")
    assert (b.status() == DONE).all()
    for v, t in enumerate(tokens):
        np.testing.assert_array_equal(b.read_video(v), t)
    with pytest.raises(StoreError, match="expected"):
        b.write_shard(2, 3, tokens[2][:4])  # the last shard of 13 rows holds 1
