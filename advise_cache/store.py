"""The Zarr layout of a feature cache: create it, open it, add an image model, summarise it.

With ifm_arrays.py (one image model's arrays: claims, writes, checksums, reads), the only
module that imports zarr; integrity.py walks a store for `verify`. docs/STORE.md describes
the layout; in short::

    STORE.zarr/                 attrs["advise_cache"]: format, version, dataset, root, classes,
      videos/                     split, annotations, missing; consolidated metadata
        name_end name_utf8 path_end path_utf8    text as UTF-8 bytes + end offsets
        split probe_error                        codes; attrs["categories"] are the names
        label fps source_frames                  the per-video table, written at creation
      ifm/<key>/                one group per image model; attrs["advise_cache"]: the model,
        tokens  (F, h, w, D)      weights, pixels, grid, dim, dtype, stride, codec, version;
                                  each one-frame chunk ends in its crc32c (zarr's crc32c codec)
        offset  (V,)  first row of each video in `tokens` (a multiple of frames_per_shard)
        frames  (V,)  rows of each video
        status  (V,)  0 pending, 1 done, 2 failed   (one chunk per video)
        reason_utf8 (V, 512) why a video failed, UTF-8, zero-padded (one chunk per video)
        checksum (V,) crc32c of a done video's frame crc32c values (one chunk per video)
        claims.lock   byte v locked by the process writing video v (not Zarr)

Each video starts on a shard boundary, so every shard belongs to exactly one video: writers
that own disjoint videos never touch the same object, and a video is rewritten whole when an
interrupted run resumes. Rows past a video's end are never written and cost no bytes.
Creation is atomic (atomic.py: built beside the target, then renamed; in a bucket, built in
memory and published with the node's zarr.json last and only if absent), so processes racing
to create the same store or IFM group end up agreeing on one. A store is a local folder or a
prefix in an object store (storage.py: s3://, gs://, az://); zarr reaches a bucket through its
obstore-backed ObjectStore, and the shard files through `storage.Bucket`.

Every array is core Zarr v3 (numbers only, `dimension_names` set), so xarray, tensorstore
and other readers need no zarr-python extension; `Store.videos` reads format 1 stores too,
whose text columns are zarr-python strings, and image-model groups made before format 3 (no
frame checksums, `reason` as zarr-python strings) are read and resumed as they are.
"""

from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs

from . import __version__
from .atomic import atomic_create, publish
from .errors import StoreError, first_line
from .ifm_arrays import FEATURE_KEYS, IFMArrays, attributes

# The status values are public through this module too (`from advise_cache.store import DONE`).
from .ifm_layout import (  # noqa: F401
    CODEC_NAMES,
    DEFAULT_CODEC,
    DONE,
    FAILED,
    NO_CHECKSUM,
    PENDING,
    QUANT_ERROR_ARRAYS,
    TOKEN_DTYPES,
    create_arrays,
    slot_offsets,
)
from .quant import SCALE_BYTES, SCHEME
from .storage import Location, StoreURL, bucket, store_location
from .store_places import check_creatable, consolidate, empty_group, in_memory, open_group, store_exists  # noqa: F401

log = logging.getLogger(__name__)

# 2: text columns as bytes or codes, dimension names, consolidated metadata; 3: a crc32c per
# stored frame, failure reasons as UTF-8 bytes (docs/STORE.md, "Format versions")
FORMAT = 3
READABLE_FORMATS = (1, 2, 3)
# Chosen by measurement (pipelines/benchmarks/extract.py, BENCHMARKS.md): lossless codecs gain
# little on float tokens and cost read speed, which bounds training.
CODECS = {
    "none": None,
    "lz4": zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),  # typesize from dtype
    "zstd": zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
}
# CODEC_NAMES (ifm_layout.py) names these, for modules that must not import zarr (configs.py)
TABLE_FIELDS = ("name", "path", "split", "label", "fps", "source_frames", "probe_error")
_NUMBERS = {"label": "int32", "fps": "float32", "source_frames": "int64"}
_CATEGORICAL = ("split", "probe_error")  # few distinct values: int32 codes + names
_TEXT = ("name", "path")  # one value per video: UTF-8 bytes + end offsets
SAFE_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # an IFM key is a folder name inside ifm/


