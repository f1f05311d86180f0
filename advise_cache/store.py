"""The Zarr layout of a feature cache: create, add an IFM, write, resume, read, inspect.

The only module that imports zarr. docs/STORE.md describes the layout; in short::

    STORE.zarr/                 attrs["advise_cache"]: format, version, dataset, root, classes,
      videos/                     split, annotations, missing; consolidated metadata
        name_end name_utf8 path_end path_utf8    text as UTF-8 bytes + end offsets
        split probe_error                        codes; attrs["categories"] are the names
        label fps source_frames                  the per-video table, written at creation
      ifm/<key>/                one group per image model; attrs["advise_cache"]: the model,
        tokens  (F, h, w, D)      weights, pixels, grid, dim, dtype, stride, codec, version
        offset  (V,)  first row of each video in `tokens` (a multiple of frames_per_shard)
        frames  (V,)  rows of each video
        status  (V,)  0 pending, 1 done, 2 failed   (one chunk per video)
        reason  (V,)  why a video failed            (one chunk per video)
        checksum (V,) crc32c of a done video's tokens (one chunk per video)
        claims.lock   byte v locked by the process writing video v (not Zarr)

Each video starts on a shard boundary, so every shard belongs to exactly one video: writers
that own disjoint videos never touch the same object, and a video is rewritten whole when an
interrupted run resumes. Rows past a video's end are never written and cost no bytes.
Creation is atomic (built beside the target, then renamed), so processes racing to create
the same store or IFM group end up agreeing on one.

Every array is core Zarr v3 (numbers only, `dimension_names` set), so xarray, tensorstore
and other readers need no zarr-python extension; `videos_table` reads format 1 stores too,
whose text columns are zarr-python strings.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import struct
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
import zarr.codecs

from . import __version__
from .errors import StoreError, first_line
from .shards import ShardReader, index_bytes, shard_index


log = logging.getLogger(__name__)

FORMAT = 2  # 2: text columns as bytes or codes, dimension names, consolidated metadata
READABLE_FORMATS = (1, 2)
PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}
# Chosen by measurement (pipelines/bench_extract.py, BENCHMARKS.md): lossless codecs gain
# little on float tokens and cost read speed, which bounds training.
CODECS = {
    "none": None,
    "lz4": zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),  # typesize from dtype
    "zstd": zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
}
DEFAULT_CODEC = "none"
TABLE_FIELDS = ("name", "path", "split", "label", "fps", "source_frames", "probe_error")
_NUMBERS = {"label": "int32", "fps": "float32", "source_frames": "int64"}
_CATEGORICAL = ("split", "probe_error")  # few distinct values: int32 codes + names
_TEXT = ("name", "path")  # one value per video: UTF-8 bytes + end offsets
SAFE_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # an IFM key is a folder name inside ifm/
_TMP = re.compile(r"\.(.+)\.tmp-(?:(\d+)-)?[0-9a-f]{8}")  # .<name>.tmp-<pid>-<hex>; old ones lack the pid
NO_CHECKSUM = -1  # `checksum` of a video not (yet) written, or of a group made before checksums
STALE_AFTER = 60.0  # seconds: a group takes well under a second to build


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


def _meta(node) -> dict:
    return dict(node.attrs.get("advise_cache", {}))


def _atomic_create(target: Path, build) -> bool:
    """Build a directory next to `target` with `build(tmp)`, then rename it into place.
    Returns False (and discards ours) when another process got there first. The hidden
    folder's name carries our pid, so a later run can tell one left by a killed process."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
            return True
        except OSError:
            if target.exists():
                return False
            raise
    finally:
        if tmp.exists():
            _remove_build(tmp)


