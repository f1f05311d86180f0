"""The store as other readers see it: core Zarr v3 types, dimension names, consolidated
metadata, xarray, tensorstore, dask; and stores of other format versions (format 2: no frame
checksums, reasons as zarr-python strings)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr
from conftest import extract_config, frame_chunk
from typer.testing import CliRunner

from advise_cache.cli import app
from advise_cache.errors import DamagedFrameError, StoreError
from advise_cache.extract import extract_videos
from advise_cache.ifm_layout import REASON_BYTES, video_checksum
from advise_cache.integrity import verify
from advise_cache.loader import TokenSource
from advise_cache.store import DONE, FAILED, FORMAT, PENDING, TABLE_FIELDS, create_store, open_store
from advise_cache.store_places import consolidate

runner = CliRunner()

# The data types of the Zarr v3 core specification (no extension such as "string").
CORE_TYPES = {
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
}


def array_metadata(store: Path) -> dict[str, dict]:
    """Every array's zarr.json, read as plain JSON, keyed by its path in the store."""
    out = {}
    for meta in store.rglob("zarr.json"):
        doc = json.loads(meta.read_text())
        if doc["node_type"] == "array":
            out[meta.parent.relative_to(store).as_posix()] = doc
    return out


def test_every_array_has_dimension_names_and_the_table_is_core_zarr(synthetic_store):
    arrays = array_metadata(synthetic_store)
    assert "ifm/test-vit/tokens" in arrays and "videos/split" in arrays
    for path, doc in arrays.items():
        names = doc.get("dimension_names")
        assert names is not None and len(names) == len(doc["shape"]), path
        assert all(isinstance(n, str) and n for n in names), path
    assert arrays["ifm/test-vit/tokens"]["dimension_names"] == ["row", "y", "x", "channel"]
    for path, doc in arrays.items():  # the table and every image model's arrays
        assert doc["data_type"] in CORE_TYPES, (path, doc["data_type"])
    inner = arrays["ifm/test-vit/tokens"]["codecs"][0]["configuration"]["codecs"]
    assert inner[-1] == {"name": "crc32c"}  # each frame's chunk ends in its crc32c


def test_text_columns_read_with_numbers_and_attributes_only(synthetic_store):
    """What a core-v3 reader (tensorstore, zarrs, ...) sees: numeric arrays plus JSON."""
    store = open_store(synthetic_store)
    table = store.videos
    assert table.split.dtype == np.dtypes.StringDType()  # what loader/trainer code reads
    v = zarr.open_group(synthetic_store / "videos", mode="r")
    split = np.array(v["split"].attrs["categories"])[v["split"][:]]
    assert split.tolist() == table.split.tolist()
    assert set(split.tolist()) == {"train", "test"}
    for col in ("name", "path"):
        ends, data = v[f"{col}_end"][:], v[f"{col}_utf8"][:].tobytes()
        starts = [0, *ends[:-1].tolist()]
        decoded = [data[a:b].decode() for a, b in zip(starts, ends.tolist())]
        assert decoded == getattr(table, col).tolist()
    errors = np.array(v["probe_error"].attrs["categories"])[v["probe_error"][:]]
    assert errors.tolist() == [""] * len(table)


def test_consolidated_metadata_lists_the_image_model(synthetic_store):
    root = json.loads((synthetic_store / "zarr.json").read_text())
    members = root["consolidated_metadata"]["metadata"]
    assert {"videos", "videos/split", "ifm", "ifm/test-vit", "ifm/test-vit/tokens"} <= set(members)
    assert members["ifm/test-vit/tokens"]["shape"] == list(open_store(synthetic_store).ifm().tokens.shape)


