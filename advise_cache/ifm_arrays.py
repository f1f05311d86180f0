"""One image model's arrays inside a store (`ifm/<key>/`): claims, writes, checksums, reads.

`Store.ifm(key)` hands out an `IFMArrays`, which owns everything under `ifm/<key>/`: which
process writes a video (`claims.lock`), writing a video's shards durably and only then
marking it done, failures and their reasons, per-video checksums, and reading frames back
(straight from the shard files when they are plain, through zarr when compressed).
store.py owns the layout around it (the store, its video table, adding a group); these two
are the only modules that import zarr.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path

import google_crc32c
import numpy as np
import zarr

from . import __version__
from .errors import DamagedFrameError, StoreError
from .ifm_layout import (
    DONE,
    FAILED,
    NO_CHECKSUM,
    PENDING,
    QUANT_ERROR_ARRAYS,
    TOKEN_DTYPES,
    decode_reasons,
    encode_reason,
    slot_offsets,
    token_layout,
    video_checksum,
    view_stride,
)
from .quant import SCHEME
from .shards import CRC_BYTES, ShardReader, frame_crcs, index_bytes, shard_parts, write_shard_file


def attributes(node) -> dict:
    """advise-cache's own attributes of a Zarr group."""
    return dict(node.attrs.get("advise_cache", {}))


# What every image model's group records (store.add_ifm writes them): without one, it is damaged.
REQUIRED = ("model", "grid", "dim", "dtype", "frame_stride", "frames_per_shard", "codec")
# What tells whether two stores hold the same features (a checkpoint's fingerprint), and what a
# group added to a store again must repeat.
FEATURE_KEYS = ("model", "pretrained", "weights_sha256", "input_size", "normalisation", "grid", "dim", "frame_stride")
SAME_GROUP_KEYS = (*FEATURE_KEYS, "dtype", "frames_per_shard", "codec", "precision", "views")


@dataclass(frozen=True)
class IFMMeta:
    """An image model's group attributes, read once and typed: how its tokens were made (model,
    weights, input size and normalisation, grid x dim) and are kept (dtype, frame stride, frames
    per shard, codec, views). `stored` is the attributes as written, for comparisons that must
    see exactly what a store holds (fingerprints, a group added again)."""

    model: str
    grid: tuple[int, int]
    dim: int
    dtype: str
    frame_stride: int
    frames_per_shard: int
    codec: str
    pretrained: str | None = None
    weights_sha256: str | None = None
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bicubic"  # stores made before it was recorded used bicubic
    resize: str = "pil"  # likewise: PIL's resize
    decoder: str = "decord"  # likewise: decord
    normalisation: str | None = None
    precision: str | None = None
    quantisation: str | None = None
    views: tuple[dict, ...] = ({"kind": "centre"},)  # a store without views: the centre crop
    stored: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def read(cls, attrs: dict, where: str) -> IFMMeta:
        """The typed attributes; a group without one of REQUIRED is a damaged store (StoreError)."""
        missing = [k for k in REQUIRED if k not in attrs]
        if missing:
            raise StoreError(f"{where} lacks its {', '.join(missing)} attribute(s): the store is damaged")
        known = {f.name for f in fields(cls)} - {"stored"}
        typed = {k: v for k, v in attrs.items() if k in known and v is not None}
        for k in ("grid", "mean", "std"):
            if k in typed:
                typed[k] = tuple(typed[k])
        typed["views"] = tuple(typed.get("views") or cls.views)
        for k in ("dim", "frame_stride", "frames_per_shard", "input_size"):
            if k in typed:
                typed[k] = int(typed[k])
        return cls(**typed, stored=dict(attrs))

    def as_stored(self, keys) -> dict:
        """These attributes exactly as the store holds them (None where absent)."""
        return {k: self.stored.get(k) for k in keys}

    def differences(self, attrs: dict) -> list[str]:
        """How a group about to be written with `attrs` differs from this one (SAME_GROUP_KEYS)."""
        return [
            f"{k}: store {self.stored.get(k)!r}, now {attrs.get(k)!r}"
            for k in SAME_GROUP_KEYS
            if json.dumps(self.stored.get(k)) != json.dumps(attrs.get(k))
        ]


