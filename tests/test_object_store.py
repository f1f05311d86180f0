"""Stores in a bucket: against a real S3 protocol server (moto's, on 127.0.0.1, started here),
extract -> SIGKILL -> resume -> verify --deep -> train --local-cache -> evaluate; tokens equal a
local extraction's bit for bit; the local shard cache's checks and bound; URL mistakes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_EXTRACT, extract_config, train_config, write_folder_tree
from typer.testing import CliRunner

from advise_cache import storage
from advise_cache.cli import app
from advise_cache.errors import DamagedFrameError, StoreError
from advise_cache.extract import extract_videos
from advise_cache.remote_shards import RemoteShardReader, ShardCache
from advise_cache.sampling import SamplerConfig
from advise_cache.shards import CRC_BYTES, frame_crcs, shard_index, shard_parts
from advise_cache.storage import StoreURL, store_location
from advise_cache.store import DONE, check_creatable, create_store, open_store
from advise_cache.testing import video_table

pytestmark = pytest.mark.slow  # `make test-fast` leaves this file out

runner = CliRunner()
CLI = [sys.executable, "-m", "advise_cache.cli"]
BUCKET = "advise-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free port of 127.0.0.1 with one empty bucket; the environment points
    the project at it (as a user's would, through AWS_ENDPOINT_URL) for this module's tests."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"), timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    server.kill()
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        storage._BUCKETS.clear()  # clients of an earlier server's endpoint
        try:
            yield f"s3://{BUCKET}"
        finally:
            storage._BUCKETS.clear()
            server.terminate()
            server.wait(10)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Six short videos (two classes) for the stores of this module."""
    return write_folder_tree(tmp_path_factory.mktemp("bucket-videos"), (7, 10, 12, 9, 11, 8))


@pytest.fixture(scope="module")
def local_and_bucket(tree, s3, tmp_path_factory):
    """The same extraction into a folder and into the bucket."""
    local = tmp_path_factory.mktemp("bucket-ref") / "ref.zarr"
    url = f"{s3}/stores/ref.zarr"
    for out in (local, url):
        s = extract_videos(extract_config(tree, out, dataset="folder", frames_per_shard=4, batch_size=8))
        assert s.exit_code == 0 and s.done == 6, s.failed
    return local, store_location(url)


def _same_store(a, b) -> None:
    x, y = a.ifm("test-vit"), b.ifm("test-vit")
    np.testing.assert_array_equal(x.status(), y.status())
    np.testing.assert_array_equal(x.checksums(), y.checksums())
    for v in range(len(x.frames)):
        np.testing.assert_array_equal(x.read_frames(v, range(x.frames[v])), y.read_frames(v, range(y.frames[v])))