@pytest.mark.parametrize("which", ["synthetic_store", "views_store"])
def test_xarray_opens_the_image_model_group_and_the_video_table(request, which):
    """Also a store with views (issue 21): each view of a video is its rows from `view_start`."""
    synthetic_store = request.getfixturevalue(which)
    xr = pytest.importorskip("xarray")
    store = open_store(synthetic_store)
    a = store.ifm("test-vit")
    ifm = xr.open_zarr(synthetic_store, group="ifm/test-vit")
    assert ifm["tokens"].dims == ("row", "y", "x", "channel")
    assert ifm["tokens"].dtype == np.float16
    v = 3
    n = int(a.frames[v])
    for view in range(len(a.views)):
        lo = int(a.offset[v]) + view * int(a.view_stride[v])
        np.testing.assert_array_equal(ifm["tokens"][lo : lo + n].values, a.read_video(v, view))
    assert ifm["tokens"].shape[0] == int((a.view_stride * len(a.views)).sum())
    np.testing.assert_array_equal(ifm["status"].values, a.status())  # 0/1/2, not masked
    np.testing.assert_array_equal(ifm["offset"].values, a.offset)
    videos = xr.open_zarr(synthetic_store, group="videos")
    assert videos.sizes["video"] == len(store.videos)
    np.testing.assert_array_equal(videos["label"].values, store.videos.label)
    names = np.array(videos["split"].attrs["categories"])[videos["split"].values]
    assert names.tolist() == store.videos.split.tolist()


def _table(n: int = 3) -> dict:
    return {
        "name": [f"c/v{i}" for i in range(n)],
        "path": [f"/d/c/v{i}.mp4" for i in range(n)],
        "split": ["train", "test", "train"][:n],
        "label": [0, 1, 0][:n],
        "fps": [25.0] * n,
        "source_frames": [10, 12, 0][:n],
        "probe_error": ["", "", "cannot open é"][:n],
    }


def test_a_new_store_records_where_its_videos_came_from(tmp_path):
    source = {"split": 2, "annotations": ["/d/ucfTrainTestlist/classInd.txt"], "missing": ["c/gone"]}
    create_store(tmp_path / "s.zarr", "ucf101", "/d", ["a", "b"], _table(), source)
    store = open_store(tmp_path / "s.zarr")
    assert store.format == FORMAT == 3
    assert store.source == source
    t = store.videos
    assert t.probe_error.tolist() == ["", "", "cannot open é"]
    assert t.source_frames.tolist() == [10, 12, 0] and t.fps.dtype == np.float32
    assert verify(store, check_values=False) == ["no image model has been extracted into this store"]


def test_verify_checks_the_table(tmp_path):
    table = _table()
    table["name"][2] = table["name"][0]
    table["label"][1] = 7
    create_store(tmp_path / "s.zarr", "folder", "/d", ["a", "b"], table)
    problems = verify(open_store(tmp_path / "s.zarr"), check_values=False)
    assert problems[:2] == ["videos/name: names are not unique", "videos/label: 1 labels outside [-1, 2)"]


def test_a_format_1_store_is_still_read(tmp_path):
    """Format 1 (advise-cache 0.1.0) kept its text columns as zarr-python strings."""
    path = tmp_path / "old.zarr"
    g = zarr.open_group(path, mode="w", zarr_format=3)
    g.attrs["advise_cache"] = {
        "format": 1,
        "version": "0.1.0",
        "dataset": "ucf101",
        "root": "/d",
        "classes": ["a", "b"],
        "created": "2026-01-01T00:00:00+00:00",
    }
    v = g.create_group("videos")
    table = _table()
    numbers = {"label": "int32", "fps": "float32", "source_frames": "int64"}
    for field in TABLE_FIELDS:
        dtype = numbers.get(field, str)
        v.create_array(field, shape=(3,), chunks=(3,), dtype=dtype, fill_value=0 if field in numbers else "")
        v[field][:] = np.asarray(table[field], dtype=dtype)
    store = open_store(path)
    assert store.format == 1
    assert store.videos.name.tolist() == table["name"]
    assert store.videos.split.tolist() == table["split"]
    assert store.source == {"split": 1, "annotations": [], "missing": []}


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"format": 4, "version": "9.0", "classes": []}, r"store format 4 \(made by advise-cache 9.0\).*upgrade"),
        ({"format": 0, "classes": []}, "reads formats 1, 2, 3: extract it again"),
        ({}, "a Zarr group but not an advise-cache store"),
    ],
)
def test_other_formats_are_refused_with_a_clear_message(tmp_path, attrs, message):
    g = zarr.open_group(tmp_path / "x.zarr", mode="w", zarr_format=3)
    if attrs:
        g.attrs["advise_cache"] = attrs
    with pytest.raises(StoreError, match=message):
        open_store(tmp_path / "x.zarr")


