"""Frames of a store in a bucket, read by range requests, and the local shard cache.

    reader = RemoteShardReader(bucket, "ifm/ViT-B-16/tokens", 64, (14, 14, 768), "<f2", cache=ShardCache(...))
    reader.read_into(rows, out, pool, tasks)   # the same call as shards.ShardReader's

Without a cache, each shard's index is fetched once (a suffix range request, checked against
its crc32c) and every frame of a batch is a range request, all of a shard's in one concurrent
`get_ranges`, the shards of a batch in parallel; each frame's bytes are checked against the
crc32c that ends its chunk (format 3) and copied once, into its slot of the batch buffer. With a
cache (`--local-cache DIR`), a shard a batch needs is fetched whole (one request), checked (its
index crc32c, every chunk inside the object, and every frame against its crc32c: a partial or
damaged download fails there and is never stored), written beside its place and renamed into it,
and its frames are copied out of the same bytes; from then on that shard is read from the local
file by `ShardReader` (preadv, the local fast path). The first epoch pulls; later epochs read
locally.

The cache is a folder of files, named by the store's URL and creation time, the shard, and the
crc32c checksum of the video that owns it (a video extracted again is fetched again). It holds
at most `max_bytes`: when a process has added 5% of that since it last looked, it lists the
folder and removes the least recently used files (their times are touched on use, at most
every 30 s by a process) down to 90%.
DDP ranks of a node pass the same folder and share it: a rename is atomic, two ranks fetching
one shard at once both rename the same bytes, and a file removed while another rank has it
open stays readable to that rank.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import DamagedFrameError, StoreError
from .shards import CRC_BYTES, ShardReader, bad_chunks, check_index, index_bytes
from .storage import Bucket

log = logging.getLogger(__name__)

TOUCH_EVERY = 30.0  # seconds between LRU touches of one cached shard by one process
IO_THREADS = 16  # requests in flight: a range request waits on the network, not on a core
_SCAN_SHARE, _EVICT_TO = 0.05, 0.9


class ShardCache:
    """Whole shard objects on local disk, bounded in bytes, least recently used out first."""

    def __init__(self, root: Path, max_bytes: int | None = None):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"--local-cache {self.root}: cannot create it ({e.strerror})") from None
        used = sum(self._files().values())
        # Default: what the disk has free now plus what the cache already holds, less 10%.
        self.max_bytes = int(max_bytes if max_bytes is not None else 0.9 * (shutil.disk_usage(self.root).free + used))
        if self.max_bytes <= 0:
            raise StoreError(f"--local-cache {self.root}: its bound must be positive")
        self._added = 0
        self._lock = threading.Lock()

    def folder(self, url: str, created: str) -> Path:
        """This store's own folder in the cache (several stores may share one cache)."""
        return self.root / hashlib.sha256(f"{url}\n{created}".encode()).hexdigest()[:16]

    def get(self, path: Path) -> bool:
        """True (and marks it used) when the file is in the cache."""
        try:
            os.utime(path)
            return True
        except FileNotFoundError:
            return False

    def put(self, path: Path, data) -> None:
        """Store `data` (already checked) at `path`, atomically; then keep within the bound."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                f.write(memoryview(data))
            os.rename(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning("local cache: cannot store %s (%s); reading from the bucket", path, e.strerror)
            return
        with self._lock:
            self._added += len(memoryview(data))
            if self._added < _SCAN_SHARE * self.max_bytes:
                return
            self._added = 0
        self.evict()

    def _files(self) -> dict[Path, int]:
        out = {}
        for folder, _, names in os.walk(self.root):
            for name in names:
                if not name.startswith("."):
                    try:
                        out[Path(folder) / name] = os.stat(os.path.join(folder, name)).st_size
                    except FileNotFoundError:  # removed by another rank meanwhile
                        pass
        return out

    def evict(self) -> int:
        """Remove the least recently used files until the cache holds at most 90% of its bound
        (when it is over the bound); returns the bytes it holds then."""
        files = self._files()
        total = sum(files.values())
        if total <= self.max_bytes:
            return total
        by_age = sorted(files, key=lambda p: _mtime(p))
        for p in by_age:
            if total <= _EVICT_TO * self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= files[p]
        return total


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


class RemoteShardReader:
    """Reads rows of one uncompressed sharded array kept in a bucket into given buffers, like
    `ShardReader` (one caller at a time), by range requests or through a `ShardCache`."""

    def __init__(
        self,
        bucket: Bucket,
        token_key: str,
        frames_per_shard: int,
        frame_shape: tuple[int, ...],
        dtype,
        cache: ShardCache | None = None,
        cache_folder: Path | None = None,
        tag=None,
        frame_crcs: bool = False,
    ):
        self.bucket = bucket
        self.token_key = token_key
        self.per = int(frames_per_shard)
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self.frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self.frame_crcs = bool(frame_crcs)  # each chunk ends in its frame's crc32c (format 3)
        self.chunk_bytes = self.frame_bytes + CRC_BYTES * self.frame_crcs
        self.cache = cache
        self._tag = tag or (lambda shard: "0")  # shard -> the owning video's checksum: its version
        self._folder = cache_folder
        self._local = (
            ShardReader(
                Path(cache_folder or "."),
                self.per,
                self.frame_shape,
                self.dtype,
                path_of=self._cached,
                frame_crcs=frame_crcs,
            )
            if cache is not None
            else None
        )
        self._index: OrderedDict[int, np.ndarray] = OrderedDict()  # shard -> chunk offsets (no cache)
        self._index_lock = threading.Lock()  # the fetching threads share it
        self._seen: dict[int, float] = {}  # shard -> when this process last found it in the cache
        self._paths: dict[int, Path] = {}
        self._io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="shard-get")

    def _key(self, shard: int) -> str:
        return f"{self.token_key}/c/{shard}/0/0/0"

    def _cached(self, shard: int) -> Path:
        path = self._paths.get(shard)
        if path is None:
            path = self._paths[shard] = self._folder / f"{self._key(shard)}.{self._tag(shard)}"
        return path

    def read_into(self, rows: np.ndarray, out: np.ndarray, pool=None, tasks: int = 1) -> None:
        """Fill out[i] with row rows[i], as `ShardReader.read_into` does."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if out.shape != (len(rows), *self.frame_shape) or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(
                f"buffer {out.shape} {out.dtype} does not fit {len(rows)} frames of {self.frame_shape} {self.dtype}"
            )
        flat = out.reshape(len(rows), -1).view(np.uint8)
        shard_of = rows // self.per
        shards = np.unique(shard_of)
        local = []
        if self.cache is not None:
            now = time.monotonic()
            local = [s for s in shards.tolist() if self._in_cache(s, now)]
        if local:
            at = np.arange(len(rows)) if len(local) == len(shards) else np.flatnonzero(np.isin(shard_of, local))
            try:
                self._local.read_selected(at, rows, flat, pool, tasks)
            except StoreError as e:  # removed by another rank just now, or damaged on the disk
                log.info("local cache: %s; fetching those shards again", e)
                self._local.close()
                for s in local:
                    self._seen.pop(s, None)
                    self._cached(s).unlink(missing_ok=True)
                local = []
        rest = np.setdiff1d(shards, local).tolist()
        jobs = [self._io.submit(self._fetch, s, np.flatnonzero(shard_of == s), rows, flat) for s in rest]
        for j in jobs:
            j.result()

    def _in_cache(self, shard: int, now: float) -> bool:
        """Whether a shard is in the cache; its file's time is touched (for the LRU) at most every
        TOUCH_EVERY seconds by this process, so a cached batch costs no system call."""
        seen = self._seen.get(shard)
        if seen is not None and now - seen < TOUCH_EVERY:
            return True
        if self.cache.get(self._cached(shard)):
            self._seen[shard] = now
            return True
        self._seen.pop(shard, None)
        return False

    def _fetch(self, shard: int, at: np.ndarray, rows: np.ndarray, flat: np.ndarray) -> None:
        """Rows rows[at] of one shard from the bucket into flat[at]."""
        key = self._key(shard)
        frames = (rows[at] % self.per).tolist()
        if self.cache is not None:  # the whole object: checked, kept, and the rows copied out of it
            data = self.bucket.read(key)
            if data is None:
                raise StoreError(f"{self.bucket.url / key} is missing: the store is damaged")
            view = memoryview(data)
            end = index_bytes(self.per)
            offsets = check_index(
                view[len(view) - end :], len(view), self.per, self.chunk_bytes, str(self.bucket.url / key)
            )
            bad = bad_chunks(view, offsets, self.frame_bytes) if self.frame_crcs else []
            if bad:  # damaged in the bucket or on the way: never cached
                raise DamagedFrameError(
                    f"{self.bucket.url / key}: row(s) {', '.join(str(shard * self.per + k) for k in bad[:5])} "
                    "fail their crc32c check",
                    rows=[shard * self.per + k for k in bad],
                )
            self.cache.put(self._cached(shard), data)
            self._seen[shard] = time.monotonic()
            for i, f in zip(at.tolist(), frames):
                flat[i] = np.frombuffer(view, np.uint8, self.frame_bytes, offsets[f]) if offsets[f] >= 0 else 0
            return
        offsets = self._offsets(shard)
        present = [(i, int(offsets[f])) for i, f in zip(at.tolist(), frames) if offsets[f] >= 0]
        for i, f in zip(at.tolist(), frames):
            if offsets[f] < 0:
                flat[i] = 0
        if present:
            got = self.bucket.read_ranges(key, [o for _, o in present], [self.chunk_bytes] * len(present))
            bad = []
            for (i, _), buf in zip(present, got):
                flat[i] = np.frombuffer(buf, np.uint8, self.frame_bytes)
                if self.frame_crcs and bad_chunks(buf, np.zeros(1, np.int64), self.frame_bytes):
                    bad.append(int(rows[i]))
            if bad:
                raise DamagedFrameError(
                    f"{self.bucket.url / key}: row(s) {', '.join(map(str, sorted(bad)[:5]))} fail their crc32c check",
                    rows=sorted(bad),
                )

    def _offsets(self, shard: int) -> np.ndarray:
        """A shard's chunk offsets, fetched (the index at its end) and checked once; a few thousand kept."""
        with self._index_lock:
            entry = self._index.get(shard)
        if entry is None:
            key = self._key(shard)
            raw, size = self.bucket.read_tail(key, index_bytes(self.per))
            entry = check_index(raw, size, self.per, self.chunk_bytes, str(self.bucket.url / key))
            with self._index_lock:
                self._index[shard] = entry
                while len(self._index) > 4096:
                    self._index.popitem(last=False)
        return entry

    def close(self) -> None:
        self._io.shutdown(wait=False)
        if self._local is not None:
            self._local.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def shard_cache(folder: Path | None, gb: float | None = None) -> ShardCache | None:
    """The cache of `--local-cache FOLDER` bounded to `--local-cache-gb` (None: no cache)."""
    if folder is None:
        return None
    if gb is not None and not gb > 0:
        raise StoreError(f"--local-cache-gb must be a positive number, got {gb}")
    return ShardCache(folder, None if gb is None else int(gb * 1e9))