# -- locations ------------------------------------------------------------------------------
def test_store_locations_parse_urls_and_paths():
    assert store_location("a/b.zarr") == Path("a/b.zarr")
    assert store_location("file:///data/x.zarr") == Path("/data/x.zarr")
    assert store_location("s3://bkt//a/b.zarr/") == StoreURL("s3://bkt/a/b.zarr")
    assert store_location("gs://bkt/x") == StoreURL("gs://bkt/x") and store_location("az://c/x").scheme == "az"
    assert store_location("my:store.zarr") == Path("my:store.zarr")  # a local name with a colon
    assert (StoreURL("s3://b/s.zarr") / "ifm").url == "s3://b/s.zarr/ifm"
    for bad in ("s3:", "s3:/bkt/x", "s3://", "hdfs://h/x", "http://h/x", "file://host/x", Path("s3://bkt/x")):
        with pytest.raises(StoreError):
            store_location(bad)


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "folder", "--root", "{tree}", "--out", "s3:", *FAST_EXTRACT], "bucket URL is s3://BUCKET/PATH"),
        (["extract", "folder", "--root", "{tree}", "--out", "s3:/bkt/x.zarr", *FAST_EXTRACT], "bucket URL is s3://"),
        (
            ["extract", "folder", "--root", "{tree}", "--out", "hdfs://nn/x.zarr", *FAST_EXTRACT],
            "cannot store to 'hdfs'",
        ),
        (["info", "ftp://h/x.zarr"], "cannot store to 'ftp'"),
        (["verify", "gs:"], "bucket URL"),
        (["train", "--cache", "s3:/bkt/x.zarr"], "bucket URL"),
        (["evaluate", "--cache", "s3:", "--checkpoint", "{tmp}"], "bucket URL"),
        (["--storage-options", "{nope", "info", "x.zarr"], "not JSON"),
    ],
)
def test_url_mistakes_are_one_line_and_create_nothing(tree, tmp_path, monkeypatch, args, message):
    """A real dataset under --root: before URLs were parsed, `--out s3:` extracted it into a local
    folder named `s3:` and exited 0."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    r = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)).replace("{tree}", str(tree)) for a in args])
    assert r.exit_code == 2 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert list(work.iterdir()) == []  # no folder named "s3:" (or anything else)
    storage.set_storage_options("")


# -- extraction into a bucket -----------------------------------------------------------------
def test_a_bucket_store_holds_a_local_extractions_tokens_and_shard_bytes(local_and_bucket):
    local, url = local_and_bucket
    a, b = open_store(local), open_store(url)
    _same_store(a, b)
    x, y = a.ifm("test-vit"), b.ifm("test-vit")
    for v in range(len(x.frames)):  # each shard one object: the local shard file's bytes
        for key in x.shard_keys(v):
            assert bytes(y.store.bucket.read(key)) == (local / key).read_bytes()
    assert y.stored_bytes() == x.stored_bytes()
    assert open_store(url).ifm("test-vit").damaged(range(6)) == []
    r = runner.invoke(app, ["verify", "--deep", str(url)])
    assert r.exit_code == 0 and r.output.strip().endswith("ok"), r.output
    r = runner.invoke(app, ["info", "--json", str(url)])
    assert r.exit_code == 0 and json.loads(r.output)["done"] == 6


def test_verify_on_a_bucket_names_a_missing_shard(local_and_bucket, s3):
    _, url = local_and_bucket
    copy = store_location(f"{s3}/stores/damaged.zarr")
    src, dst = storage.bucket(url), storage.bucket(copy)
    for key in src.sizes():
        dst.write(key, src.read(key))
    victim = open_store(copy).ifm("test-vit").shard_keys(2)[0]
    dst.delete([victim])
    r = runner.invoke(app, ["verify", str(copy)])
    assert r.exit_code == 1 and f"shard file {victim} is missing" in r.output


def test_a_killed_extraction_into_a_bucket_resumes_to_the_same_store(tree, local_and_bucket, s3):
    local, _ = local_and_bucket
    url = f"{s3}/stores/killed.zarr"
    args = [*CLI, "extract", "folder", "--root", str(tree), "--out", url, *FAST_EXTRACT]
    args += "--frames-per-shard 4 --batch-size 2".split()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bucket = storage.bucket(store_location(url))
    deadline = time.monotonic() + 120
    while not bucket.sizes("ifm/test-vit/status/c/") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # wherever it is: mid-put, mid-forward, ...
    proc.wait()
    status = open_store(url).ifm("test-vit").status()
    assert (status != DONE).any(), "the run finished before it was killed: nothing to resume"
    # The same run again (in this process: a second start of the CLI costs seconds of imports)
    again = extract_videos(extract_config(tree, url, dataset="folder", frames_per_shard=4, batch_size=2))
    assert again.exit_code == 0 and again.done + again.already_done == 6
    _same_store(open_store(url), open_store(local))


def test_store_creation_in_a_bucket_is_published_once(s3, tmp_path):
    url = store_location(f"{s3}/stores/raced.zarr")
    table = video_table([3, 4], ["a", "b"])
    bucket = storage.bucket(url)
    bucket.write("videos/zarr.json", b"{}")  # what a creation killed before its root leaves
    check_creatable(url)  # ... does not stop the next one
    create_store(url, "t", "r", ["x"], table)
    first = bytes(bucket.read("zarr.json"))
    create_store(url, "t", "r", ["x"], table)  # a racer: its root is not written over the winner's
    assert bytes(bucket.read("zarr.json")) == first
    assert open_store(url).videos.name.tolist() == ["a", "b"]
    other = store_location(f"{s3}/stores/other")
    storage.bucket(other).write("notes.txt", b"mine")
    with pytest.raises(StoreError, match="holds other objects"):
        check_creatable(other)


# -- training from a bucket -------------------------------------------------------------------
def test_train_from_a_bucket_with_a_local_cache_then_evaluate(local_and_bucket, tmp_path, monkeypatch):
    from advise_cache.train import train

    local, url = local_and_bucket
    gets = []
    real = storage.Bucket.read
    monkeypatch.setattr(storage.Bucket, "read", lambda self, key: gets.append(key) or real(self, key))
    cache = tmp_path / "cache"
    short = SamplerConfig(rates=(1, 2))  # the videos hold 12 frames at most: rate 8 would not fit
    final = train(train_config(url, tmp_path / "prp", epochs=1, batch_size=4, local_cache=cache, sampler=short))
    pulled = [k for k in gets if "/tokens/c/" in k]
    assert final["step"] > 0 and pulled and len(pulled) == len(set(pulled))  # each shard fetched once
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert len(files) == len(pulled)
    gets.clear()
    again = train(train_config(url, tmp_path / "prp2", epochs=2, batch_size=4, local_cache=cache, sampler=short))
    assert again["step"] > final["step"]
    assert not [k for k in gets if k in pulled]  # shards in the cache are read locally
    ft = tmp_path / "ft"
    train(train_config(url, ft, task="classify", epochs=1, batch_size=4, split="train", local_cache=cache))
    r = runner.invoke(app, ["evaluate", "--cache", str(url), "--checkpoint", str(ft), "--split", "train", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["videos"] == 6


@pytest.mark.parametrize("cached", [False, True])
def test_clips_read_from_a_bucket_equal_the_local_stores(local_and_bucket, tmp_path, cached):
    from advise_cache.loader import TokenSource

    local, url = local_and_bucket
    cache = ShardCache(tmp_path / "cache", 10**9) if cached else None
    a, b = TokenSource(open_store(local)), TokenSource(open_store(url, local_cache=cache))
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 6, 12)
    indices = np.stack([np.sort(rng.integers(0, a.frames[v], 3)) for v in videos])
    for _ in range(2):  # with a cache: the first pass pulls, the second reads the local files
        outs = [np.empty((12, 3, *a.grid, a.dim), a.stored_dtype) for _ in range(2)]
        a.fill(videos, indices, [outs[0]])
        b.fill(videos, indices, [outs[1]])
        np.testing.assert_array_equal(outs[0], outs[1])
    assert any((tmp_path / "cache").rglob("*.*")) == cached


def test_the_local_cache_never_serves_a_partial_shard(s3, tmp_path):
    per, shape = 4, (2, 3)
    frames = np.arange(per * 6, dtype="<f2").reshape(per, *shape)
    whole = frames.tobytes() + shard_index(per, per, frames[0].nbytes)
    bucket = storage.bucket(store_location(f"{s3}/stores/partial"))
    bucket.write("t/c/0/0/0/0", whole[: len(whole) - 7])  # cut short, as an interrupted copy would be
    bucket.write("t/c/1/0/0/0", whole)
    cache = ShardCache(tmp_path / "cache", 10**6)
    reader = RemoteShardReader(bucket, "t", per, shape, "<f2", cache, tmp_path / "cache" / "s")
    out = np.empty((1, *shape), "<f2")
    with pytest.raises(StoreError, match="truncated|crc32c|outside"):
        reader.read_into(np.array([1]), out)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    reader.read_into(np.array([per + 2]), out)  # shard 1 is whole: kept, and read right
    np.testing.assert_array_equal(out[0], frames[2])
    kept = next(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    kept.write_bytes(kept.read_bytes()[:-3] + b"xyz")  # damaged on the local disk: fetched again
    fresh = RemoteShardReader(bucket, "t", per, shape, "<f2", cache, tmp_path / "cache" / "s")
    fresh.read_into(np.array([per + 3]), out)
    np.testing.assert_array_equal(out[0], frames[3])
    assert kept.read_bytes() == whole


@pytest.mark.parametrize("cached", [False, True])
def test_a_damaged_frame_in_a_bucket_is_refused_and_never_cached(s3, tmp_path, cached):
    per, shape = 4, (2, 3)
    frames = np.arange(per * 6, dtype="<f2").reshape(per, *shape)
    whole = bytearray(b"".join(shard_parts(frames, per, frame_crcs(frames))))
    whole[2 * (12 + CRC_BYTES) + 3] ^= 0x01  # a bit of frame 2 (a chunk: its 12 bytes, then their crc32c)
    bucket = storage.bucket(store_location(f"{s3}/stores/damaged-{cached}"))
    bucket.write("t/c/0/0/0/0", bytes(whole))
    cache = ShardCache(tmp_path / "cache", 10**6) if cached else None
    reader = RemoteShardReader(bucket, "t", per, shape, "<f2", cache, tmp_path / "cache" / "s", frame_crcs=True)
    out = np.empty((2, *shape), "<f2")
    if not cached:  # range requests: the frames asked for are checked, each on its own
        reader.read_into(np.array([0, 3]), out)
        np.testing.assert_array_equal(out, frames[[0, 3]])
    with pytest.raises(DamagedFrameError, match="fail their crc32c check") as e:  # cached: the whole object
        reader.read_into(np.array([1, 2] if not cached else [0, 3]), out)
    assert e.value.rows == [2]
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_the_local_cache_stays_within_its_bound_least_recently_used_out(tmp_path):
    cache = ShardCache(tmp_path, max_bytes=10_000)
    paths = [tmp_path / "s" / f"{i}.x" for i in range(8)]
    for i, p in enumerate(paths):
        cache.put(p, bytes(2_000))
        os.utime(p, (1000 + i, 1000 + i))  # put in order, oldest first
        if i == 3:
            assert cache.get(paths[0])  # used again: now the most recent
            os.utime(paths[0], (2000, 2000))
    held = cache.evict()
    kept = [p for p in paths if p.exists()]
    assert held == sum(p.stat().st_size for p in kept) <= 10_000
    assert paths[0] in kept and paths[1] not in kept and paths[-1] in kept


def test_ranks_sharing_a_cache_folder_fetch_a_shard_once(s3, tmp_path, monkeypatch):
    per, shape = 4, (2, 3)
    frames = np.arange(per * 6, dtype="<f2").reshape(per, *shape)
    bucket = storage.bucket(store_location(f"{s3}/stores/shared"))
    bucket.write("t/c/0/0/0/0", frames.tobytes() + shard_index(per, per, frames[0].nbytes))
    out = np.empty((2, *shape), "<f2")
    first = RemoteShardReader(bucket, "t", per, shape, "<f2", ShardCache(tmp_path), tmp_path / "s")
    first.read_into(np.array([1, 3]), out)

    def no_network(self, key):
        raise AssertionError(f"{key} fetched again")

    monkeypatch.setattr(storage.Bucket, "read", no_network)
    other_rank = RemoteShardReader(bucket, "t", per, shape, "<f2", ShardCache(tmp_path), tmp_path / "s")
    other_rank.read_into(np.array([0, 2]), out)  # another process's reader, the same folder: read locally
    np.testing.assert_array_equal(out, frames[[0, 2]])
