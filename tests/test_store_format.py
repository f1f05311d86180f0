"""The store as other readers see it: core Zarr v3 types, dimension names, consolidated
metadata, xarray; and stores of other format versions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from advise_cache.errors import StoreError
from advise_cache.integrity import verify
from advise_cache.store import FORMAT, TABLE_FIELDS, create_store, open_store

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
    for path, doc in arrays.items():
        if path.startswith("videos/"):
            assert doc["data_type"] in CORE_TYPES, (path, doc["data_type"])


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


def test_xarray_opens_the_image_model_group_and_the_video_table(synthetic_store):
    xr = pytest.importorskip("xarray")
    store = open_store(synthetic_store)
    a = store.ifm("test-vit")
    ifm = xr.open_zarr(synthetic_store, group="ifm/test-vit")
    assert ifm["tokens"].dims == ("row", "y", "x", "channel")
    assert ifm["tokens"].dtype == np.float16
    v = 3
    lo, n = int(a.offset[v]), int(a.frames[v])
    np.testing.assert_array_equal(ifm["tokens"][lo : lo + n].values, a.read_video(v))
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