# -- other readers: tensorstore, dask ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["none", "lz4", "views"])
def test_tensorstore_opens_every_array_and_checks_each_frame(request, tmp_path, kind):
    """Every array is core Zarr v3: tensorstore (no zarr-python code) opens and reads each one,
    the sharded tokens with their crc32c per frame included, and refuses a frame whose bytes changed.
    A store with views (issue 21): the last view's frames, `view_start` rows into the slot."""
    ts = pytest.importorskip("tensorstore")
    store = tmp_path / "s.zarr"
    fixture = {"none": "synthetic_store", "lz4": "lz4_store", "views": "views_store"}[kind]
    shutil.copytree(request.getfixturevalue(fixture), store)
    arrays = array_metadata(store)
    assert {"ifm/test-vit/reason_utf8", "ifm/test-vit/tokens", "videos/name_utf8"} <= set(arrays)

    def open_(path: str):
        return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store / path)}}).result()

    for path in arrays:
        np.testing.assert_array_equal(open_(path).read().result(), zarr.open_array(store / path, mode="r")[:])
    a = open_store(store).ifm("test-vit")
    v, view = 2, len(a.views) - 1
    skip = view * int(a.view_stride[v])  # 0 without views
    lo = int(a.offset[v]) + skip
    tokens = open_("ifm/test-vit/tokens")
    np.testing.assert_array_equal(tokens[lo : lo + 3].read().result(), a.read_frames(v, [0, 1, 2], view))
    path, start, size = frame_chunk(store, v, skip + 1)
    raw = bytearray(path.read_bytes())
    raw[start + 5] ^= 0xFF  # inside frame 1's chunk (compressed or not), not its crc32c
    path.write_bytes(bytes(raw))
    # tensorstore checks the crc32c too (a compressed chunk may fail blosc's own check first)
    with pytest.raises(ValueError, match="Digest mismatch" if kind == "none" else "Digest mismatch|Blosc error"):
        open_("ifm/test-vit/tokens")[lo + 1].read().result()
    which = f" \\(view {view}\\)" if view else ""
    with pytest.raises(DamagedFrameError, match=f"{open_store(store).videos.name[v]}: frame 1{which} fails"):
        open_store(store).ifm("test-vit").read_frames(v, [0, 1], view)