@dataclass(frozen=True)
class VideoTable:
    """The per-video table, as numpy arrays indexed by video."""

    name: np.ndarray
    path: np.ndarray
    split: np.ndarray
    label: np.ndarray
    fps: np.ndarray
    source_frames: np.ndarray
    probe_error: np.ndarray

    def __len__(self) -> int:
        return len(self.name)


def create_store(
    path: Location | str, dataset: str, root: str, classes: list[str], table: dict, source: dict | None = None
) -> None:
    """Create a store holding the dataset's video table; no IFM yet. Atomic.

    `source` says where the video list came from (`DatasetIndex.source()`): the official
    split number, the annotation files read, and the listed videos missing on disk."""
    path = store_location(path)
    source = source or {}
    n = len(table["name"])

    def build(tmp: Path) -> None:
        g = zarr.open_group(tmp, mode="w", zarr_format=3)
        g.attrs["advise_cache"] = {
            "format": FORMAT,
            "version": __version__,
            "dataset": dataset,
            "root": root,
            "classes": list(classes),
            "split": source.get("split", 1),
            "annotations": [str(a) for a in source.get("annotations", [])],
            "missing": [str(m) for m in source.get("missing", [])],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        v = g.create_group("videos")
        for field, dtype in _NUMBERS.items():
            _column(v, field, np.asarray(table[field], dtype=dtype).reshape(n), ("video",))
        for field in _CATEGORICAL:
            values = [str(x) for x in table[field]]
            categories = sorted(set(values))
            lookup = {c: i for i, c in enumerate(categories)}
            codes = np.array([lookup[x] for x in values], dtype="int32").reshape(n)
            _column(v, field, codes, ("video",), {"categories": categories})
        for field in _TEXT:
            encoded = [str(x).encode("utf-8") for x in table[field]]
            ends = np.cumsum([len(b) for b in encoded], dtype="int64").reshape(n)
            data = np.frombuffer(b"".join(encoded), dtype="uint8")
            _column(v, f"{field}_end", ends, ("video",), {"text": f"{field}_utf8", "encoding": "utf-8"})
            _column(v, f"{field}_utf8", data, (f"{field}_byte",))
        consolidate(tmp)

    if isinstance(path, StoreURL):
        made = publish(bucket(path), in_memory(build), "zarr.json")
    else:
        made = atomic_create(path, build)
    if not made:
        log.info("store %s was created by another process", path)


def _column(group, name: str, values: np.ndarray, dims: tuple[str, ...], attrs: dict | None = None):
    """A one-chunk array holding `values`, with its dimension names."""
    arr = group.create_array(
        name,
        shape=values.shape,
        chunks=(max(len(values), 1),),
        dtype=values.dtype,
        fill_value=0,
        dimension_names=dims,
        attributes=attrs or {},
    )
    if len(values):
        arr[:] = values
    return arr


def _read_table(group, fmt: int) -> VideoTable:
    """The video table of a store of format `fmt`, text columns as numpy StringDType."""
    v = group["videos"]
    if fmt == 1:  # zarr-python string arrays
        return VideoTable(**{f: v[f][:] for f in TABLE_FIELDS})
    strings = np.dtypes.StringDType()
    cols = {f: v[f][:] for f in _NUMBERS}
    for f in _CATEGORICAL:
        names = np.array(v[f].attrs["categories"], dtype=strings)
        codes = v[f][:]
        cols[f] = names[codes] if len(codes) else np.array([], dtype=strings)
    for f in _TEXT:
        ends = v[f"{f}_end"][:]
        data = v[f"{f}_utf8"][:].tobytes()
        starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
        cols[f] = np.array([data[a:b].decode("utf-8") for a, b in zip(starts.tolist(), ends.tolist())], dtype=strings)
    return VideoTable(**cols)


class Store:
    """An open feature cache. `open_store` for reading, `create_store` + `open_store` to fill."""

    def __init__(self, path: Location | str, mode: str = "r", local_cache=None):
        self.path = store_location(path)
        self.remote = isinstance(self.path, StoreURL)
        self.bucket = bucket(self.path) if self.remote else None
        self.local_cache = local_cache  # a remote_shards.ShardCache for the shards of a bucket, or None
        if local_cache is not None and not self.remote:
            log.warning("--local-cache is for stores in a bucket; %s is local and is read in place", self.path)
        if not store_exists(self.path):
            raise StoreError(f"{self.path} is not a store (no zarr.json); create it with `advise-cache extract`")
        self.group = open_group(self.path, mode)
        self.meta = attributes(self.group)
        fmt = self.meta.get("format")
        if not isinstance(fmt, int) or "classes" not in self.meta:
            raise StoreError(f"{self.path} is a Zarr group but not an advise-cache store (no advise_cache attributes)")
        if fmt not in READABLE_FORMATS:
            made = self.meta.get("version", "?")
            raise StoreError(
                f"{self.path} has store format {fmt} (made by advise-cache {made}); this advise-cache "
                f"{__version__} reads formats {', '.join(map(str, READABLE_FORMATS))}: "
                + ("upgrade advise-cache" if fmt > FORMAT else "extract it again")
            )
        self.format = fmt
        self.mode = mode
        self._table: VideoTable | None = None
        self._ifms: dict[str, IFMArrays] = {}

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]

    @property
    def root(self) -> str | None:
        """The dataset folder the videos were read from, as given to extract."""
        return self.meta.get("root")

    @property
    def created(self) -> str:
        """When the store was created (names its local shard cache)."""
        return str(self.meta.get("created", ""))

    @property
    def videos(self) -> VideoTable:
        if self._table is None:
            try:
                self._table = _read_table(self.group, self.format)
            except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
                raise StoreError(f"{self.path}: the video table is damaged: {_damage(e)}") from e
        return self._table

    @property
    def source(self) -> dict:
        """Where the video list came from: official split, annotation files, missing videos
        (format 1 stores did not record them: split 1, none, none)."""
        return {
            "split": self.meta.get("split", 1),
            "annotations": list(self.meta.get("annotations", [])),
            "missing": list(self.meta.get("missing", [])),
        }

    def ifm_keys(self) -> list[str]:
        if "ifm" not in self.group:
            return []
        # Hidden folders are groups being built (or left by a killed run), never a model.
        try:
            return sorted(k for k, _ in self.group["ifm"].groups() if not k.startswith("."))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(
                f"{self.path}: its image models cannot be listed, the store is damaged: {_damage(e)}"
            ) from e

    def ifm(self, key: str | None = None) -> IFMArrays:
        keys = self.ifm_keys()
        if key is None:
            if len(keys) != 1:
                raise StoreError(
                    f"{self.path} holds {len(keys)} image models ({', '.join(keys) or 'none'}); pick one with --ifm"
                )
            key = keys[0]
        if key not in keys:
            raise StoreError(f"{self.path} has no image model {key!r}; it holds: {', '.join(keys) or 'none'}")
        if key not in self._ifms:
            try:
                self._ifms[key] = IFMArrays(self, key)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise StoreError(f"{self.path}: image model {key!r} is damaged: {_damage(e)}") from e
        return self._ifms[key]

    def add_ifm(
        self,
        key: str,
        info: dict,
        frame_stride: int,
        frames_per_shard: int,
        codec: str = DEFAULT_CODEC,
        dtype: str = "float16",
        views: list[dict] | None = None,
    ) -> IFMArrays:
        """Create the IFM's group (atomically) or check that an existing one matches. `views`:
        the stored views (views.view_specs) where there are more than the centre crop."""
        if not SAFE_KEY.fullmatch(key):
            raise StoreError(
                f"image model key {key!r}: use letters, digits, '-', '_' and '.', "
                "not starting with '.' (it names a folder inside the store)"
            )
        if codec not in CODECS:
            raise StoreError(f"unknown codec {codec!r}; choose from {', '.join(CODECS)}")
        if dtype not in TOKEN_DTYPES:
            raise StoreError(f"unsupported token dtype {dtype!r}; use {', '.join(TOKEN_DTYPES)}")
        table = self.videos
        frames = -(-table.source_frames // frame_stride)  # ceil
        views = views if views and len(views) > 1 else None  # the centre crop alone: no record, as before
        offset, total = slot_offsets(frames, frames_per_shard, len(views) if views else 1)
        h, w = info["grid"]
        meta = dict(
            info,
            dtype=dtype,
            frame_stride=frame_stride,
            frames_per_shard=frames_per_shard,
            codec=codec,
            version=__version__,
        )
        if views:
            meta["views"] = views
        # int8: each token's D values then its float16 scale, 2 more bytes (quant.py)
        row = info["dim"] + (SCALE_BYTES if dtype == "int8" else 0)
        if dtype == "int8":
            meta["quantisation"] = SCHEME
        ifm_dir = self.path / "ifm"
        if "ifm" not in self.group and not self.remote:
            ifm_dir.mkdir(exist_ok=True)
            if not (ifm_dir / "zarr.json").exists():
                zarr.open_group(ifm_dir, mode="a", zarr_format=3)
        elif "ifm" not in self.group:
            self.bucket.write("ifm/zarr.json", in_memory(empty_group)["zarr.json"], only_new=True)

        def build(tmp) -> None:
            g = zarr.open_group(tmp, mode="w", zarr_format=3)
            g.attrs["advise_cache"] = meta
            # Each chunk (a frame) ends in its crc32c: every reader, ours or zarr's, checks what it reads.
            compressors = [c for c in (CODECS[codec], zarr.codecs.Crc32cCodec()) if c is not None]
            create_arrays(g, (offset, frames, total), (h, w, row), dtype, frames_per_shard, compressors)

        if not self.remote:
            atomic_create(ifm_dir / key, build)
        elif not self.bucket.exists(f"ifm/{key}/zarr.json"):  # never over an existing group's arrays
            publish(self.bucket, {f"ifm/{key}/{k}": v for k, v in in_memory(build).items()}, f"ifm/{key}/zarr.json")
        consolidate(self.path)
        self.group = open_group(self.path, self.mode)
        arrays = self.ifm(key)
        diff = arrays.meta.differences(meta)
        if diff:
            raise StoreError(
                f"{self.path} already holds an image model {key!r} made differently ({'; '.join(diff)}). "
                "Resume with the same settings, or pick another --name"
            )
        return arrays

    def fingerprint(self, keys: list[str]) -> dict:
        """What a checkpoint records to tell whether another store has the same features."""
        out = [self.ifm(key).meta.as_stored(FEATURE_KEYS) for key in keys]
        return {"ifms": keys, "features": out}

    def table_problems(self) -> list[str]:
        """The video table's own consistency: one row per video everywhere, unique names, labels
        within the classes, codes within their categories."""
        problems = []
        n = len(self.videos)  # first: a table that cannot be read is one StoreError
        v = self.group["videos"]
        if self.format >= 2:
            for f in (*_NUMBERS, *_CATEGORICAL, *(f"{t}_end" for t in _TEXT)):
                if v[f].shape != (n,):
                    problems.append(f"videos/{f}: shape {v[f].shape}, expected ({n},)")
            for f in _CATEGORICAL:
                codes = v[f][:]
                if len(codes) and (codes.min() < 0 or codes.max() >= len(v[f].attrs["categories"])):
                    problems.append(f"videos/{f}: codes outside its {len(v[f].attrs['categories'])} categories")
            for t in _TEXT:
                ends = v[f"{t}_end"][:]
                if (np.diff(ends) < 0).any() or (len(ends) and ends[-1] != v[f"{t}_utf8"].shape[0]):
                    problems.append(f"videos/{t}_end: offsets do not cover videos/{t}_utf8")
        table = self.videos
        if len(set(table.name.tolist())) != n:
            problems.append("videos/name: names are not unique")
        bad = (table.label < -1) | (table.label >= len(self.classes))
        if bad.any():
            problems.append(f"videos/label: {int(bad.sum())} labels outside [-1, {len(self.classes)})")
        return problems


def open_store(path: Location | str, mode: str = "r", local_cache=None) -> Store:
    """The store at a path or URL; `local_cache` (a remote_shards.ShardCache) keeps a bucket's
    shards on local disk for training."""
    path = store_location(path)
    if isinstance(path, StoreURL):
        try:
            return Store(path, mode, local_cache)
        except StoreError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{path} is damaged: {_damage(e)}") from e
    if not path.exists():
        raise StoreError(f"store {path} does not exist")
    if not path.is_dir():
        raise StoreError(f"{path} is a file, not a store")
    try:
        return Store(path, mode)
    except StoreError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:  # a cut zarr.json, a missing array, ...
        raise StoreError(f"{path} is damaged: {_damage(e)}") from e


def _damage(e: BaseException) -> str:
    if isinstance(e, KeyError):
        return f"{e.args[0] if e.args else e} is missing"
    return f"{type(e).__name__}: {first_line(e, 200)}"
