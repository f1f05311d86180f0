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
from .quant import error_sums, quantize, summarise_error
from .video import decode_worker, iter_crops, sigint_blocked

CHUNK = 16  # frames a decode process hands over at a time (one shared-memory slot)


# -- decoding ------------------------------------------------------------------------------
class InlineDecoder:
    """Decodes in this process, one chunk per call: for --workers 0 and tests."""

    def __init__(self, tasks: list[tuple]):
        self._events = self._generate(tasks)

    @staticmethod
    def _generate(tasks):
        for video, path, spec, stride, expected in tasks:
            try:
                for start, crops in iter_crops(Path(path), spec, stride, expected, CHUNK):
                    yield "frames", video, start, crops, None
                yield "done", video
            except DecodeError as e:
                yield "failed", video, str(e)

    def next(self) -> tuple:
        return next(self._events)

    def release(self, slot) -> None:
        pass

    def close(self) -> None:
        self._events.close()


class PoolDecoder:
    """Decode processes writing crops into a ring of shared-memory slots."""

    def __init__(self, tasks: list[tuple], workers: int, size: int):
        frame = size * size * 3
        slots = 3 * workers + 2  # each process fills one while the parent holds a couple
        chunk = CHUNK
        try:
            free_shm = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
        except OSError:
            free_shm = None
        if free_shm is not None:  # touching pages past a full /dev/shm kills us with SIGBUS
            chunk = min(CHUNK, free_shm // 2 // (slots * frame))
            if chunk < 1:
                raise AdviseCacheError(
                    f"/dev/shm has {free_shm / 1e6:.0f} MB free, too little for {workers} decode processes; "
                    "use fewer --workers (or --workers 0), or give the container a larger /dev/shm"
                )
        self.shape = (slots, chunk, size, size, 3)
        self.shm = shared_memory.SharedMemory(create=True, size=int(np.prod(self.shape)))
        self.ring = np.ndarray(self.shape, np.uint8, buffer=self.shm.buf)
        ctx = mp.get_context("spawn")  # forking after torch has started its threads can deadlock
        self.tasks, self.results, self.free = ctx.Queue(), ctx.Queue(), ctx.Queue()
        for s in range(slots):
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
                _, video, start, n, slot = event
                return "frames", video, start, self.ring[slot, :n], slot
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
                        tokens = int(self.arrays.frames[v]) * int(np.prod(self.arrays.grid))
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
    the tokens (cast to the stored dtype on the device) into per-shard host buffers. On CUDA
    the copies are asynchronous into pinned memory: a batch's shards go to the writer only
    once two later batches have been queued, so the GPU always has work while the host waits.

    Every event is recorded on the current stream of the model's own device, which is where its
    kernels and copies run: an event recorded on another GPU's stream (the thread's current
    device, cuda:0 unless set) would be complete at once, and buffers would be reused early."""

    def __init__(self, ifm, batch: int, arrays, writer_put):
        self.ifm, self.batch, self.arrays, self.put = ifm, batch, arrays, writer_put
        self.cuda = ifm.device.type == "cuda"
        self.stream = torch.cuda.current_stream(ifm.device) if self.cuda else None
        self.dtype = getattr(torch, str(np.dtype(arrays.tokens.dtype)))
        # int8: the model's tokens are quantised on the device, and each video's error against
        # them summed there (quant.error_sums) until its last shard takes the total to the host.
        self.quantised = arrays.quantised
        self.error_sums: dict[int, torch.Tensor] = {}
        size = ifm.spec.size
        self.staging = [torch.empty((batch, size, size, 3), dtype=torch.uint8, pin_memory=self.cuda) for _ in range(2)]
        self.staged = [None, None]  # CUDA events: when each staging buffer may be refilled
        self.cur, self.fill, self.pieces = 0, 0, []
        self.first_launch: float | None = None  # perf_counter of the first batch run
        self.inflight: deque = deque()
        # Batches queued on the GPU before the oldest is waited on: while the host fills the
        # next batch the GPU still has one to run. The CPU runs each batch before returning.
        self.depth = 2 if self.cuda else 0
        self.open: dict[tuple[int, int], Shard] = {}
        self.spare: list[torch.Tensor] = []  # shard buffers back from the writer
        self.spare_lock = threading.Lock()
        self.dropped: set[int] = set()
        self.per = int(arrays.meta["frames_per_shard"])
        self.row_shape = tuple(arrays.tokens.shape[1:])

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
            rows = min(self.per, int(self.arrays.frames[video]) - index * self.per)
            self.open[key] = Shard(video, index, rows, buf)
        return self.open[key]

    def add(self, video: int, start: int, crops: np.ndarray) -> None:
        i = 0
        while i < len(crops):
            if self.fill == 0 and self.staged[self.cur] is not None:
                self.staged[self.cur].synchronize()  # its last upload has finished
            take = min(len(crops) - i, self.batch - self.fill)
            self.staging[self.cur][self.fill : self.fill + take].numpy()[:] = crops[i : i + take]
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
        x = self.staging[self.cur][: self.fill].to(self.ifm.device, non_blocking=True)
        if self.cuda:
            self.staged[self.cur] = self._event()
        if self.quantised:
            floats = self.ifm.encode(x, dtype=torch.float32)
            tokens = quantize(floats)
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
        self.cur, self.fill, self.pieces = 1 - self.cur, 0, []
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
