"""The three stages of extraction: decoding, the model loop and the store writers.

extract.py wires them together for a run (`extract_videos`); each is usable alone, which is
how benchmarks time them:

- `InlineDecoder` (in this process) or `PoolDecoder` (decode processes writing crops into a
  ring of shared memory) hand over chunks of a video's crops as events;
- `ModelLoop` fills fixed-size batches across video boundaries, runs the image model and
  copies the tokens, cast (or quantised to int8) on the device, into per-shard host buffers
  (`Shard`);
- `Writer` threads write each finished shard as its own file and mark a video done once all
  its shards are durable.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import torch

from .errors import AdviseCacheError, DecodeError
from .pixels import max_pixels, resize_crop_tensor
from .quant import error_sums, quantise, summarise_error
from .runtime import local_world_size
from .video import decode_worker, iter_frames, sigint_blocked
from .views import view_pixels

CHUNK = 16  # crops a decode process hands over at a time with --resize pil (one shared-memory slot)
SLOT_BYTES = 16 << 20  # a slot with --resize tensor: 16 frames of 640x480, or 5 of 720p
UPLOADS = 4  # pinned host buffers the model loop copies frames to the GPU through


# -- decoding ------------------------------------------------------------------------------
class InlineDecoder:
    """Decodes in this process, one chunk per call: for --workers 0 and tests."""

    def __init__(self, tasks: list[tuple]):
        self._events = self._generate(tasks)

    @staticmethod
    def _generate(tasks):
        for video, path, plan, expected in tasks:
            try:
                for start, frames in iter_frames(Path(path), plan, expected):
                    yield "frames", video, start, frames, None
                yield "done", video
            except DecodeError as e:
                yield "failed", video, str(e)

    def next(self) -> tuple:
        return next(self._events)

    def release(self, slot) -> None:
        pass

    def close(self) -> None:
        self._events.close()


def ring_shape(workers: int, size: int, resize: str, free_shm: int | None) -> tuple[int, int]:
    """(slots, bytes per slot) of the shared-memory ring: 3 slots a process and 2 for the parent,
    as /dev/shm allows. Under torchrun each rank counts only its share of /dev/shm (the free
    space divided by LOCAL_WORLD_SIZE), and takes half of that: touching pages past a full
    /dev/shm kills the process with SIGBUS."""
    frame = size * size * 3 if resize == "pil" else max_pixels(size) * 3  # the largest handed over
    want = CHUNK * size * size * 3 if resize == "pil" else SLOT_BYTES
    slots = 3 * workers + 2
    if free_shm is None:
        return slots, want
    budget = free_shm // local_world_size() // 2
    slots = min(slots, budget // frame)
    if slots < workers + 1:
        raise AdviseCacheError(
            f"/dev/shm has {free_shm / 1e6:.0f} MB free, too little for {workers} decode processes"
            f" of {frame / 1e6:.1f} MB frames; use fewer --workers (or --workers 0), --resize pil, or give the "
            "container a larger /dev/shm"
        )
    return slots, min(want, budget // slots)


class PoolDecoder:
    """Decode processes writing frames into a ring of shared-memory slots."""

    def __init__(self, tasks: list[tuple], workers: int, size: int, resize: str = "tensor"):
        try:
            free_shm = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
        except OSError:
            free_shm = None
        self.shape = ring_shape(workers, size, resize, free_shm)
        self.shm = shared_memory.SharedMemory(create=True, size=int(np.prod(self.shape)))
        self.ring = np.ndarray(self.shape, np.uint8, buffer=self.shm.buf)
        ctx = mp.get_context("spawn")  # forking after torch has started its threads can deadlock
        self.tasks, self.results, self.free = ctx.Queue(), ctx.Queue(), ctx.Queue()
        for s in range(self.shape[0]):
            self.free.put(s)
        for task in tasks:
            self.tasks.put(task)
        for _ in range(workers):
            self.tasks.put(None)
        self.procs = [
            ctx.Process(
                target=decode_worker,
                args=(self.tasks, self.results, self.free, self.shm.name, self.shape),
                daemon=True,
                name=f"decode-{i}",
            )
            for i in range(workers)
        ]
        try:
            with sigint_blocked():
                for p in self.procs:
                    p.start()
        except BaseException:  # a Ctrl-C noted while starting them: nothing may be left behind
            self.close()
            raise

    def next(self) -> tuple:
        while True:
            try:
                event = self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in self.procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"decode process {dead[0].name} died (exit code {dead[0].exitcode})") from None
                continue
            if event[0] == "frames":
                _, video, start, shape, slot = event
                return "frames", video, start, self.ring[slot, : int(np.prod(shape))].reshape(shape), slot
            if event[0] == "error":
                raise RuntimeError(f"decode process failed on video {event[1]}: {event[2]}")
            return event

    def release(self, slot) -> None:
        self.free.put(slot)

    def close(self) -> None:
        started = [p for p in self.procs if p.pid is not None]
        for p in started:
            if p.is_alive():
                p.terminate()
        for p in started:
            p.join()
        for q in (self.tasks, self.results, self.free):
            q.cancel_join_thread()
            q.close()
        del self.ring
        self.shm.close()
        self.shm.unlink()


# -- writing -------------------------------------------------------------------------------
@dataclass(eq=False)
class Shard:
    """One shard of one video being filled: a host buffer of frames_per_shard rows."""

    video: int
    index: int
    rows: int
    buf: torch.Tensor
    filled: int = 0
    quant: torch.Tensor | None = None  # int8, on the video's last shard: its error sums (host)


class Writer:
    """Threads that write finished shards and mark a video done after its last shard, adding
    it to the run's `summary` (an ExtractSummary: done, frames, bytes). Their first error is
    raised in the main thread at the next hand-over."""

    def __init__(self, arrays, summary, threads: int, release, on_done):
        self.arrays, self.summary, self.release, self.on_done = arrays, summary, release, on_done
        self.queue: queue.Queue = queue.Queue(maxsize=2 * threads)
        self.left: dict[int, int] = {}  # video -> shards not yet written
        self.quant: dict[int, tuple[float, float]] = {}  # video -> int8 error (rel L2, cosine)
        self.bytes: dict[int, int] = {}
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.stop = False
        self.threads = [
            threading.Thread(target=self._loop, name=f"store-writer-{i}", daemon=True) for i in range(threads)
        ]
        for t in self.threads:
            t.start()

    def expect(self, video: int, shards: int) -> None:
        self.left[video], self.bytes[video] = shards, 0

    def _loop(self) -> None:
        while (shard := self.queue.get()) is not None:
            if self.stop or self.error is not None:
                continue  # keep taking items so nobody waits on a full queue
            try:
                v = shard.video
                nbytes = self.arrays.write_shard(v, shard.index, shard.buf[: shard.rows].numpy())
                self.release(shard.buf)
                with self.lock:
                    if shard.quant is not None:
                        rows = int(self.arrays.frames[v]) * len(self.arrays.views)  # every view's
                        tokens = rows * int(np.prod(self.arrays.grid))
                        self.quant[v] = summarise_error(shard.quant.tolist(), tokens)
                    self.left[v] -= 1
                    self.bytes[v] += nbytes
                    last = self.left[v] == 0
                if last:
                    self.arrays.finish_video(v, self.quant.pop(v, None))
                    with self.lock:
                        self.summary.done += 1
                        self.summary.frames += int(self.arrays.frames[v])
                        self.summary.bytes += self.bytes[v]
                    self.on_done(v)
            except BaseException as e:
                self.error = self.error or e

    def put(self, shard: Shard) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(shard, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self, abort: bool = False) -> None:
        """Finish what was handed over (or, on abort, skip it), then stop the threads."""
        self.stop = abort
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join()


# -- the model loop ------------------------------------------------------------------------
class ModelLoop:
    """Fills fixed-size batches of crops across video boundaries, runs the model, and copies
    the tokens (cast to the stored dtype on the device) into per-shard host buffers. Frames come
    in as decoded (or already cropped, --resize pil) and are resized and cropped on the model's
    device (pixels.resize_crop_tensor) into the batch. On CUDA each chunk of frames goes through a
    pinned buffer, copied to the GPU on a side stream while the model runs; the tokens come back
    asynchronously into pinned memory, and a batch's shards go to the writer only once two later
    batches have been queued, so the GPU always has work while the host waits.

    Every event is recorded on a stream of the model's own device, which is where its kernels and
    copies run: an event recorded on another GPU's stream (the thread's current device, cuda:0
    unless set) would be complete at once, and buffers would be reused early."""

    def __init__(self, ifm, batch: int, arrays, writer_put, views: list[dict] | None = None):
        # views: the group's stored views (views.py); None, the centre crop alone
        self.ifm, self.batch, self.arrays, self.put = ifm, batch, arrays, writer_put
        self.cuda = ifm.device.type == "cuda"
        self.stream = torch.cuda.current_stream(ifm.device) if self.cuda else None
        self.copies = torch.cuda.Stream(ifm.device) if self.cuda else None  # frames to the GPU
        self.dtype = getattr(torch, str(np.dtype(arrays.tokens.dtype)))
        # int8: the model's tokens are quantised on the device, and each video's error against
        # them summed there (quant.error_sums) until its last shard takes the total to the host.
        self.quantised = arrays.quantised
        self.error_sums: dict[int, torch.Tensor] = {}
        size = ifm.spec.size
        # The batch being filled, where the model runs: on CUDA the model reads it in stream
        # order, before the next batch's crops overwrite it.
        self.crops = torch.empty((batch, size, size, 3), dtype=torch.uint8, device=ifm.device)
        self.uploads: list[list] = [[None, None] for _ in range(UPLOADS)]  # pinned buffer, its copy's event
        self.upload = 0
        self.fill, self.pieces = 0, []
        self.first_launch: float | None = None  # perf_counter of the first batch run
        self.inflight: deque = deque()
        # Batches queued on the GPU before the oldest is waited on: while the host fills the
        # next batch the GPU still has one to run. The CPU runs each batch before returning.
        self.depth = 2 if self.cuda else 0
        self.open: dict[tuple[int, int], Shard] = {}
        self.spare: list[torch.Tensor] = []  # shard buffers back from the writer
        self.spare_lock = threading.Lock()
        self.dropped: set[int] = set()
        self.per = arrays.meta.frames_per_shard
        self.row_shape = tuple(arrays.tokens.shape[1:])
        self.views = views or [{"kind": "centre"}]

    def release(self, buf: torch.Tensor) -> None:
        with self.spare_lock:
            self.spare.append(buf)

    def _shard(self, video: int, index: int) -> Shard:
        key = (video, index)
        if key not in self.open:
            with self.spare_lock:
                buf = self.spare.pop() if self.spare else None
            if buf is None:
                buf = torch.empty((self.per, *self.row_shape), dtype=self.dtype, pin_memory=self.cuda)
            n = int(self.arrays.frames[video])
            rows = min(self.per, n - index % max(1, -(-n // self.per)) * self.per)  # each view's last shard is cut
            self.open[key] = Shard(video, index, rows, buf)
        return self.open[key]

    def _on_device(self, frames: np.ndarray) -> torch.Tensor:
        """A chunk of frames (n, h, w, 3) uint8 on the model's device. On CUDA through the next
        pinned buffer of a small ring, copied on the side stream, which the model's stream then
        waits for; the caller may reuse `frames` at once."""
        if not self.cuda:
            return torch.from_numpy(frames)
        entry = self.uploads[self.upload]
        self.upload = (self.upload + 1) % len(self.uploads)
        if entry[1] is not None:
            entry[1].synchronize()  # its last copy to the GPU has finished
        if entry[0] is None or entry[0].numel() < frames.nbytes:
            entry[0] = torch.empty(frames.nbytes, dtype=torch.uint8, pin_memory=True)
        host = entry[0][: frames.nbytes].view(frames.shape)
        host.numpy()[:] = frames
        with torch.cuda.stream(self.copies):
            x = host.to(self.ifm.device, non_blocking=True)
        entry[1] = torch.cuda.Event()
        entry[1].record(self.copies)
        self.stream.wait_event(entry[1])
        x.record_stream(self.stream)  # made on the side stream, used on the model's
        return x

    def add(self, video: int, start: int, frames: np.ndarray) -> None:
        """Queue a chunk of a video's frames (rows start, start + 1, ...), as decoded or cropped.
        With stored views, each view's pixels are made from the one decoded chunk (views.py) and
        go to that view's rows, `view_stride` apart in the video's slot."""
        x = self._on_device(frames)
        if len(self.views) == 1:
            self._queue(video, start, resize_crop_tensor(x, self.ifm.spec))
            return
        stride = -(-int(self.arrays.frames[video]) // self.per) * self.per  # rows from a view to the next
        for k, view in enumerate(self.views):
            self._queue(video, k * stride + start, view_pixels(x, view, video, self.ifm.spec))

    def _queue(self, video: int, start: int, crops: torch.Tensor) -> None:
        """Copy crops (rows start, start + 1, ... of the video's slot) into batches, running each full one."""
        i = 0
        while i < len(crops):
            take = min(len(crops) - i, self.batch - self.fill)
            self.crops[self.fill : self.fill + take].copy_(crops[i : i + take])
            self.pieces.append((video, start + i, self.fill, take))
            self.fill += take
            i += take
            if self.fill == self.batch:
                self.launch()

    def launch(self) -> None:
        if not self.fill:
            return
        if self.first_launch is None:
            self.first_launch = time.perf_counter()
        x = self.crops[: self.fill]
        if self.quantised:
            floats = self.ifm.encode(x, dtype=torch.float32)
            tokens = quantise(floats)
        else:
            tokens = self.ifm.encode(x, dtype=self.dtype)
        complete = []
        for video, row, pos, n in self.pieces:
            if video in self.dropped:
                continue
            if self.quantised:
                sums = error_sums(floats[pos : pos + n], tokens[pos : pos + n])
                self.error_sums[video] = sums + self.error_sums[video] if video in self.error_sums else sums
            while n:
                index, r = divmod(row, self.per)
                shard = self._shard(video, index)
                take = min(n, shard.rows - r)
                shard.buf[r : r + take].copy_(tokens[pos : pos + take], non_blocking=True)
                shard.filled += take
                if shard.filled == shard.rows:
                    if self.quantised and index == self.arrays.shards_of(video) - 1:
                        sums = self.error_sums.pop(video)  # the video's last rows: its total
                        shard.quant = torch.empty(sums.shape, dtype=sums.dtype, pin_memory=self.cuda)
                        shard.quant.copy_(sums, non_blocking=True)  # read after this batch's event
                    complete.append(self.open.pop((video, index)))
                row, pos, n = row + take, pos + take, n - take
        self.inflight.append((self._event() if self.cuda else None, complete))
        self.fill, self.pieces = 0, []
        while len(self.inflight) > self.depth:  # older batches: their copies are done or nearly
            self._hand_over()

    def _event(self) -> torch.cuda.Event:
        """An event marking the work queued so far on the model's device."""
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def _hand_over(self) -> None:
        done, complete = self.inflight.popleft()
        if done is not None:
            done.synchronize()
        for shard in complete:
            if shard.video in self.dropped:
                self.release(shard.buf)
            else:
                self.put(shard)

    def drop(self, video: int) -> None:
        """A video failed part-way: forget its rows (stream order keeps reuse of its buffers safe)."""
        self.dropped.add(video)
        self.error_sums.pop(video, None)
        for key in [key for key in self.open if key[0] == video]:
            self.release(self.open.pop(key).buf)

    def flush(self) -> None:
        self.launch()
        while self.inflight:
            self._hand_over()
