"""Frames read straight out of a token array's uncompressed shard files, into caller buffers.

    reader = ShardReader(token_dir, frames_per_shard=64, frame_shape=(14, 14, 768), dtype="<f2", frame_crcs=True)
    reader.read_into(rows, out)           # out: (len(rows), 14, 14, 768), any writable buffer

Training reads a few scattered frames per clip. Through zarr every frame costs a call of
about 2 ms; here a frame costs one `preadv` from the kernel's page cache into its slot of the
batch buffer: one copy per byte and nothing else on the host. Each shard file is opened once
(its chunk index, a few KB, is read and checked against its crc32c at the same time) and kept
open for later batches, up to a bound on open files (a batch that spans more shards than
that is read in groups, so the bound holds within a batch too). The layout is the Zarr v3 sharding
codec's with the index at the end: (offset, nbytes) as little-endian uint64 per chunk, then a
crc32c of those bytes.

Each chunk (one frame) ends in the crc32c of its bytes (zarr's `crc32c` codec after `bytes`,
4 bytes, little-endian) in stores of format 3; the same `preadv` reads them beside the frame and
the frame is checked where it lies, still in the core's cache: a mismatch is a
`DamagedFrameError` naming the rows. Groups made before format 3 have no frame checksums
(`frame_crcs=False`) and are read as they are.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np

from . import atomic
from .errors import DamagedFrameError, StoreError

EMPTY = 2**64 - 1  # the sharding index's marker of an absent chunk (reads as the fill value, 0)
CRC_BYTES = 4  # zarr's crc32c codec: a chunk's bytes, then their crc32c as a little-endian uint32


def index_bytes(per: int) -> int:
    """Size of the index that ends a shard of `per` chunks: (offset, nbytes) uint64 each, crc32c."""
    return 16 * per + 4


def shard_index(rows: int, per: int, chunk_bytes: int) -> bytes:
    """The index that ends a shard whose first `rows` one-frame chunks are stored back to back,
    the rest absent: what the store's writer appends, and what `ShardReader` checks."""
    index = np.full((per, 2), EMPTY, "<u8")
    index[:rows, 0] = np.arange(rows, dtype="<u8") * chunk_bytes
    index[:rows, 1] = chunk_bytes
    raw = index.tobytes()
    return raw + np.uint32(google_crc32c.value(raw)).astype("<u4").tobytes()


def frame_crcs(data: np.ndarray) -> np.ndarray:
    """The crc32c of each frame (along the first axis) of a C-contiguous array's bytes, as
    little-endian uint32: what zarr's crc32c codec appends to each one-frame chunk."""
    rows = data.reshape(len(data), -1)
    return np.array([google_crc32c.value(r) for r in rows], "<u4")  # numpy views: no copy


def shard_parts(data: np.ndarray, per: int, crcs: np.ndarray | None = None) -> list:
    """The bytes of a shard holding `data` (its first len(data) one-frame chunks, contiguous,
    little-endian), as buffers to write one after the other: the chunks, each followed by its
    crc32c from `crcs` (`frame_crcs(data)`; None: a group without frame checksums), then the
    index. A local shard file and a shard object in a bucket are these same bytes."""
    if crcs is None:
        return [memoryview(data).cast("B"), shard_index(len(data), per, data[0].nbytes)]
    parts: list = []
    for frame, crc in zip(data.reshape(len(data), -1).view(np.uint8), crcs.view(np.uint8).reshape(-1, CRC_BYTES)):
        parts += [frame, crc]
    return parts + [shard_index(len(data), per, data[0].nbytes + CRC_BYTES)]


