"""Batches of cached tokens for sampled clips: one copy per byte, layout changes on the device.

    loader = ClipLoader(source, plan, batch_size=32, device=torch.device("cuda"))
    for x, y in loader:  # x: (B, D, T, h, w) in the stored dtype (float16 from int8), on the device
        x = x.float()    # the cast (and anything else) happens where x lives

A batch is filled in place: every frame of every clip is read (`preadv`, see shards.py)
straight into its slot of a preallocated (B, T, h, w, D) buffer, the stored layout, by a
small thread pool. Permuted to (B, D, T, h, w) that buffer is already a channels_last_3d view,
so nothing on the host converts layout or dtype. On CUDA the buffers are pinned and the copy
to the device runs asynchronously on a side stream while the model works on the previous
batch; a ring of buffers lets reading run `prefetch` batches ahead. An int8 store's rows
(D values and a float16 scale per token, quant.py) travel as stored and are dequantised to
float16 on the device, after the copy, on the same side stream. On the CPU the reading threads
dequantise them (and lay several IFMs side by side) into a float16 buffer of the ring, a share of
the batch's frames each, once the batch is read.

`TokenSource` reads clips from one or several IFMs of a store; several are concatenated along
channels (on the device, from one buffer per IFM). `preload` keeps the videos a run samples
resident: in RAM, or on the GPU, where a batch is gathered without the host.

Every frame read is checked against its crc32c (format 3, shards.py): a damaged one stops the
loader with a line naming its video and frame, or its video is left out (damaged.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .damaged import DamagedVideos
from .errors import DamagedFrameError, MismatchError, StoreError
from .quant import dequantise, dequantise_into
from .runtime import cores_per_process, free_memory
from .sampling import ClipRequest
from .shards import in_parts
from .store import DONE, Store
from .views import train_views

log = logging.getLogger(__name__)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


class TokenSource:
    """Clips of tokens from one or more IFMs of a store, read into caller buffers. `damaged`: the
    videos found with a frame failing its crc32c, left out by the loader with `skip_damaged`."""

    def __init__(self, store: Store, keys: list[str] | None = None, skip_damaged: bool = False):
        self.store = store
        self.damaged = DamagedVideos(store, skip_damaged)
        self.keys = list(keys) if keys else [store.ifm().key]
        self.arrays = [store.ifm(k) for k in self.keys]
        grids = {a.grid for a in self.arrays}
        if len(grids) != 1:
            raise MismatchError(
                "cannot concatenate IFMs with different grids: " + ", ".join(f"{a.key} {a.grid}" for a in self.arrays)
            )
        frames = [a.frames for a in self.arrays]
        if any(not np.array_equal(frames[0], f) for f in frames[1:]):
            raise MismatchError("cannot concatenate IFMs extracted with different frame strides")
        self.grid = self.arrays[0].grid
        self.dims = [a.dim for a in self.arrays]
        self.dim = sum(self.dims)
        self.frames = frames[0]
        dtypes = {np.dtype(a.tokens.dtype).newbyteorder("=") for a in self.arrays}
        if len(dtypes) != 1:
            raise MismatchError(f"cannot concatenate IFMs stored as {', '.join(map(str, dtypes))}")
        self.stored_dtype = dtypes.pop()  # what the buffers hold
        self.quantised = self.arrays[0].quantised
        self.row_dims = [a.row_dim for a in self.arrays]  # D_k, or D_k + 2 for int8
        self.dtype = np.dtype(np.float16) if self.quantised else self.stored_dtype  # what clips come out as
        for a in self.arrays:
            a.check_offsets()
        # The stored views (views.py), the same in every IFM read together: a clip's view is one index.
        self.views = self.arrays[0].views
        if any(json.dumps(a.views) != json.dumps(self.views) for a in self.arrays[1:]):
            raise MismatchError("cannot concatenate IFMs extracted with different views (--aug-views, --crops)")
        status = np.stack([a.status() for a in self.arrays])
        self.done = (status == DONE).all(axis=0)
        self._readers = [a.shard_reader() for a in self.arrays]  # None: compressed, via zarr
        self.resident: list[torch.Tensor] | None = None  # per IFM, (rows, h, w, D_k)
        self._resident_start: np.ndarray | None = None  # per video, its first resident row (-1: none)

    def train_views(self, choice: str) -> list[int]:
        """The views a training clip draws from (`--views-train`; views.train_views)."""
        return train_views(self.views, choice)

    def videos(self, split: str | None = None) -> tuple[np.ndarray, int]:
        """Indices of usable (done in every IFM) videos of a split, and how many were skipped."""
        table = self.store.videos
        in_split = np.ones(len(table), bool) if split is None else table.split == split
        usable = np.flatnonzero(in_split & self.done & (self.frames > 0))
        return usable, int(in_split.sum()) - len(usable)

    # -- resident copies ------------------------------------------------------------------
    def preload(self, videos, device: torch.device | str | None = None, on_device: bool = False) -> int:
        """Keep these videos' tokens resident: in RAM or, with `on_device`, in the memory of
        `device` (a GPU). Returns the bytes held. The RAM copy is not pinned even on CUDA: the
        loader's pinned ring carries every copy to the device, and pinning tens of GB would lock
        them (rounded up to a power of two) for the run. The GPU copy is filled through a small
        host buffer, never built whole in RAM; both fit checks come before anything is read."""
        device = torch.device(device or "cpu")
        videos = np.unique(np.asarray(videos, np.int64))
        k = len(self.views)  # every view of a video, one after the other (`rows`)
        counts = self.frames[videos].astype(np.int64) * k
        total = int(counts.sum())
        row = int(np.prod(self.grid)) * self.stored_dtype.itemsize
        need = total * row * sum(self.row_dims)
        free = free_memory(device if on_device else torch.device("cpu"))
        if free is not None and need > 0.9 * free:
            where = "GPU" if on_device else "RAM"
            raise StoreError(
                f"--preload needs {need / 1e9:.1f} GB of {where}; only {free / 1e9:.1f} GB "
                "are available. Train without --preload (the loader reads from the store)"
            )
        start = np.full(len(self.frames), -1, np.int64)
        start[videos] = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(videos) else []
        resident = []
        for a, reader, d in zip(self.arrays, self._readers, self.row_dims):  # kept as stored
            shape, dtype = (total, *self.grid, d), _torch_dtype(self.stored_dtype)
            out = torch.empty(shape, dtype=dtype, device=device if on_device else "cpu")
            bounce = (
                None if not on_device else np.empty((max(1, _BOUNCE_BYTES // (row * d)), *shape[1:]), self.stored_dtype)
            )
            for v, s, n in zip(videos.tolist(), start[videos].tolist(), counts.tolist()):
                rows = (a.view_start([v] * k, range(k))[:, None] + np.arange(n // k)).reshape(-1)
                try:
                    if bounce is None:
                        a.read_rows(rows, out.numpy()[s : s + n], reader)
                        continue
                    for i in range(0, n, len(bounce)):  # a piece at a time through the host buffer
                        piece = bounce[: min(len(bounce), n - i)]
                        a.read_rows(rows[i : i + len(piece)], piece, reader)
                        out[s + i : s + i + len(piece)].copy_(torch.from_numpy(piece))
                except DamagedFrameError as e:
                    self.damaged.record(e)  # its clips are never taken from the resident copy
            resident.append(out)
        self.resident, self._resident_start = resident, start
        return need

    # -- reading ----------------------------------------------------------------------------
    def rows(self, k: int, videos: np.ndarray, indices: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
        """(B, T) rows of IFM k's token array (or of the resident copy) for clips (videos[b],
        indices[b]) of stored views views[b] (None: the centre crop)."""
        views = np.zeros(len(videos), np.int64) if views is None else np.asarray(views, np.int64)
        if self.resident is not None:
            start = self._resident_start[videos]
            if (start < 0).any():
                raise StoreError(f"video {int(videos[start < 0][0])} was not preloaded")
            return (start + views * self.frames[videos])[:, None] + indices
        return self.arrays[k].view_start(videos, views)[:, None] + indices

    def fill(
        self,
        videos: np.ndarray,
        indices: np.ndarray,
        outs: list[np.ndarray],
        pool: ThreadPoolExecutor | None = None,
        tasks: int = 1,
        views: np.ndarray | None = None,
    ) -> None:
        """Write clip b's frames (of stored view views[b]; None: the centre crop), as stored, into
        outs[k][b] (one (B, T, h, w, row_dims[k]) buffer per IFM)."""
        for k, (a, reader, out) in enumerate(zip(self.arrays, self._readers, outs)):
            rows = self.rows(k, videos, indices, views).reshape(-1)
            flat = out.reshape(len(rows), *out.shape[2:])
            if self.resident is not None:
                np.take(self.resident[k].numpy(), rows, axis=0, out=flat)
            else:
                a.read_rows(rows, flat, reader, pool, tasks)

    def clip(self, video: int, indices: np.ndarray, device: torch.device | str = "cpu", view: int = 0) -> torch.Tensor:
        """(T, h, w, D) tokens of one clip (of stored `view`) on `device`, in `self.dtype`: the rows
        travel as stored and an int8 store's are dequantised there (evaluation and plots, a clip at a time)."""
        indices = np.asarray(indices, np.int64)
        _check_indices(self.frames, np.array([video]), indices[None])
        views = np.array([view], np.int64)
        outs = [np.empty((1, len(indices), *self.grid, d), self.stored_dtype) for d in self.row_dims]
        if self.resident is not None and self.resident[0].device.type != "cpu":
            rows = torch.from_numpy(self.rows(0, np.array([video]), indices[None], views).reshape(-1))
            for out, r in zip(outs, self.resident):
                out[0] = r[rows.to(r.device)].cpu().numpy()
        else:
            self.fill(np.array([video]), indices[None], outs, views=views)
        return self.dequantise([torch.from_numpy(o[0]).to(device) for o in outs])

    def dequantise(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Rows as stored, one tensor (..., row_dims[k]) per IFM → (..., D) tokens in `self.dtype`,
        computed where the parts are (int8: dequantised there)."""
        if self.quantised:
            parts = [dequantise(p, torch.float16) for p in parts]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def dequantise_into(
        self, parts: list[torch.Tensor], out: torch.Tensor, pool: ThreadPoolExecutor | None = None, tasks: int = 1
    ) -> torch.Tensor:
        """`dequantise` on the host into `out` (..., h, w, D) rather than new memory: its frames are
        split into up to `tasks` shares run on `pool` (the kernels release the GIL), each of at
        least _DEQUANTISE_SHARE values: handing a small batch to threads costs more than it saves.
        Returns `out`."""
        frames = out.view(-1, *out.shape[-3:])
        tasks = max(1, min(tasks, out.numel() // _DEQUANTISE_SHARE))
        rows = [p.reshape(-1, *p.shape[-3:]) for p in parts]
        ends = np.cumsum([0, *self.dims]).tolist()

        def work(lo: int, hi: int) -> None:
            for r, a, b in zip(rows, ends[:-1], ends[1:]):
                if self.quantised:
                    dequantise_into(r[lo:hi], frames[lo:hi, ..., a:b])
                else:
                    frames[lo:hi, ..., a:b].copy_(r[lo:hi])

        in_parts(len(frames), work, pool, tasks)
        return out


_BOUNCE_BYTES = 64 << 20  # the host buffer a GPU preload is filled through
_DEQUANTISE_SHARE = 1 << 20  # values (2 MB of float16): a ViT-B-16 batch of 32 x 8 frames is ~37 shares


def default_threads(device: torch.device) -> int:
    """Reading threads when --loader-threads is not given. On CUDA this process's share of the
    node's cores less the training loop's (a GPU-rate run needs several copying cores per GPU),
    at least 4 and at most 16; on the CPU 4, what pipelines/benchmarks/loader.py measured best,
    the model's own threads taking the cores."""
    if torch.device(device).type != "cuda":
        return 4
    return min(16, max(4, cores_per_process() - 1))


def _check_indices(frames: np.ndarray, videos: np.ndarray, indices: np.ndarray) -> None:
    n = frames[videos][:, None]
    bad = (indices < 0) | (indices >= n)
    if bad.any():
        b = int(np.flatnonzero(bad.any(axis=1))[0])
        raise StoreError(f"video {int(videos[b])} has {int(n[b, 0])} frames; a clip asks for {indices[b].tolist()}")


def collate(clips: list) -> torch.Tensor:
    """(T, h, w, D) clips (tensors or arrays) → (B, D, T, h, w) float32, where the clips are, for
    the few places that score single clips."""
    x = torch.stack([torch.as_tensor(c) for c in clips])
    return x.permute(0, 4, 1, 2, 3).float().contiguous()


def _handed(stop: threading.Event, target: queue.Queue, item) -> bool:
    """Hand an item over unless the consumer has stopped; never blocks for good."""
    while not stop.is_set():
        try:
            target.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _taken(stop: threading.Event, source: queue.Queue):
    """The next item of `source`, or None once the consumer has stopped."""
    while not stop.is_set():
        try:
            return source.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


class ClipLoader:
    """Iterates (x, y) batches for a plan of clip requests, reading ahead in the background.

    x is (B, D, T, h, w) in the stored dtype (float16 for int8, dequantised on `device`), a
    channels_last_3d view of the stored layout, on `device`; y is (B,) int64. On the CPU, x
    shares memory with one of the loader's buffers and stays valid until the next batch is asked
    for (copy it to keep it longer).
    """

    def __init__(
        self,
        source: TokenSource,
        plan: list[ClipRequest],
        batch_size: int,
        prefetch: int = 2,
        threads: int = 0,  # 0: default_threads
        skip_batches: int = 0,
        drop_last: bool = True,
        device: torch.device | str | None = None,
    ):
        if batch_size < 1:
            raise StoreError("batch size must be >= 1")
        self.source = source
        self.batch_size = batch_size
        n = len(plan) // batch_size * batch_size if drop_last else len(plan)
        self.batches = [plan[i : i + batch_size] for i in range(0, n, batch_size)][skip_batches:]
        lengths = {len(r.indices) for r in plan}
        if len(lengths) > 1:
            raise StoreError(f"clips of one plan must have equal lengths, got {sorted(lengths)}")
        self.frames = lengths.pop() if lengths else 0
        self._arrays = [
            (
                np.array([r.video for r in b], np.int64),
                np.stack([np.asarray(r.indices, np.int64) for r in b]),
                np.array([r.label for r in b], np.int64),
                np.array([r.view for r in b], np.int64),
            )
            for b in self.batches
        ]
        for videos, indices, _, views in self._arrays:
            if views.size and not 0 <= views.min() <= views.max() < len(source.views):
                raise StoreError(
                    f"a clip asks for view {int(views.max())}; the store holds {len(source.views)}"
                )  # a bad plan fails here, not mid-epoch
            _check_indices(source.frames, videos, indices)
        self.prefetch = max(1, prefetch)
        self.device = torch.device(device or "cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.threads = max(1, threads) if threads else default_threads(self.device)
        self.wait_seconds = 0.0  # time the consumer spent blocked on data
        self._whole = None  # the plan's clips as three arrays, made when a damaged video is first left out

    def __len__(self) -> int:
        return len(self.batches)

    def _buffers(self, rows: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """One slot of the ring: a buffer per IFM for the rows as stored, and on the CPU, where
        they need decoding (int8, or several IFMs), the batch's (B, T, h, w, D) buffer."""
        src, pin = self.source, self.device.type == "cuda"
        shape = (rows, self.frames, *src.grid)
        stored = [torch.empty((*shape, d), dtype=_torch_dtype(src.stored_dtype), pin_memory=pin) for d in src.row_dims]
        on_host = not pin and (src.quantised or len(stored) > 1)
        return stored, torch.empty((*shape, src.dim), dtype=_torch_dtype(src.dtype)) if on_host else None

    def __iter__(self):
        dev = self.device
        cuda = dev.type == "cuda"
        on_device = self.source.resident is not None and self.source.resident[0].device.type == "cuda"
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        free: queue.Queue = queue.Queue()  # host buffers ready to be filled, with the event of their last copy
        if not on_device:
            # Pinned memory is allocated in the current device's context: this thread's may be
            # cuda:0 (a context there from every rank of a node), so the loader's is made current.
            with torch.cuda.device(dev) if cuda else contextlib.nullcontext():
                for _ in range(self.prefetch + 1):  # prefetch waiting, one in the consumer's hands
                    free.put((self._buffers(self.batch_size), None))
        stop = threading.Event()
        side = torch.cuda.Stream(dev) if cuda else None
        args = (q, free, stop, on_device, side)
        thread = threading.Thread(target=self._produce, args=args, name="clip-loader", daemon=True)
        thread.start()
        held = None  # host buffers the consumer is using (CPU): back to the ring on the next ask
        try:
            while True:
                if held is not None:
                    free.put((held, None))
                    held = None
                t0 = time.perf_counter()
                item = q.get()
                self.wait_seconds += time.perf_counter() - t0
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                x, y, event, held = item
                if event is not None:  # the side stream's copy, ordered before the model's use
                    stream = torch.cuda.current_stream(dev)
                    stream.wait_event(event)
                    x.record_stream(stream)
                    y.record_stream(stream)
                yield x.permute(0, 4, 1, 2, 3), y
        finally:
            stop.set()
            thread.join()

    def _produce(self, q: queue.Queue, free: queue.Queue, stop: threading.Event, on_device: bool, side) -> None:
        """The loader's thread: each batch of the plan read (into a free host buffer, or gathered
        on the device) and handed to the consumer through `q`, then None; an error is handed over
        instead. Ends early when the consumer stops."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # the current device is per thread
        src = self.source
        with ThreadPoolExecutor(self.threads) as pool:
            try:
                for i, clips in enumerate(self._arrays):
                    if src.damaged:  # damaged videos' clips give way to others of the plan
                        clips = src.damaged.replace(clips, self._plan(), (i + 1) * self.batch_size)
                    if on_device:
                        item = self._gather_on_device(*clips, side)
                    else:
                        item = self._read_on_host(i, clips, pool, free, stop, side)
                    if item is None or not _handed(stop, q, item):
                        return
                _handed(stop, q, None)
            except BaseException as e:  # handed to the consumer
                _handed(stop, q, e)

    def _read_on_host(self, i: int, clips: tuple, pool, free: queue.Queue, stop: threading.Event, side):
        """Batch i read into the next free host buffer (once its last copy to the device is done):
        on the CPU dequantised there, on CUDA copied to the device (`_deliver`). None when the
        consumer has stopped."""
        got = _taken(stop, free)
        if got is None:
            return None
        bufs, event = got
        if event is not None:
            event.synchronize()  # its last copy to the device has finished
        stored, dequantised = bufs
        used = [b[: len(clips[0])] for b in stored]  # a short last batch uses a part
        videos, _, labels, _ = self._fill(i, clips, [u.numpy() for u in used], pool)
        if dequantised is not None:  # CPU: dequantised by the reading threads
            x = self.source.dequantise_into(used, dequantised[: len(videos)], pool, self.threads)
            return (x, torch.from_numpy(labels), None, bufs)
        return self._deliver(used, bufs, labels, side, free)

    def _fill(self, i: int, clips: tuple, outs: list[np.ndarray], pool) -> tuple:
        """`source.fill` for batch i (`clips`: its videos, indices and labels); a damaged video
        found on the way is left out (its clips replaced, the batch read again) or stops the
        loader, as the source says. Returns the clips read."""
        while True:
            try:
                self.source.fill(clips[0], clips[1], outs, pool, self.threads, clips[3])
                return clips
            except DamagedFrameError as e:
                self.source.damaged.record(e)
                clips = self.source.damaged.replace(clips, self._plan(), (i + 1) * self.batch_size)

    def _plan(self) -> tuple:
        if self._whole is None:
            self._whole = tuple(np.concatenate(parts) for parts in zip(*self._arrays))
        return self._whole

    def _deliver(self, used: list[torch.Tensor], bufs: tuple, labels: np.ndarray, side, free: queue.Queue):
        """(x, y, event, ring slot the consumer holds) for a filled host batch `used` (views of
        the slot `bufs`'s buffers) that needs no decoding on the host."""
        y = torch.from_numpy(labels)
        if side is None:  # CPU: the consumer reads the buffer itself
            return used[0], y, None, bufs
        with torch.cuda.stream(side):
            parts = [b.to(self.device, non_blocking=True) for b in used]
            y = y.pin_memory().to(self.device, non_blocking=True)
            x = self.source.dequantise(parts)
            event = torch.cuda.Event()
            event.record(side)
        free.put((bufs, event))  # refilled once this copy has finished
        return x, y, event, None

    def _gather_on_device(self, videos, indices, labels, views, side):
        src = self.source
        with torch.cuda.stream(side):
            parts = []
            for k, r in enumerate(src.resident):
                rows = torch.from_numpy(src.rows(k, videos, indices, views).reshape(-1)).pin_memory()
                rows = rows.to(r.device, non_blocking=True)
                parts.append(r.index_select(0, rows).view(len(videos), self.frames, *r.shape[1:]))
            x = src.dequantise(parts)
            y = torch.from_numpy(labels).pin_memory().to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(side)
        return x, y, event, None