def _remove_build(tmp: Path, settle: float = 0.05, limit: float = 2.0) -> None:
    """Remove a failed build's folder. zarr may still be finishing writes it started beside
    the one that failed (its asyncio.gather does not stop them), which recreate folders
    under `tmp` after a first sweep: sweep until it stays gone for a moment."""
    deadline = time.monotonic() + limit
    while True:
        shutil.rmtree(tmp, ignore_errors=True)
        time.sleep(settle)
        if not tmp.exists() or time.monotonic() > deadline:
            return


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _building(folder: Path) -> tuple[list[Path], list[Path]]:
    """Hidden folders of `_atomic_create` in `folder`: (being built now, left by a killed
    run). Left behind: its process is gone and it is older than a build takes, or it is
    far older than any build (its pid may be of another machine sharing the store)."""
    live, stale = [], []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return live, stale
    now = time.time()
    for p in entries:
        m = _TMP.fullmatch(p.name)
        if not m:
            continue
        try:
            age = now - p.lstat().st_mtime
        except OSError:
            continue
        dead = m[2] is None or not _pid_alive(int(m[2]))
        (stale if (dead and age > STALE_AFTER) or age > 60 * STALE_AFTER else live).append(p)
    return live, stale


def clean_leftovers(folder: Path) -> list[Path]:
    """Remove hidden build folders left in `folder` by killed runs; returns what was removed."""
    _, stale = _building(folder)
    for p in stale:
        log.warning("removing %s, left by an interrupted run", p)
        shutil.rmtree(p, ignore_errors=True)
    return stale


def create_store(path: Path, dataset: str, root: str, classes: list[str], table: dict,
                 source: dict | None = None) -> None:
    """Create a store holding the dataset's video table; no IFM yet. Atomic.

    `source` says where the video list came from (`DatasetIndex.source()`): the official
    split number, the annotation files read, and the listed videos missing on disk."""
    path = Path(path)
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
            _column(v, f"{field}_end", ends, ("video",),
                    {"text": f"{field}_utf8", "encoding": "utf-8"})
            _column(v, f"{field}_utf8", data, (f"{field}_byte",))
        _consolidate(tmp)

    if not _atomic_create(path, build):
        log.info("store %s was created by another process", path)


def _column(group, name: str, values: np.ndarray, dims: tuple[str, ...], attrs: dict | None = None):
    """A one-chunk array holding `values`, with its dimension names."""
    arr = group.create_array(name, shape=values.shape, chunks=(max(len(values), 1),),
                             dtype=values.dtype, fill_value=0, dimension_names=dims,
                             attributes=attrs or {})
    if len(values):
        arr[:] = values
    return arr


def _open_group(path: Path, mode: str):
    """The group as it is on disk: never through consolidated metadata, which is for other
    readers and is stale while an IFM group is being added."""
    return zarr.open_group(path, mode=mode, zarr_format=3, use_consolidated=False)


