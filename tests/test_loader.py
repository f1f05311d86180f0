"""The training data path: batches bit-equal to the store for every kind of store, in plan
order; shard files read straight, and refused when they are damaged; a frame failing its
crc32c named with its video, or its video left out (--skip-damaged) with batches kept whole."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import extract_config, frame_chunk

from advise_cache.errors import DamagedFrameError, StoreError
from advise_cache.extract import extract_videos
from advise_cache.loader import ClipLoader, TokenSource
from advise_cache.sampling import SamplerConfig, classification_epoch, prp_epoch
from advise_cache.store import open_store


@pytest.fixture(scope="module")
def two_ifm_store(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "two.zarr"
    assert extract_videos(extract_config(synthetic_root, out)).exit_code == 0
    assert extract_videos(extract_config(synthetic_root, out, name="second", seed=1)).exit_code == 0
    return out


def _batches(loader):
    """Every batch, copied as it comes (the loader reuses its buffers)."""
    return [(x.permute(0, 2, 3, 4, 1).numpy().copy(), y.numpy().copy()) for x, y in loader]


def _expected(store, keys, r):
    """The clip's tokens through zarr, IFMs concatenated along channels."""
    parts = [store.ifm(k).tokens[int(store.ifm(k).offset[r.video]) + r.indices] for k in keys]
    return np.concatenate(parts, axis=-1)


@pytest.mark.parametrize("kind", ["plain", "lz4", "two-ifm"])
def test_batches_are_the_stored_tokens_in_plan_order(kind, synthetic_store, lz4_store, two_ifm_store):
    path = {"plain": synthetic_store, "lz4": lz4_store, "two-ifm": two_ifm_store}[kind]
    store = open_store(path)
    keys = store.ifm_keys() if kind == "two-ifm" else None
    source = TokenSource(store, keys)
    assert (source.arrays[0].shard_reader() is None) == (kind == "lz4")  # lz4 goes through zarr
    videos, _ = source.videos("train")
    plan = prp_epoch(videos, source.frames[videos], SamplerConfig(rates=(1, -2, 4)), seed=5, epoch=1)
    loader = ClipLoader(source, plan, batch_size=5, threads=3, prefetch=3)
    got = _batches(loader)
    assert len(got) == len(plan) // 5
    dim = 128 if kind == "two-ifm" else 64
    for i, (x, y) in enumerate(got):
        assert x.shape == (5, 8, 4, 4, dim) and x.dtype == np.float16
        for b in range(5):
            r = plan[5 * i + b]
            assert x[b].tobytes() == _expected(store, source.keys, r).tobytes()
            assert y[b] == r.label