def write_shard_file(path: Path, parts: list) -> None:
    """Write a shard's buffers (`shard_parts`) into a new file at `path`, made durable (fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_durable(path, parts)


def bad_chunks(data, offsets: np.ndarray, frame_bytes: int) -> list[int]:
    """The chunks of a whole shard in memory (`data`, bytes-like; `offsets` from `check_index`)
    whose frame bytes fail the crc32c that follows them."""
    buf = np.frombuffer(data, np.uint8)
    bad = []
    for k, o in enumerate(offsets.tolist()):
        if o >= 0 and google_crc32c.value(buf[o : o + frame_bytes]) != _stored_crc(buf, o + frame_bytes):
            bad.append(k)
    return bad


def _stored_crc(buf: np.ndarray, at: int) -> int:
    return int(buf[at : at + CRC_BYTES].view("<u4")[0])


def check_index(raw: bytes, size: int, per: int, chunk_bytes: int, name: str) -> np.ndarray:
    """The byte offset of each chunk (-1: absent) from the `index_bytes(per)` bytes that end a
    shard of `size` bytes, after checking them: their crc32c, and every present chunk of
    `chunk_bytes` bytes (a frame, and its crc32c where kept) inside the shard. A cut or partial
    shard fails here; `name` says which."""
    n, end = 16 * per, index_bytes(per)
    if len(raw) != end or size < end:
        raise StoreError(f"{name} is truncated ({size} bytes)")
    crc = int.from_bytes(raw[n:], "little")
    if google_crc32c.value(bytes(raw[:n])) != crc:
        raise StoreError(f"{name}: its chunk index fails its crc32c check")
    entries = np.frombuffer(raw[:n], "<u8").reshape(per, 2)
    offsets, nbytes = entries[:, 0], entries[:, 1]
    present = offsets != EMPTY
    bad = present & ((nbytes != chunk_bytes) | (offsets + nbytes > size - end))
    if bad.any():
        raise StoreError(f"{name}: chunk {int(np.flatnonzero(bad)[0])} points outside the file or has the wrong size")
    return offsets.view(np.int64).copy()  # EMPTY reads as -1; real offsets fit int64


def in_parts(n: int, work, pool: ThreadPoolExecutor | None, tasks: int) -> None:
    """work(lo, hi) over [0, n) split into `tasks` runs on `pool`, waited for; errors re-raised."""
    parts = max(1, min(tasks, n))
    if pool is None or parts == 1:
        work(0, n)
        return
    edges = np.linspace(0, n, parts + 1).astype(int).tolist()
    for f in [pool.submit(work, a, b) for a, b in zip(edges[:-1], edges[1:])]:
        f.result()


def _default_max_open() -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        soft = 1024
    return int(max(16, min(4096, soft // 4)))


class ShardReader:
    """Reads rows of one sharded, uncompressed (rows, *frame_shape) array into given buffers.
    One caller at a time (a loader's producer thread); the reads it starts may run in parallel.
    `frame_crcs`: each chunk ends in its crc32c, checked on every read (`check`; benchmarks
    turn it off to measure what it costs)."""

    def __init__(
        self,
        token_dir: Path,
        frames_per_shard: int,
        frame_shape: tuple[int, ...],
        dtype,
        max_open: int | None = None,
        path_of=None,
        frame_crcs: bool = False,
    ):
        self.token_dir = Path(token_dir)
        self._path_of = path_of  # shard -> its file, where not the store's own layout (a local cache)
        self.per = int(frames_per_shard)
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self.frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self.frame_crcs = bool(frame_crcs)
        self.chunk_bytes = self.frame_bytes + CRC_BYTES * self.frame_crcs
        self.check = self.frame_crcs
        self.max_open = max_open or _default_max_open()
        self._open: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()  # shard -> (fd, offsets)
        self._lock = threading.Lock()

    def _path(self, shard: int) -> Path:
        if self._path_of is not None:
            return self._path_of(shard)
        return self.token_dir / "c" / str(shard) / "0" / "0" / "0"

    def _load(self, shard: int) -> tuple[int, np.ndarray]:
        path = self._path(shard)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StoreError(
                f"shard file {path} is missing: the store is damaged (`advise-cache verify` lists what is affected)"
            ) from None
        try:
            size = os.fstat(fd).st_size
            end = index_bytes(self.per)
            raw = os.pread(fd, end, size - end) if size >= end else b""
            return fd, check_index(raw, size, self.per, self.chunk_bytes, f"shard file {path}")
        except BaseException:
            os.close(fd)
            raise

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fd, byte offset or -1) of every row; opens the shards not yet open."""
        shards, inverse = np.unique(rows // self.per, return_inverse=True)
        fds = np.empty(len(shards), np.int64)
        table = np.empty((len(shards), self.per), np.int64)
        with self._lock:
            for i, s in enumerate(shards.tolist()):
                entry = self._open.get(s)
                if entry is None:
                    entry = self._open[s] = self._load(s)
                else:
                    self._open.move_to_end(s)
                fds[i], table[i] = entry
        return fds[inverse], table[inverse, rows % self.per]

    def _evict(self) -> None:
        with self._lock:
            while len(self._open) > self.max_open:
                _, (fd, _) = self._open.popitem(last=False)
                os.close(fd)

    def read_into(
        self, rows: np.ndarray, out: np.ndarray, pool: ThreadPoolExecutor | None = None, tasks: int = 1
    ) -> None:
        """Fill out[i] with row rows[i]. `out` is C-contiguous with frames of this array's shape
        and dtype; the reads are split into `tasks` parts run on `pool` (reads release the GIL)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if out.shape != (len(rows), *self.frame_shape) or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(
                f"buffer {out.shape} {out.dtype} does not fit {len(rows)} frames of {self.frame_shape} {self.dtype}"
            )
        self.read_selected(np.arange(len(rows)), rows, out.reshape(len(rows), -1).view(np.uint8), pool, tasks)

    def read_selected(self, at: np.ndarray, rows: np.ndarray, flat: np.ndarray, pool=None, tasks: int = 1) -> None:
        """Rows rows[at] into flat[at] (flat: one uint8 row of frame bytes per entry of `rows`)."""
        shard_of = rows[at] // self.per
        if len(np.unique(shard_of)) <= self.max_open:
            self._read(at, rows, flat, pool, tasks)
            return
        # More shards than may stay open: in groups of at most max_open shards, each group's
        # files evicted down to the bound before the next opens (at most 2 x max_open at once).
        order = np.argsort(shard_of, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(shard_of[order]) != 0]).tolist() + [len(at)]
        for g in range(0, len(starts) - 1, self.max_open):
            self._read(at[order[starts[g] : starts[min(g + self.max_open, len(starts) - 1)]]], rows, flat, pool, tasks)

    def _read(self, at: np.ndarray, rows: np.ndarray, flat: np.ndarray, pool, tasks: int) -> None:
        """Rows rows[at] into flat[at], then the least recently used files closed down to the bound."""
        fds, offsets = self._locate(rows[at])
        fds, offsets, at = fds.tolist(), offsets.tolist(), at.tolist()
        check, size = self.check and self.frame_crcs, self.frame_bytes
        stored = np.empty(len(at) if check else 0, "<u4")  # each frame's crc32c as read
        crc_bytes = stored.view(np.uint8)
        bad: list[int] = []  # list.append is atomic: the reading threads share it

        def read(lo: int, hi: int) -> None:
            for j in range(lo, hi):
                i = at[j]
                if offsets[j] < 0:
                    flat[i] = 0
                    continue
                if check:  # the frame into its slot and its crc32c beside it, in one call
                    got = os.preadv(fds[j], [flat[i], crc_bytes[4 * j : 4 * j + 4]], offsets[j]) - CRC_BYTES
                    if google_crc32c.value(flat[i]) != stored[j]:  # still in this core's cache
                        bad.append(i)
                else:
                    got = os.preadv(fds[j], [flat[i]], offsets[j])
                if got != size:
                    raise StoreError(f"short read of row {int(rows[i])} ({got} of {size} bytes)")

        in_parts(len(at), read, pool, tasks)
        self._evict()  # after the reads: no file is closed while a read may still use it
        if bad:
            damaged = sorted({int(rows[i]) for i in bad})
            raise DamagedFrameError(
                f"shard file {self._path(damaged[0] // self.per)}: row(s) {', '.join(map(str, damaged[:5]))} "
                "fail their crc32c check",
                rows=damaged,
            )

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._open.values():
                os.close(fd)
            self._open.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
