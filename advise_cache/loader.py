"""Batches of cached tokens for sampled clips: read exactly the frames a batch needs.

    loader = ClipLoader(source, plan, batch_size=32)
    for x, y in loader:  # x: (B, D, T, h, w) float32, y: (B,) int64
        ...

`TokenSource` reads clips from one or several IFMs of a store (several are concatenated
along channels) and can preload the videos a run needs into RAM (`preload=True`). The
loader reads batches in a background thread, with a small thread pool per batch, so the
model does not wait on local storage; it records how long the consumer did wait.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .errors import MismatchError, StoreError
from .sampling import ClipRequest
from .store import DONE, Store

log = logging.getLogger(__name__)


class TokenSource:
    """Clips of tokens from one or more IFMs of a store, as (T, h, w, D_total) arrays."""

    def __init__(self, store: Store, keys: list[str] | None = None):
        self.store = store
        self.keys = list(keys) if keys else [store.ifm().key]
        self.arrays = [store.ifm(k) for k in self.keys]
        grids = {a.grid for a in self.arrays}
        if len(grids) != 1:
            raise MismatchError(
                "cannot concatenate IFMs with different grids: "
                + ", ".join(f"{a.key} {a.grid}" for a in self.arrays)
            )
        frames = [a.frames for a in self.arrays]
        if any(not np.array_equal(frames[0], f) for f in frames[1:]):
            raise MismatchError("cannot concatenate IFMs extracted with different frame strides")
        self.grid = self.arrays[0].grid
        self.dim = sum(a.dim for a in self.arrays)
        self.frames = frames[0]
        status = np.stack([a.status() for a in self.arrays])
        self.done = (status == DONE).all(axis=0)
        self._cache: dict[int, np.ndarray] = {}

    def videos(self, split: str | None = None) -> tuple[np.ndarray, int]:
        """Indices of usable (done in every IFM) videos of a split, and how many were skipped."""
        table = self.store.videos
        in_split = np.ones(len(table), bool) if split is None else table.split == split
        usable = np.flatnonzero(in_split & self.done & (self.frames > 0))
        return usable, int(in_split.sum()) - len(usable)

    def preload(self, videos) -> int:
        """Keep these videos' tokens in RAM; returns the bytes held."""
        for v in videos:
            v = int(v)
            if v not in self._cache:
                parts = [a.read_video(v) for a in self.arrays]
                self._cache[v] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
        return sum(x.nbytes for x in self._cache.values())

    def clip(self, video: int, indices: np.ndarray) -> np.ndarray:
        """(T, h, w, D) tokens of one clip, in the stored dtype."""
        cached = self._cache.get(video)
        if cached is not None:
            return cached[indices]
        parts = [a.read_frames(video, indices) for a in self.arrays]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def collate(clips: list[np.ndarray]) -> torch.Tensor:
    """(T, h, w, D) clips → (B, D, T, h, w) float32, the layout the TMM convolves."""
    x = torch.from_numpy(np.stack(clips))
    return x.permute(0, 4, 1, 2, 3).float().contiguous()


class ClipLoader:
    """Iterates (x, y) batches for a plan of clip requests, reading ahead in the background."""

    def __init__(self, source: TokenSource, plan: list[ClipRequest], batch_size: int,
                 prefetch: int = 2, threads: int = 4, skip_batches: int = 0, drop_last: bool = True):
        if batch_size < 1:
            raise StoreError("batch size must be >= 1")
        self.source = source
        n = len(plan) // batch_size * batch_size if drop_last else len(plan)
        self.batches = [plan[i : i + batch_size] for i in range(0, n, batch_size)][skip_batches:]
        self.prefetch = max(1, prefetch)
        self.threads = max(1, threads)
        self.wait_seconds = 0.0  # time the consumer spent blocked on data

    def __len__(self) -> int:
        return len(self.batches)

    def _read(self, pool: ThreadPoolExecutor, batch: list[ClipRequest]):
        clips = list(pool.map(lambda r: self.source.clip(r.video, r.indices), batch))
        y = torch.tensor([r.label for r in batch], dtype=torch.long)
        return collate(clips), y

    def __iter__(self):
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            """Hand an item over unless the consumer has stopped; never blocks for good."""
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            with ThreadPoolExecutor(self.threads) as pool:
                try:
                    for batch in self.batches:
                        if not put(self._read(pool, batch)):
                            return
                    put(None)
                except BaseException as e:  # handed to the consumer
                    put(e)

        thread = threading.Thread(target=produce, name="clip-loader", daemon=True)
        thread.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = q.get()
                self.wait_seconds += time.perf_counter() - t0
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()