def test_dask_reads_one_video_in_one_chunk_per_shard(synthetic_store):
    """docs/STORE.md's recipe: a dask chunk per shard, the video's rows only (no padding rows)."""
    da = pytest.importorskip("dask.array")
    g = zarr.open_group(synthetic_store, mode="r")
    ifm = g["ifm/test-vit"]
    offset, frames, status = ifm["offset"][:], ifm["frames"][:], ifm["status"][:]
    tokens = ifm["tokens"]
    per = tokens.shards[0]
    x = da.from_zarr(tokens, chunks=tokens.shards)  # one task per shard file, not one per frame
    v = int(np.flatnonzero(status == 1)[0])
    video = x[offset[v] : offset[v] + frames[v]]
    assert video.numblocks[0] == -(-frames[v] // per) and video.shape[0] == frames[v]
    np.testing.assert_array_equal(video.compute(), open_store(synthetic_store).ifm().read_video(v))
    done = np.flatnonzero(status == 1)
    every = da.concatenate([x[offset[u] : offset[u] + frames[u]] for u in done])  # padding left out
    assert every.shape[0] == int(frames[done].sum())


# -- format 2: stores made before frame checksums ----------------------------------------------
def _as_format_2(store: Path, failed: tuple[int, str] | None = None) -> None:
    """Rewrite a fresh store as advise-cache wrote it before format 3 (2082a74): one-frame
    chunks without a crc32c, reasons in a zarr-python string array, the per-video checksum over
    each shard's token bytes, format 2. `failed`: a video recorded as failed with its reason."""
    g = zarr.open_group(store, mode="a", use_consolidated=False)
    ifm = g["ifm/test-vit"]
    old = ifm["tokens"]
    offset, frames, status = ifm["offset"][:], ifm["frames"][:], ifm["status"][:]
    rows = {v: old[offset[v] : offset[v] + frames[v]] for v in np.flatnonzero(status == DONE)}
    del ifm["tokens"], ifm["reason_utf8"]
    t = ifm.create_array(
        "tokens",
        shape=old.shape,
        dtype=old.dtype,
        chunks=old.chunks,
        shards=old.shards,
        compressors=None,
        fill_value=0,
        dimension_names=("row", "y", "x", "channel"),
    )
    reason = ifm.create_array(
        "reason", shape=(len(frames),), chunks=(1,), dtype=str, fill_value="", dimension_names=("video",)
    )
    per = old.shards[0]
    with zarr.config.set({"array.write_empty_chunks": True}):
        for v, x in rows.items():
            t[offset[v] : offset[v] + frames[v]] = x
            shard_crcs = [google_crc32c.value(np.ascontiguousarray(x[k : k + per])) for k in range(0, len(x), per)]
            ifm["checksum"][v] = video_checksum(shard_crcs)
    if failed is not None:
        v, why = failed
        reason[v], ifm["status"][v] = why, FAILED
    g.attrs["advise_cache"] = {**g.attrs["advise_cache"], "format": 2}
    consolidate(store)


def test_a_store_made_before_frame_checksums_is_read_resumed_and_said_so(synthetic_root, synthetic_store, tmp_path):
    out = tmp_path / "old.zarr"
    shutil.copytree(synthetic_store, out)
    _as_format_2(out, failed=(0, "cannot decode é"))
    store = open_store(out)
    a = store.ifm("test-vit")
    assert store.format == 2 and not a.frame_checked and a.shard_reader() is not None  # read directly
    assert a.reasons()[0] == "cannot decode é" and a.status()[0] == FAILED
    new = open_store(synthetic_store).ifm("test-vit")
    source = TokenSource(store)
    videos = np.flatnonzero(a.status() == DONE)[:4]
    indices = np.stack([np.arange(3)] * len(videos))
    out_ = np.empty((len(videos), 3, *a.grid, a.dim), np.float16)
    source.fill(videos, indices, [out_])
    for b, v in enumerate(videos):
        np.testing.assert_array_equal(out_[b], new.read_frames(int(v), [0, 1, 2]))
    assert verify(store, deep=True) == []
    r = runner.invoke(app, ["info", str(out)])
    assert "frames carry no checksums" in r.output and "failed " in r.output and "cannot decode é" in r.output
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 0 and "note: test-vit: frames carry no checksums" in r.output, r.output
    # Extraction resumes into it in its own layout: a video written again has the bytes it had.
    v = int(videos[1])
    shard = a.shard_paths(v)[0]
    before = shard.read_bytes()
    opened = open_store(out, mode="a").ifm("test-vit")
    assert opened.claim([v], state=DONE) == [v]
    opened.reopen(v)
    opened.clear_video(v)
    opened.release()
    assert open_store(out).ifm("test-vit").status()[v] == PENDING and not shard.exists()
    summary = extract_videos(extract_config(synthetic_root, out))
    assert summary.done == 1 and summary.failed == [{"name": str(store.videos.name[0]), "reason": "cannot decode é"}]
    assert shard.read_bytes() == before
    again = open_store(out)
    assert again.ifm("test-vit").status()[v] == DONE and verify(again, deep=True) == []


def test_a_reason_is_kept_as_utf8_bytes_cut_at_a_character(tmp_path):
    table = _table()
    create_store(tmp_path / "s.zarr", "folder", "/d", ["a", "b"], table)
    info = {"model": "m", "pretrained": "none", "weights_sha256": "0", "input_size": 8, "grid": [2, 2], "dim": 4}
    a = open_store(tmp_path / "s.zarr", mode="a").add_ifm(
        "k", {**info, "normalisation": "n", "precision": "fp32"}, 1, 4
    )
    long = "é" * REASON_BYTES  # 2 bytes each: cut at byte REASON_BYTES, a character boundary
    a.mark_failed(0, "cannot open a/b.mp4: ünïcode")
    a.mark_failed(1, long)
    reasons = open_store(tmp_path / "s.zarr").ifm("k").reasons()
    assert reasons.tolist()[:2] == ["cannot open a/b.mp4: ünïcode", long[: REASON_BYTES // 2]]
    assert reasons[2] == ""
    raw = zarr.open_array(tmp_path / "s.zarr" / "ifm" / "k" / "reason_utf8", mode="r")
    assert raw.dtype == np.uint8 and raw.shape == (3, REASON_BYTES) and raw.chunks == (1, REASON_BYTES)


def test_the_codec_names_light_modules_use_are_the_stores_codecs():
    """configs.py takes the codec names from ifm_layout.py, without zarr; store.py builds them."""
    from advise_cache import configs, ifm_layout, store

    assert tuple(store.CODECS) == ifm_layout.CODEC_NAMES
    assert configs.ExtractConfig.__dataclass_fields__["codec"].default in store.CODECS