def _consolidate(path: Path) -> None:
    """Write consolidated metadata (zarr-python's, outside the v3 spec) into the root
    zarr.json for readers that use it (xarray). Waits out IFM groups being built beside
    their target so that none of them is recorded; those left by killed runs are removed."""
    clean_leftovers(path / "ifm")
    for _ in range(200):
        if not _building(path / "ifm")[0]:
            break
        time.sleep(0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not part of the Zarr format 3 specification"
        zarr.consolidate_metadata(zarr.storage.LocalStore(path), zarr_format=3)


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
        cols[f] = np.array([data[a:b].decode("utf-8") for a, b in zip(starts.tolist(), ends.tolist())],
                           dtype=strings)
    return VideoTable(**cols)


class Store:
    """An open feature cache. `open_store` for reading, `create_store` + `open_store` to fill."""

    def __init__(self, path: Path | str, mode: str = "r"):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise StoreError(f"{self.path} is not a store (no zarr.json); create it with `advise-cache extract`")
        self.group = _open_group(self.path, mode)
        self.meta = _meta(self.group)
        fmt = self.meta.get("format")
        if not isinstance(fmt, int) or "classes" not in self.meta:
            raise StoreError(f"{self.path} is a Zarr group but not an advise-cache store "
                             "(no advise_cache attributes)")
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
        return {"split": self.meta.get("split", 1), "annotations": list(self.meta.get("annotations", [])),
                "missing": list(self.meta.get("missing", []))}

    def ifm_keys(self) -> list[str]:
        if "ifm" not in self.group:
            return []
        # Hidden folders are groups being built (or left by a killed run), never a model.
        try:
            return sorted(k for k, _ in self.group["ifm"].groups() if not k.startswith("."))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{self.path}: its image models cannot be listed, the store is damaged: "
                             f"{_damage(e)}") from e

    def ifm(self, key: str | None = None) -> "IFMArrays":
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

    def add_ifm(self, key: str, info: dict, frame_stride: int, frames_per_shard: int,
                codec: str = DEFAULT_CODEC, dtype: str = "float16") -> "IFMArrays":
        """Create the IFM's group (atomically) or check that an existing one matches."""
        if not SAFE_KEY.fullmatch(key):
            raise StoreError(f"image model key {key!r}: use letters, digits, '-', '_' and '.', "
                             "not starting with '.' (it names a folder inside the store)")
        if codec not in CODECS:
            raise StoreError(f"unknown codec {codec!r}; choose from {', '.join(CODECS)}")
        if dtype not in ("float16", "float32"):
            raise StoreError(f"unsupported token dtype {dtype!r}; use float16 or float32")
        table = self.videos
        frames = -(-table.source_frames // frame_stride)  # ceil
        offset, total = _slot_offsets(frames, frames_per_shard)
        h, w = info["grid"]
        meta = dict(info, dtype=dtype, frame_stride=frame_stride, frames_per_shard=frames_per_shard,
                    codec=codec, version=__version__)
        ifm_dir = self.path / "ifm"
        if "ifm" not in self.group:
            ifm_dir.mkdir(exist_ok=True)
            if not (ifm_dir / "zarr.json").exists():
                zarr.open_group(ifm_dir, mode="a", zarr_format=3)

        def build(tmp: Path) -> None:
            g = zarr.open_group(tmp, mode="w", zarr_format=3)
            g.attrs["advise_cache"] = meta
            g.create_array(
                "tokens", shape=(total, h, w, info["dim"]), dtype=dtype,
                chunks=(1, h, w, info["dim"]), shards=(frames_per_shard, h, w, info["dim"]),
                compressors=CODECS[codec], fill_value=0, dimension_names=("row", "y", "x", "channel"),
            )
            n = len(table)
            for name, values in (("offset", offset), ("frames", frames)):
                a = g.create_array(name, shape=(n,), chunks=(max(n, 1),), dtype="int64", fill_value=0,
                                   dimension_names=("video",))
                if n:
                    a[:] = values
            g.create_array("status", shape=(n,), chunks=(1,), dtype="int8", fill_value=PENDING,
                           dimension_names=("video",))
            g.create_array("reason", shape=(n,), chunks=(1,), dtype=str, fill_value="",
                           dimension_names=("video",))
            g.create_array("checksum", shape=(n,), chunks=(1,), dtype="int64", fill_value=NO_CHECKSUM,
                           dimension_names=("video",))

        _atomic_create(ifm_dir / key, build)
        _consolidate(self.path)
        self.group = _open_group(self.path, self.mode)
        arrays = self.ifm(key)
        keep = ("model", "pretrained", "weights_sha256", "input_size", "grid", "dim", "dtype",
                "frame_stride", "frames_per_shard", "codec", "normalisation", "precision")
        diff = [k for k in keep if json.dumps(arrays.meta.get(k)) != json.dumps(meta.get(k))]
        if diff:
            detail = "; ".join(f"{k}: store {arrays.meta.get(k)!r}, now {meta.get(k)!r}" for k in diff)
            raise StoreError(
                f"{self.path} already holds an image model {key!r} made differently ({detail}). "
                "Resume with the same settings, or pick another --name"
            )
        return arrays

    def fingerprint(self, keys: list[str]) -> dict:
        """What a checkpoint records to tell whether another store has the same features."""
        out = []
        for key in keys:
            m = self.ifm(key).meta
            out.append({k: m.get(k) for k in ("model", "pretrained", "weights_sha256", "input_size",
                                               "normalisation", "grid", "dim", "frame_stride")})
        return {"ifms": keys, "features": out}


class IFMArrays:
    """The arrays of one image model inside a store."""

    def __init__(self, store: Store, key: str):
        self.store = store
        self.key = key
        self.group = store.group["ifm"][key]
        self.meta = _meta(self.group)
        self.tokens = self.group["tokens"]
        self.offset = self.group["offset"][:]
        self.frames = self.group["frames"][:]
        self._direct = _plain_shards(self.tokens)
        self._reader: ShardReader | None = None
        self._status_lock = threading.Lock()  # status/reason writes come from several threads
        self._token_dir_synced = False
        self._claims_fd: int | None = None
        self._checksums = self.group["checksum"] if "checksum" in self.group else None
        self._shard_crcs: dict[tuple[int, int], int] = {}
        self._claimed: set[int] = set()
        self._claims_lock = threading.Lock()

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.meta["grid"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def status(self) -> np.ndarray:
        return self.group["status"][:]

    def reasons(self) -> np.ndarray:
        return self.group["reason"][:]

    @property
    def _token_dir(self) -> Path:
        return self.store.path / "ifm" / self.key / "tokens"

    # -- ownership ----------------------------------------------------------------------
    # A video is written only by the process holding its claim: an exclusive lock on byte v of
    # `claims.lock` in the group's folder. The kernel drops a dead process's locks, so a
    # claim never outlives its owner (SIGKILL included) and needs no clean-up. Claims are
    # taken before a video's status is read, so whoever holds one sees the status no other
    # process can change meanwhile: a video another process marked done is never cleared.
    def _lock(self, video: int, kind: int) -> bool:
        if self._claims_fd is None:
            try:
                self._claims_fd = os.open(self.store.path / "ifm" / self.key / "claims.lock",
                                          os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise StoreError(f"cannot write into {self.store.path}: {e.strerror}") from None
        try:
            if hasattr(fcntl, "F_OFD_SETLK"):  # per open file: two IFMArrays of one process exclude each other too
                fcntl.fcntl(self._claims_fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", kind, os.SEEK_SET, video, 1, 0))
            else:
                cmd = fcntl.LOCK_UN if kind == fcntl.F_UNLCK else fcntl.LOCK_EX | fcntl.LOCK_NB
                fcntl.lockf(self._claims_fd, cmd, 1, video)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise StoreError(f"cannot lock {self.store.path}: {e.strerror}") from None
        return True

    def claim(self, videos, state: int = PENDING) -> list[int]:
        """Claim the videos that no other process holds and whose status is still `state`;
        returns them. The others are left alone (another process owns them, or they are no
        longer in `state`)."""
        with self._claims_lock:
            got = [int(v) for v in videos if int(v) in self._claimed or self._lock(int(v), fcntl.F_WRLCK)]
            self._claimed.update(got)
        status = self.group["status"][:]  # read under the claims: nobody else changes these now
        keep = [v for v in got if status[v] == state]
        self.release(v for v in got if status[v] != state)
        return keep

    def release(self, videos=None) -> None:
        """Give up claims (all of them by default)."""
        with self._claims_lock:
            for v in list(self._claimed if videos is None else videos):
                if v in self._claimed:
                    self._lock(v, fcntl.F_UNLCK)
                    self._claimed.discard(v)

    def _owned(self, video: int) -> None:
        """Writing needs the video's claim; take it now if it is pending and free."""
        if video not in self._claimed and not self.claim([video]):
            raise StoreError(f"video {video} of {self.key} is done, failed, or being written by another "
                             "process; not touching it")

    def reopen(self, video: int) -> None:
        """Put a claimed video back to pending (its shards are damaged; extract writes it again)."""
        if video not in self._claimed:
            raise StoreError(f"video {video} of {self.key} is not claimed by this process")
        with self._status_lock:
            self.group["reason"][video] = ""
            self.group["status"][video] = PENDING

    def damaged(self, videos) -> list[tuple[int, str]]:
        """Done videos among `videos` whose shard files are missing or of the wrong size, with
        what is wrong: found from file sizes alone, so cheap enough for every run."""
        out = []
        per = int(self.meta["frames_per_shard"])
        frame = int(np.prod(self.tokens.shape[1:])) * np.dtype(self.tokens.dtype).itemsize
        for v in videos:
            v, n = int(v), int(self.frames[v])
            for k, path in enumerate(self._shard_paths(v)):
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    out.append((v, f"shard file {path.relative_to(self.store.path)} is missing"))
                    break
                want = min(per, n - k * per) * frame + index_bytes(per)
                if self._direct and size != want:
                    out.append((v, f"shard file {path.relative_to(self.store.path)} has {size} bytes, "
                                   f"expected {want}"))
                    break
        return out

    # -- writing ------------------------------------------------------------------------
    def _shard_paths(self, video: int) -> list[Path]:
        per = int(self.meta["frames_per_shard"])
        first = int(self.offset[video]) // per
        count = -(-int(self.frames[video]) // per)
        base = self._token_dir / "c"
        return [base / str(s) / "0" / "0" / "0" for s in range(first, first + count)]

    def check_offsets(self) -> None:
        """Refuse a damaged offset table, which would read another video's rows."""
        expected, _ = _slot_offsets(self.frames, int(self.meta["frames_per_shard"]))
        if not np.array_equal(self.offset, expected):
            raise StoreError(f"{self.store.path}: the offset table of {self.key} is damaged "
                             "(`advise-cache verify` lists the videos affected)")

    def shards_of(self, video: int) -> int:
        """How many shards hold this video's rows."""
        return -(-int(self.frames[video]) // int(self.meta["frames_per_shard"]))

    def clear_video(self, video: int) -> None:
        """Forget whatever an interrupted run wrote for this video (claimed, not done)."""
        self._owned(video)
        for p in self._shard_paths(video):
            p.unlink(missing_ok=True)

    def write_shard(self, video: int, index: int, tokens: np.ndarray) -> int:
        """Write the `index`-th shard of a video (its rows index*per onwards) and make the file
        and the folders made for it durable; returns the file's size. Shards are independent
        files, so threads may write different shards at once. A crash mid-write leaves a
        partial file only in a video not marked done, which `clear_video` removes on resume."""
        per = int(self.meta["frames_per_shard"])
        n = int(self.frames[video])
        rows = min(per, n - index * per)
        if not 0 <= index < self.shards_of(video) or tokens.shape != (rows, *self.tokens.shape[1:]):
            raise StoreError(f"video {video} shard {index}: got tokens {tokens.shape}, "
                             f"expected {(rows, *self.tokens.shape[1:])}")
        self._owned(video)
        path = self._shard_paths(video)[index]
        data = np.ascontiguousarray(tokens, dtype=np.dtype(self.tokens.dtype).newbyteorder("<"))
        with self._status_lock:
            self._shard_crcs[(video, index)] = _crc(data)
        if self._direct:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, [memoryview(data).cast("B"), shard_index(rows, per, data[0].nbytes)])
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            # Every chunk holds data: skip zarr's comparison of each chunk with the fill value.
            start = int(self.offset[video]) + index * per
            with zarr.config.set({"array.write_empty_chunks": True}):
                self.tokens[start : start + rows] = tokens.astype(self.tokens.dtype, copy=False)
            _fsync(path)
        for folder in path.parents[:3]:  # c/<shard>/0/0, c/<shard>/0, c/<shard>: this shard's own
            _fsync(folder)
        return path.stat().st_size

    def finish_video(self, video: int) -> None:
        """Mark a video done once all its shards are written: the folder listing the shards
        is made durable once per video (and the token folder once), then the status, and the
        claim is given up."""
        self._owned(video)
        if not self._token_dir_synced:
            _fsync(self._token_dir)
            self._token_dir_synced = True
        _fsync(self._token_dir / "c")
        with self._status_lock:
            crcs = [self._shard_crcs.pop((video, k), None) for k in range(self.shards_of(video))]
            if self._checksums is not None:  # before the status: a done video always has its checksum
                self._checksums[video] = NO_CHECKSUM if None in crcs else video_checksum(crcs)
            self.group["status"][video] = DONE
        self.release([video])

    def write_video(self, video: int, tokens: np.ndarray) -> int:
        """Write all of a video's rows, make them durable, then mark it done. Returns bytes."""
        n = int(self.frames[video])
        if tokens.shape != (n, *self.tokens.shape[1:]):
            raise StoreError(f"video {video}: got tokens {tokens.shape}, expected {(n, *self.tokens.shape[1:])}")
        per = int(self.meta["frames_per_shard"])
        tokens = tokens.astype(self.tokens.dtype, copy=False)
        written = sum(self.write_shard(video, k, tokens[k * per : (k + 1) * per]) for k in range(self.shards_of(video)))
        self.finish_video(video)
        return written

    def mark_failed(self, video: int, reason: str) -> None:
        self._owned(video)
        with self._status_lock:
            self.group["reason"][video] = reason[:500]
            self.group["status"][video] = FAILED

    # -- reading ------------------------------------------------------------------------
    def read_frames(self, video: int, indices) -> np.ndarray:
        """Rows `indices` (0-based within the video) of one video: (len, h, w, D)."""
        rows = np.asarray(indices, dtype=np.int64)
        n = int(self.frames[video])
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise StoreError(f"video {video} has {n} frames; asked for {rows.min()}..{rows.max()}")
        base = int(self.offset[video])
        if not rows.size:
            return np.zeros((0, *self.tokens.shape[1:]), self.tokens.dtype)
        if self._direct:
            return self._read_direct(base + rows)
        # Frame-at-a-time: zarr's orthogonal indexing into a shard decodes far more than it
        # needs (measured ~10x slower for 8 scattered frames).
        return np.stack([self.tokens[base + int(r)] for r in rows])

    def shard_reader(self) -> ShardReader | None:
        """A reader of this array's shard files (None when they are compressed: read via zarr)."""
        if not self._direct:
            return None
        dtype = np.dtype(self.tokens.dtype).newbyteorder("<")
        return ShardReader(self._token_dir, int(self.meta["frames_per_shard"]), self.tokens.shape[1:], dtype)

    def _read_direct(self, rows: np.ndarray) -> np.ndarray:
        if self._reader is None:
            self._reader = self.shard_reader()
        out = np.empty((len(rows), *self.tokens.shape[1:]), self._reader.dtype)
        self._reader.read_into(rows, out)
        return out

    def checksums(self) -> np.ndarray | None:
        """Each video's checksum (NO_CHECKSUM: none recorded); None for a group made before
        checksums were kept."""
        return None if self._checksums is None else self._checksums[:]

    def computed_checksum(self, video: int, tokens: np.ndarray | None = None) -> int:
        """The checksum of what the store holds for a video now (`tokens`: its rows, if read)."""
        x = self.read_video(video) if tokens is None else tokens
        per = int(self.meta["frames_per_shard"])
        le = np.dtype(self.tokens.dtype).newbyteorder("<")
        return video_checksum([_crc(np.ascontiguousarray(x[k : k + per], le)) for k in range(0, len(x), per)])

    def read_video(self, video: int) -> np.ndarray:
        base = int(self.offset[video])
        return self.tokens[base : base + int(self.frames[video])]

    def stored_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._token_dir.rglob("*") if p.is_file())


def _slot_offsets(frames: np.ndarray, per: int) -> tuple[np.ndarray, int]:
    """Where each video's rows start when every video starts on a shard boundary, and the
    rows of all slots together."""
    slots = -(-np.asarray(frames, np.int64) // per) * per
    return np.cumsum(slots) - slots, int(slots.sum())


def _crc(array: np.ndarray) -> int:
    """crc32c of a contiguous array's bytes, without copying them."""
    return google_crc32c.value(np.ascontiguousarray(array).view(np.uint8).reshape(-1))


def video_checksum(shard_crcs: list[int]) -> int:
    """A video's checksum: the crc32c of its shards' crc32c values (little-endian uint32, in
    order), each taken over that shard's token bytes as stored (little-endian, uncompressed)."""
    return google_crc32c.value(np.asarray(shard_crcs, "<u4").tobytes())


def _write_all(fd: int, buffers: list) -> None:
    for buf in buffers:
        view = memoryview(buf)
        while view.nbytes:
            view = view[os.write(fd, view) :]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain_shards(array) -> bool:
    """True when the token array is a local, uncompressed, little-endian sharded array with
    its index at the end: the layout `ShardReader` understands."""
    codecs = array.metadata.to_dict()["codecs"]
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        return False
    c = codecs[0]["configuration"]
    plain = [{"name": "bytes", "configuration": {"endian": "little"}}]
    crc = plain + [{"name": "crc32c"}]
    as_dicts = json.loads(json.dumps([c["codecs"], c["index_codecs"]], default=str))
    return as_dicts == [plain, crc] and c["index_location"] == "end"


def open_store(path: Path | str, mode: str = "r") -> Store:
    path = Path(path)
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


def summarize(store: Store) -> dict:
    """The facts `advise-cache info` prints."""
    table = store.videos
    source = store.source
    out = {
        "path": str(store.path),
        "format": store.format,
        "dataset": store.dataset,
        "root": store.meta.get("root"),
        "split": source["split"],
        "annotations": source["annotations"],
        "classes": len(store.classes),
        "videos": len(table),
        "splits": {s: int((table.split == s).sum()) for s in sorted(set(table.split.tolist()))},
        "missing": source["missing"],
        "ifms": {},
    }
    for key in store.ifm_keys():
        a = store.ifm(key)
        status = a.status()
        done = status == DONE
        reasons = a.reasons()
        out["ifms"][key] = {
            "model": a.meta["model"],
            "pretrained": a.meta["pretrained"],
            "grid": list(a.grid),
            "dim": a.dim,
            "dtype": a.meta["dtype"],
            "frame_stride": a.meta["frame_stride"],
            "codec": a.meta["codec"],
            "done": int(done.sum()),
            "pending": int((status == PENDING).sum()),
            "failed": [{"name": str(table.name[i]), "reason": str(reasons[i])}
                       for i in np.flatnonzero(status == FAILED)],
            "frames": int(a.frames[done].sum()),
            "bytes": a.stored_bytes(),
        }
    return out


def verify(store: Store, check_values: bool = True, progress=None, deep: bool = False) -> list[str]:
    """Every problem found: incomplete videos, bad offsets or shapes, NaN/Inf tokens; `deep`:
    also tokens that differ from the checksum written at extraction (flipped finite values)."""
    problems = _table_problems(store)
    table = store.videos
    keys = store.ifm_keys()
    if not keys:
        problems.append("no image model has been extracted into this store")
    for key in keys:
        a = store.ifm(key)
        per = int(a.meta["frames_per_shard"])
        stride = int(a.meta["frame_stride"])
        status = a.status()
        h, w = a.grid
        if a.tokens.shape[1:] != (h, w, a.dim):
            problems.append(f"{key}: tokens shape {a.tokens.shape} does not match grid {h}x{w} dim {a.dim}")
        expected = -(-table.source_frames // stride)
        ends = a.offset + -(-a.frames // per) * per
        for v in range(len(table)):
            name = table.name[v]
            if status[v] == PENDING:
                problems.append(f"{key}: {name}: not extracted yet")
            if a.frames[v] != expected[v]:
                problems.append(f"{key}: {name}: {a.frames[v]} rows, expected {expected[v]}")
            if a.offset[v] % per or (v and a.offset[v] != ends[v - 1]) or ends[v] > a.tokens.shape[0]:
                problems.append(f"{key}: {name}: offset {a.offset[v]} is not where its slot starts")
        damaged = dict(a.damaged(np.flatnonzero(status == DONE)))
        problems += [f"{key}: {table.name[v]}: {why} (`advise-cache extract` writes it again)"
                     for v, why in damaged.items()]
        sums = a.checksums() if deep else None
        if deep and sums is None:
            problems.append(f"{key}: no checksums recorded (extracted before advise-cache kept them): "
                            "--deep cannot check its values")
        if check_values or deep:
            for v in (progress or iter)(np.flatnonzero(status == DONE)):
                if v in damaged:
                    continue
                try:
                    x = a.read_video(int(v))
                except Exception as e:  # zarr's own errors: a bad checksum, a cut index, ...
                    problems.append(f"{key}: {table.name[v]}: its shards cannot be read ({first_line(e, 200)})")
                    continue
                if sums is not None and sums[v] != NO_CHECKSUM and a.computed_checksum(int(v), x) != sums[v]:
                    problems.append(f"{key}: {table.name[v]}: its tokens differ from the checksum written at "
                                    "extraction (corrupted on disk)")
                if not np.isfinite(x).all():
                    problems.append(f"{key}: {table.name[v]}: NaN or Inf in its tokens")
                elif not np.any(x.reshape(len(x), -1), axis=1).all():
                    problems.append(f"{key}: {table.name[v]}: some of its frames are missing (all zero)")
    return problems


def _table_problems(store: Store) -> list[str]:
    """The video table's own consistency: one row per video everywhere, unique names, labels
    within the classes, codes within their categories."""
    problems = []
    v = store.group["videos"]
    n = len(store.videos)
    if store.format >= 2:
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
    table = store.videos
    if len(set(table.name.tolist())) != n:
        problems.append("videos/name: names are not unique")
    bad = (table.label < -1) | (table.label >= len(store.classes))
    if bad.any():
        problems.append(f"videos/label: {int(bad.sum())} labels outside [-1, {len(store.classes)})")
    return problems