class IFMArrays:
    """The arrays of one image model inside a store."""

    def __init__(self, store, key: str):  # store: the Store whose ifm/<key>/ this is
        self.store = store
        self.key = key
        self.group = store.group["ifm"][key]
        self.meta = IFMMeta.read(attributes(self.group), f"image model {key!r}")
        self.tokens = self.group["tokens"]
        self.offset = self.group["offset"][:]
        self.frames = self.group["frames"][:]
        # The stored views (views.py): one a store without them, the centre crop. A video's slot
        # holds its views one after the other, `view_stride` rows apart.
        self.views: list[dict] = list(self.meta.views)
        self.view_stride = view_stride(self.frames, self.meta.frames_per_shard)
        dtype, scheme = self.meta.dtype, self.meta.quantisation
        if dtype not in TOKEN_DTYPES or (dtype == "int8" and scheme != SCHEME):
            raise StoreError(
                f"image model {key!r} stores tokens as {dtype} ({scheme or 'no scheme'}), which this "
                f"advise-cache {__version__} cannot decode: upgrade advise-cache"
            )
        self.quantised = dtype == "int8"
        # direct: shards.py reads and writes the shard files; frame_checked: each chunk ends in its crc32c
        self._direct, self.frame_checked = token_layout(self.tokens)
        self._reader: ShardReader | None = None
        self._status_lock = threading.Lock()  # status/reason writes come from several threads
        self._token_dir_synced = False
        self._claims_fd: int | None = None
        self._checksums = self.group["checksum"] if "checksum" in self.group else None
        # Format 3 keeps reasons as UTF-8 bytes (core Zarr v3); older groups as zarr-python strings.
        self._reason_name = "reason_utf8" if "reason_utf8" in self.group else "reason"
        for name in ("status", self._reason_name):  # read later, but a store without them is damaged now
            self.group[name]
        self._shard_crcs: dict[tuple[int, int], object] = {}  # a shard's crc32c, or its frames' (format 3)
        self._claimed: set[int] = set()
        self._claims_lock = threading.Lock()

    @property
    def grid(self) -> tuple[int, int]:
        return self.meta.grid

    @property
    def dim(self) -> int:
        """D, the model's width (an int8 row holds D + 2 bytes: see `row_dim`)."""
        return self.meta.dim

    @property
    def row_dim(self) -> int:
        """Last-axis length of `tokens` as stored: D, or D + 2 for int8 (the scale)."""
        return int(self.tokens.shape[-1])

    def status(self) -> np.ndarray:
        return self.group["status"][:]

    def reasons(self) -> np.ndarray:
        """Why each video failed ("" where it did not), as numpy strings."""
        raw = self.group[self._reason_name][:]
        return raw if self._reason_name == "reason" else decode_reasons(raw)

    def _set_reason(self, video: int, reason: str) -> None:
        if self._reason_name == "reason":  # a group made before format 3
            self.group["reason"][video] = reason[:500]
        else:
            self.group["reason_utf8"][video] = encode_reason(reason)

    @property
    def _token_dir(self) -> Path:
        return self.store.path / "ifm" / self.key / "tokens"

    # -- ownership ----------------------------------------------------------------------
    # On a bucket there are no locks: a process owns the videos of its --shard/torchrun part
    # alone (docs/STORE.md, "Ownership"), and `claim` only checks their status.
    # A video is written only by the process holding its claim: an exclusive lock on byte v of
    # `claims.lock` in the group's folder. The kernel drops a dead process's locks, so a
    # claim never outlives its owner (SIGKILL included) and needs no clean-up. Claims are
    # taken before a video's status is read, so whoever holds one sees the status no other
    # process can change meanwhile: a video another process marked done is never cleared.
    def _lock(self, video: int, kind: int) -> bool:
        if self.store.remote:  # a bucket has no locks: ownership is by disjoint parts (docs/STORE.md)
            return True
        if self._claims_fd is None:
            try:
                self._claims_fd = os.open(
                    self.store.path / "ifm" / self.key / "claims.lock", os.O_RDWR | os.O_CREAT, 0o644
                )
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
            raise StoreError(
                f"video {video} of {self.key} is done, failed, or being written by another process; not touching it"
            )

    def reopen(self, video: int) -> None:
        """Put a claimed video back to pending (its shards are damaged; extract writes it again)."""
        if video not in self._claimed:
            raise StoreError(f"video {video} of {self.key} is not claimed by this process")
        with self._status_lock:
            self._set_reason(video, "")
            self.group["status"][video] = PENDING

    def damaged(self, videos) -> list[tuple[int, str]]:
        """Done videos among `videos` whose shard files are missing or of the wrong size, with
        what is wrong: found from file sizes alone, so cheap enough for every run."""
        out = []
        per = self.meta.frames_per_shard
        frame = int(np.prod(self.tokens.shape[1:])) * np.dtype(self.tokens.dtype).itemsize
        frame += CRC_BYTES * self.frame_checked  # a chunk: the frame and its crc32c
        listed = self.store.bucket.sizes(f"ifm/{self.key}/tokens/c/") if self.store.remote else None  # one listing
        for v in videos:
            v = int(v)
            for k, key in enumerate(self.shard_keys(v)):
                if listed is not None:
                    size = listed.get(key)
                else:
                    try:
                        size = (self.store.path / key).stat().st_size
                    except FileNotFoundError:
                        size = None
                if size is None:
                    out.append((v, f"shard file {key} is missing"))
                    break
                want = self.shard_rows(v, k) * frame + index_bytes(per)
                if self._direct and size != want:
                    out.append((v, f"shard file {key} has {size} bytes, expected {want}"))
                    break
        return out

    # -- writing ------------------------------------------------------------------------
    def shard_keys(self, video: int) -> list[str]:
        """The video's shard files (objects), relative to the store."""
        per = self.meta.frames_per_shard
        first = int(self.offset[video]) // per
        count = self.shards_of(video)
        return [f"ifm/{self.key}/tokens/c/{s}/0/0/0" for s in range(first, first + count)]

    def shard_paths(self, video: int) -> list[Path]:
        """The video's shard files of a local store."""
        return [self.store.path / k for k in self.shard_keys(video)]

    def check_offsets(self) -> None:
        """Refuse a damaged offset table, which would read another video's rows."""
        expected, _ = slot_offsets(self.frames, self.meta.frames_per_shard, len(self.views))
        if not np.array_equal(self.offset, expected):
            raise StoreError(
                f"{self.store.path}: the offset table of {self.key} is damaged "
                "(`advise-cache verify` lists the videos affected)"
            )

    def shards_of(self, video: int) -> int:
        """How many shards hold this video's rows (of every view)."""
        return len(self.views) * (-(-int(self.frames[video]) // self.meta.frames_per_shard))

    def shard_rows(self, video: int, index: int) -> int:
        """Rows written into the video's `index`-th shard: the last shard of each view is cut."""
        per = self.meta.frames_per_shard
        return min(per, int(self.frames[video]) - index % max(1, int(self.view_stride[video]) // per) * per)

    def view_start(self, videos, views) -> np.ndarray:
        """First row of each (video, view) in `tokens`."""
        videos = np.asarray(videos, np.int64)
        return self.offset[videos] + np.asarray(views, np.int64) * self.view_stride[videos]

    def clear_video(self, video: int) -> None:
        """Forget whatever an interrupted run wrote for this video (claimed, not done)."""
        self._owned(video)
        if self.store.remote:
            self.store.bucket.delete(self.shard_keys(video))
            return
        for p in self.shard_paths(video):
            p.unlink(missing_ok=True)

    def write_shard(self, video: int, index: int, tokens: np.ndarray) -> int:
        """Write the `index`-th shard of a video (its rows index*per onwards) and make the file
        and the folders made for it durable; returns the file's size. Shards are independent
        files, so threads may write different shards at once. A crash mid-write leaves a
        partial file only in a video not marked done, which `clear_video` removes on resume."""
        per = self.meta.frames_per_shard
        rows = self.shard_rows(video, index) if 0 <= index < self.shards_of(video) else 0
        if not 0 <= index < self.shards_of(video) or tokens.shape != (rows, *self.tokens.shape[1:]):
            raise StoreError(
                f"video {video} shard {index}: got tokens {tokens.shape}, expected {(rows, *self.tokens.shape[1:])}"
            )
        self._owned(video)
        data = np.ascontiguousarray(tokens, dtype=np.dtype(self.tokens.dtype).newbyteorder("<"))
        crcs = frame_crcs(data) if self.frame_checked else None  # zarr's, where the chunks are plain
        with self._status_lock:
            self._shard_crcs[(video, index)] = _crc(data) if crcs is None else crcs
        key = self.shard_keys(video)[index]
        if self.store.remote and self._direct:  # one object, written once, durable when put returns
            blob = b"".join(shard_parts(data, per, crcs))
            self.store.bucket.write(key, blob)
            return len(blob)
        if self.store.remote:  # compressed: zarr writes the shard object whole
            start = int(self.offset[video]) + index * per
            with zarr.config.set({"array.write_empty_chunks": True}):
                self.tokens[start : start + rows] = tokens.astype(self.tokens.dtype, copy=False)
            return self.store.bucket.size(key) or 0
        path = self.store.path / key
        if self._direct:
            write_shard_file(path, shard_parts(data, per, crcs))
        else:
            # Every chunk holds data: skip zarr's comparison of each chunk with the fill value.
            start = int(self.offset[video]) + index * per
            with zarr.config.set({"array.write_empty_chunks": True}):
                self.tokens[start : start + rows] = tokens.astype(self.tokens.dtype, copy=False)
            _fsync(path)
        for folder in path.parents[:3]:  # c/<shard>/0/0, c/<shard>/0, c/<shard>: this shard's own
            _fsync(folder)
        return path.stat().st_size

    def finish_video(self, video: int, quant_error: tuple[float, float] | None = None) -> None:
        """Mark a video done once all its shards are written: the folder listing the shards
        is made durable once per video (and the token folder once), then the status, and the
        claim is given up. `quant_error`: an int8 video's (relative L2 error, mean cosine)."""
        self._owned(video)
        if not self._token_dir_synced and not self.store.remote:  # a bucket's objects are durable once put
            _fsync(self._token_dir)
            self._token_dir_synced = True
        if not self.store.remote:
            _fsync(self._token_dir / "c")
        with self._status_lock:
            crcs = [self._shard_crcs.pop((video, k), None) for k in range(self.shards_of(video))]
            if self._checksums is not None:  # before the status: a done video always has its checksum
                missing = any(c is None for c in crcs)
                self._checksums[video] = NO_CHECKSUM if missing else video_checksum(crcs)
            if self.quantised and quant_error is not None:
                for name, value in zip(QUANT_ERROR_ARRAYS, quant_error):
                    self.group[name][video] = value
            self.group["status"][video] = DONE
        self.release([video])

    def write_video(self, video: int, tokens: np.ndarray, quant_error: tuple[float, float] | None = None) -> int:
        """Write all of a video's rows (as stored: int8 rows already packed; with views, every
        view's frames one view after the other), make them durable, then mark it done. Returns bytes."""
        n = int(self.frames[video]) * len(self.views)
        if tokens.shape != (n, *self.tokens.shape[1:]):
            raise StoreError(f"video {video}: got tokens {tokens.shape}, expected {(n, *self.tokens.shape[1:])}")
        per, frames = self.meta.frames_per_shard, int(self.frames[video])
        tokens = tokens.astype(self.tokens.dtype, copy=False)
        spv = int(self.view_stride[video]) // per  # shards a view
        written = sum(
            self.write_shard(video, k, tokens[k // spv * frames : (k // spv + 1) * frames][k % spv * per :][:per])
            for k in range(self.shards_of(video))
        )
        self.finish_video(video, quant_error)
        return written

    def mark_failed(self, video: int, reason: str) -> None:
        self._owned(video)
        with self._status_lock:
            self._set_reason(video, reason)
            self.group["status"][video] = FAILED

    # -- reading ------------------------------------------------------------------------
    def read_frames(self, video: int, indices, view: int = 0) -> np.ndarray:
        """Rows `indices` (0-based within the video) of one video's `view`: (len, h, w, D)."""
        rows = np.asarray(indices, dtype=np.int64)
        n = int(self.frames[video])
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise StoreError(f"video {video} has {n} frames; asked for {rows.min()}..{rows.max()}")
        if not 0 <= view < len(self.views):
            raise StoreError(f"{self.key} stores {len(self.views)} view(s); asked for view {view}")
        return self._read(int(self.view_start([video], [view])[0]) + rows)

    def read_video(self, video: int, view: int | None = None) -> np.ndarray:
        """All rows of one video's `view` (None: of every view, one after the other), through zarr
        (whose crc32c codec checks every frame of a format 3 group): a damaged frame is a
        `DamagedFrameError` naming it."""
        n = int(self.frames[video])
        views = range(len(self.views)) if view is None else [view]
        starts = self.view_start([video] * len(views), list(views)).tolist()
        try:
            parts = [self.tokens[base : base + n] for base in starts]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        except ValueError:
            if not self.frame_checked:
                raise
            self._read(np.concatenate([base + np.arange(n) for base in starts]))  # zarr does not say which chunk failed
            raise

    def _read(self, rows: np.ndarray) -> np.ndarray:
        if self._direct and self._reader is None:
            self._reader = self.shard_reader()
        dtype = self._reader.dtype if self._direct else self.tokens.dtype
        out = np.empty((len(rows), *self.tokens.shape[1:]), dtype)
        self.read_rows(rows, out, self._reader)
        return out

    def read_rows(self, rows: np.ndarray, out: np.ndarray, reader=None, pool=None, tasks: int = 1) -> None:
        """Rows of `tokens` into `out` (len(rows), h, w, row_dim): through `reader` (this group's
        `shard_reader()`), else zarr a frame at a time (its orthogonal indexing into a shard decodes
        far more than a few scattered frames need). A frame failing its crc32c is a
        `DamagedFrameError` naming its video and frame."""
        try:
            if reader is not None:
                reader.read_into(rows, out, pool, tasks)
                return
            for i, r in enumerate(np.asarray(rows).tolist()):
                try:
                    out[i] = self.tokens[r]
                except ValueError as e:  # zarr's crc32c codec: "Stored and computed checksum do not match"
                    if not (self.frame_checked and "checksum" in str(e)):
                        raise
                    raise DamagedFrameError(str(e), rows=[r]) from None
        except DamagedFrameError as e:
            raise self.named(e) from None

    def named(self, e: DamagedFrameError) -> DamagedFrameError:
        """`e` (rows of `tokens`) as one line naming the video and its frames, what to do, and
        the video indices (for a reader that skips them)."""
        rows = np.unique(np.asarray(e.rows, np.int64))
        videos = np.searchsorted(self.offset, rows, side="right") - 1  # empty videos share the next one's offset
        v = int(videos[0])
        at = rows[videos == v] - self.offset[v]  # within the video's slot: views one after the other
        shard = self.store.path / self.shard_keys(v)[int(at[0]) // self.meta.frames_per_shard]
        stride = int(self.view_stride[v])
        frames = [f"{f % stride} (view {f // stride})" if len(self.views) > 1 else str(f) for f in at.tolist()]
        listed = ", ".join(frames[:5]) + (f" and {len(frames) - 5} more" if len(frames) > 5 else "")
        more = len(set(videos.tolist())) - 1
        message = (
            f"{self.key}: {self.store.videos.name[v]}: frame{'s' if len(frames) > 1 else ''} {listed} "
            f"{'fail their' if len(frames) > 1 else 'fails its'} crc32c check: changed after extraction "
            f"(delete {shard} and `advise-cache extract` writes the video again)"
            + (f"; frames of {more} more video(s) too" if more else "")
        )
        return DamagedFrameError(message, rows=rows.tolist(), videos=sorted(set(videos.tolist())))

    def shard_reader(self):
        """A reader of this array's shard files (None when they are compressed: read via zarr):
        `ShardReader` for a local store, `RemoteShardReader` (through the store's local cache,
        if it has one) for a bucket. Both check each frame against its crc32c (format 3)."""
        if not self._direct:
            return None
        dtype = np.dtype(self.tokens.dtype).newbyteorder("<")
        per = self.meta.frames_per_shard
        if not self.store.remote:
            return ShardReader(self._token_dir, per, self.tokens.shape[1:], dtype, frame_crcs=self.frame_checked)
        from .remote_shards import RemoteShardReader

        cache, folder, sums = self.store.local_cache, None, None
        if cache is not None:
            sums = self.checksums()  # a GET per video: only where cached files are named by them
            folder = cache.folder(str(self.store.path), str(self.store.created))
        owner = np.repeat(np.arange(len(self.frames)), self.view_stride // per * len(self.views))  # shard -> video

        def tag(shard: int) -> str:  # the owning video's checksum: a video written again is fetched again
            return "0" if sums is None else f"{int(sums[owner[shard]]) & 0xFFFFFFFF:08x}"

        key = f"ifm/{self.key}/tokens"
        shape = self.tokens.shape[1:]
        return RemoteShardReader(self.store.bucket, key, per, shape, dtype, cache, folder, tag, self.frame_checked)

    def checksums(self) -> np.ndarray | None:
        """Each video's checksum (NO_CHECKSUM: none recorded); None for a group made before
        checksums were kept."""
        return None if self._checksums is None else self._checksums[:]

    def computed_checksum(self, video: int, tokens: np.ndarray | None = None) -> int:
        """The checksum of what the store holds for a video now (`tokens`: its rows, if read)."""
        x = self.read_video(video) if tokens is None else tokens
        x = np.ascontiguousarray(x, np.dtype(self.tokens.dtype).newbyteorder("<"))
        if self.frame_checked:
            return video_checksum([frame_crcs(x)])
        per = self.meta.frames_per_shard
        return video_checksum([_crc(x[k : k + per]) for k in range(0, len(x), per)])

    def quant_errors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per video, the relative L2 error and mean cosine similarity of an int8 group's tokens
        against the float tokens they were made from (NaN: not measured); None unless int8."""
        if not self.quantised:
            return None
        return tuple(self.group[name][:] for name in QUANT_ERROR_ARRAYS)

    def stored_bytes(self) -> int:
        if self.store.remote:
            return sum(self.store.bucket.sizes(f"ifm/{self.key}/tokens/").values())
        return sum(p.stat().st_size for p in self._token_dir.rglob("*") if p.is_file())


def _crc(array: np.ndarray) -> int:
    """crc32c of a contiguous array's bytes, without copying them."""
    return google_crc32c.value(np.ascontiguousarray(array).view(np.uint8).reshape(-1))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