def test_classification_batches_and_short_last_batch(synthetic_store):
    store = open_store(synthetic_store)
    source = TokenSource(store)
    videos, _ = source.videos("test")
    labels = store.videos.label[videos]
    plan = classification_epoch(videos, source.frames[videos], labels, seed=0, epoch=0, mode="segment")
    got = _batches(ClipLoader(source, plan, batch_size=7, drop_last=False))
    assert [len(y) for _, y in got] == [7] * (len(plan) // 7) + ([len(plan) % 7] if len(plan) % 7 else [])
    flat = [(x[b], y[b]) for x, y in got for b in range(len(y))]
    for (x, y), r in zip(flat, plan):
        assert x.tobytes() == _expected(store, source.keys, r).tobytes() and y == r.label


def test_a_plan_outside_a_video_is_refused_before_reading(synthetic_store):
    source = TokenSource(open_store(synthetic_store))
    videos, _ = source.videos("train")
    plan = prp_epoch(videos, source.frames[videos] + 50, SamplerConfig(), seed=0, epoch=0)
    with pytest.raises(StoreError, match=r"video \d+ has \d+ frames; a clip asks for"):
        ClipLoader(source, plan, batch_size=4)


def _copy(store_path, tmp_path):
    import shutil

    out = tmp_path / "copy.zarr"
    shutil.copytree(store_path, out)
    return out


def _first_shard(path):
    return path / "ifm" / "test-vit" / "tokens" / "c" / "0" / "0" / "0" / "0"


def test_a_damaged_shard_index_is_refused_not_read(synthetic_store, tmp_path):
    path = _copy(synthetic_store, tmp_path)
    shard = _first_shard(path)
    data = bytearray(shard.read_bytes())
    index_at = len(data) - (16 * 8 + 4)  # 8 frames per shard in the test stores
    # Point chunk 0 at chunk 1's bytes: without the crc32c check this serves the wrong frame.
    data[index_at : index_at + 8] = data[index_at + 16 : index_at + 24]
    shard.write_bytes(bytes(data))
    source = TokenSource(open_store(path))
    with pytest.raises(StoreError, match="fails its crc32c check"):
        source.clip(0, np.arange(4))


@pytest.mark.parametrize("kind", ["plain", "lz4"])
def test_a_damaged_frame_is_named_with_its_video_not_read(kind, synthetic_store, lz4_store, tmp_path):
    path = _copy(synthetic_store if kind == "plain" else lz4_store, tmp_path)
    v = 3
    shard, start, _ = frame_chunk(path, v, 2)
    data = bytearray(shard.read_bytes())
    data[start + 7] ^= 0x10  # one bit of frame 2's chunk (its values, or lz4's bytes of them)
    shard.write_bytes(bytes(data))
    store = open_store(path)
    source = TokenSource(store)
    source.clip(v, np.array([0, 1, 3]))  # the video's other frames read as ever
    with pytest.raises(DamagedFrameError, match=f"test-vit: {store.videos.name[v]}: frame 2 fails its crc32c") as e:
        source.clip(v, np.array([1, 2]))
    assert e.value.videos == [v]


@pytest.mark.parametrize("preload", [False, True])
def test_skipping_damaged_videos_keeps_every_batch_whole_and_clean(synthetic_store, tmp_path, caplog, preload):
    path = _copy(synthetic_store, tmp_path)
    store = open_store(path)
    source = TokenSource(store)
    videos, _ = source.videos("train")
    plan = prp_epoch(videos, source.frames[videos], SamplerConfig(rates=(1, 2)), seed=3, epoch=0)
    bad = plan[2].video  # the first batch meets it
    for f in range(int(source.frames[bad])):  # every frame: whichever a clip takes is damaged
        shard, start, size = frame_chunk(path, bad, f)
        data = bytearray(shard.read_bytes())
        data[start : start + size] = np.full(size // 2, 30000, "<f2").tobytes()
        shard.write_bytes(bytes(data))
    source = TokenSource(open_store(path), skip_damaged=True)
    if preload:
        source.preload(videos)
    got = _batches(ClipLoader(source, plan, batch_size=8, threads=2))
    assert len(got) == len(plan) // 8 and all(len(y) == 8 for _, y in got)
    assert list(source.damaged.found) == [bad]
    said = [r.getMessage() for r in caplog.records if "skipping video" in r.getMessage()]
    assert len(said) == 1 and str(store.videos.name[bad]) in said[0]
    for i, (x, y) in enumerate(got):
        assert not (x == 30000).any()  # no damaged value reaches a batch
        for b in range(8):
            r = plan[8 * i + b]
            if r.video != bad:  # the others stay as planned; a damaged video's give way to other clips
                assert x[b].tobytes() == _expected(store, source.keys, r).tobytes() and y[b] == r.label


def test_a_missing_or_truncated_shard_is_an_error_not_zeros(synthetic_store, tmp_path):
    path = _copy(synthetic_store, tmp_path)
    shard = _first_shard(path)
    os.truncate(shard, 100)
    with pytest.raises(StoreError, match="is truncated"):
        TokenSource(open_store(path)).clip(0, np.arange(4))
    shard.unlink()
    with pytest.raises(StoreError, match="is missing"):
        TokenSource(open_store(path)).clip(0, np.arange(4))


def test_open_shards_stay_bounded(synthetic_store):
    source = TokenSource(open_store(synthetic_store))
    reader = source._readers[0]
    reader.max_open = 2
    videos, _ = source.videos("train")
    plan = prp_epoch(videos, source.frames[videos], SamplerConfig(), seed=0, epoch=0)
    assert len(list(ClipLoader(source, plan, batch_size=8))) == len(plan) // 8
    assert len(reader._open) == 2  # the two most recently used shards stay open, no more
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    reader.close()
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds - 2


def test_a_batch_over_more_shards_than_may_stay_open_is_read_in_groups(synthetic_store):
    """A batch spanning more shard files than the bound opens them a group at a time: the frames
    are right and no more than twice the bound are ever open (not one file per shard touched)."""
    arrays = open_store(synthetic_store).ifm()
    reader = arrays.shard_reader()
    reader.max_open = 2
    rows = np.arange(arrays.tokens.shape[0])[::-1].copy()  # every row, shards in reverse order
    assert len(np.unique(rows // reader.per)) > 4
    peak, load = [0], reader._load

    def counting_load(shard):
        peak[0] = max(peak[0], len(reader._open) + 1)
        return load(shard)

    reader._load = counting_load
    out = np.empty((len(rows), *arrays.tokens.shape[1:]), arrays.tokens.dtype)
    reader.read_into(rows, out)
    np.testing.assert_array_equal(out, arrays.tokens[:][rows])
    assert peak[0] <= 2 * reader.max_open and len(reader._open) <= reader.max_open
    reader.close()


def test_a_damaged_offset_table_is_refused(synthetic_store, tmp_path):
    path = _copy(synthetic_store, tmp_path)
    store = open_store(path, mode="r+")
    offsets = store.ifm().group["offset"]
    offsets[1] = offsets[2]  # video 1 would read video 2's tokens
    with pytest.raises(StoreError, match="offset table of test-vit is damaged"):
        TokenSource(open_store(path))
