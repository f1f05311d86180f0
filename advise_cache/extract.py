"""Stage 1: decode every video, run the frozen image model once per frame, fill the store.

    advise-cache extract ucf101 --root /data/ucf101 --out ucf101.zarr
    torchrun --nproc_per_node 8 -m advise_cache.cli extract ucf101 --root ... --out ...

Three stages run at once so the model never waits:

- decode processes turn videos into uint8 crops, a chunk of frames at a time, written into
  a ring of shared memory (only slot numbers travel through pipes);
- the main thread copies crops into fixed-size batches that run across video boundaries,
  runs the model, casts the tokens to the stored dtype on the device and copies them back
  asynchronously into per-shard host buffers (pinned on CUDA) while the next batch runs;
- writer threads write each finished shard as its own file (shards are independent), and
  mark a video done once all its shards are durable.

Memory stays bounded whatever a video's length: a video is held as a few shard buffers, not
whole. Killing the run at any point and starting it again continues where it stopped; a
process writes only the videos it has claimed (`IFMArrays.claim`), so runs that overlap
never touch each other's videos, and done videos whose shards went missing are redone.
`--shard K/N` lets N processes split the videos of one store; under torchrun each rank
takes RANK/WORLD_SIZE as its part and LOCAL_RANK as its GPU, the same way.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing as mp
import os
import queue
import re
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .datasets import load_dataset
from .errors import AdviseCacheError, DecodeError, StoreError, first_line
from .ifm import check_weights, create_ifm
from .store import DEFAULT_CODEC, DONE, FAILED, PENDING, SAFE_KEY, create_store, open_store
from .video import decode_worker, init_worker, iter_crops, probe_or_reason, sigint_blocked

log = logging.getLogger(__name__)

EXIT_SOME_FAILED = 3  # documented in the README: the run finished but some videos failed
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
CHUNK = 16  # frames a decode process hands over at a time (one shared-memory slot)


@dataclass(frozen=True)
class ExtractConfig:
    dataset: str
    root: Path
    out: Path
    split: int = 1
    annotations: Path | None = None  # folder of the split/label files, when not in root
    holdout: bool = False  # also the unlabelled test set (Kinetics test.csv, SSv2 test.json)
    model: str = "ViT-B-16"
    pretrained: str = "auto"
    name: str | None = None  # the IFM's key in the store; default derived from the model
    frame_stride: int = 1
    batch_size: int | None = None  # frames per forward; None: 256 on CUDA, 64 on the CPU
    workers: int | None = None  # decode processes; 0 decodes in line; None: see default_workers
    writers: int = 4  # threads writing shards
    device: str = "auto"
    precision: str = "auto"
    dtype: str = "float16"
    codec: str = DEFAULT_CODEC
    frames_per_shard: int = 64
    shard: tuple[int, int] = (0, 1)
    seed: int = 0
    progress: bool = True


@dataclass
class ExtractSummary:
    store: str
    ifm: str
    videos: int  # videos this process was responsible for
    done: int = 0  # done in this run
    already_done: int = 0
    busy: int = 0  # pending videos another process was extracting: left to it
    failed: list[dict] = field(default_factory=list)
    missing: int = 0  # videos the split files list but the disk lacks (named in the store)
    frames: int = 0
    bytes: int = 0
    seconds: float = 0.0
    # Timings of the decode -> model -> write loop alone (what benchmarks judge): its whole span,
    # and the steady part, from the model's first batch to the last video stored.
    loop_seconds: float = 0.0
    steady_seconds: float = 0.0
    workers: int = 0
    batch_size: int = 0
    shard: tuple[int, int] = (0, 1)
    device: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0

    def lines(self) -> list[str]:
        fps = self.frames / self.seconds if self.seconds else 0.0
        per = self.bytes / self.frames if self.frames else 0
        k, n = self.shard
        out = [
            f"store {self.store}  ifm {self.ifm}" + (f"  part {k}/{n}" if n > 1 else ""),
            f"videos: {self.done} extracted, {self.already_done} already done, {len(self.failed)} failed"
            f" (of {self.videos})" + (f"; {self.busy} left to another process extracting them now"
                                      if self.busy else "") + (f"; {self.missing} listed videos missing on disk (`advise-cache info`"
                                      " names them)" if self.missing else ""),
            f"frames: {self.frames} in {self.seconds:.1f} s ({fps:.1f} frames/s; {self.device}, batch "
            f"{self.batch_size}, {self.workers} decode processes)",
            f"bytes: {self.bytes / 1e6:.1f} MB ({per / 1e3:.1f} kB per frame)",
        ]
        out += [f"FAILED {f['name']}: {f['reason']}" for f in self.failed]
        return out


def ifm_key(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-")


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' with 0 <= K < N."""
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise AdviseCacheError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4")
    return int(m[1]), int(m[2])


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(device: torch.device) -> int:
    """Decode processes: the cores this process may use, less what the main process needs
    (on CUDA one core for the model loop and one for the writer threads; on the CPU the
    model's threads share every core anyway, so one is kept back)."""
    return max(1, usable_cores() - (2 if device.type == "cuda" else 1))


def resolve_launch(shard: tuple[int, int], device: str) -> tuple[tuple[int, int], str]:
    """This process's part of the videos and its device. Under torchrun (RANK, WORLD_SIZE,
    LOCAL_RANK in the environment) rank r of W takes part K*W + r of N*W, so `--shard K/N`
    composes with it, and CUDA device LOCAL_RANK; no process group is needed."""
    env = os.environ
    k, n = shard
    if "RANK" in env and "WORLD_SIZE" in env:
        try:
            rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
        except ValueError as e:
            raise AdviseCacheError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e})") from e
        if not 0 <= rank < world:
            raise AdviseCacheError(f"RANK {rank} is not within WORLD_SIZE {world}")
        if device in ("auto", "cuda") and torch.cuda.is_available():
            if local >= torch.cuda.device_count():
                raise AdviseCacheError(f"LOCAL_RANK {local}, but this node has {torch.cuda.device_count()} GPUs")
            device = f"cuda:{local}"
        return (k * world + rank, n * world), device
    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        count = torch.cuda.device_count()
        hint = f"torchrun --nproc_per_node {count} -m advise_cache.cli extract ..."
        if n > 1:
            raise AdviseCacheError(
                f"--shard {k}/{n} with --device {device} puts every process on cuda:0 of this {count}-GPU "
                f"node; launch one process per GPU with `{hint}` (--shard composes with it), or give "
                "each process its own --device cuda:K"
            )
        log.warning("using cuda:0 only of %d GPUs; to use them all: %s", count, hint)
    return shard, device


# -- the store -----------------------------------------------------------------------------
def _probe(paths: list[str], workers: int, progress: bool) -> list[tuple[int, float, str]]:
    pool = None
    try:
        if workers <= 0:
            results = map(probe_or_reason, paths)
        else:
            # spawn: forking a process that has already started torch's thread pools can deadlock.
            pool = ProcessPoolExecutor(min(workers, max(1, len(paths))), mp_context=mp.get_context("spawn"),
                                       initializer=init_worker)
            with sigint_blocked():  # the pool starts its processes (and its manager thread) here
                results = pool.map(probe_or_reason, paths, chunksize=8)
        return list(tqdm(results, total=len(paths), desc="probe", unit="video", disable=not progress,
                         leave=False))
    finally:
        if pool is not None:  # its workers ignore Ctrl-C: they finish the probe in hand, then go
            pool.shutdown(wait=True, cancel_futures=True)


# -- main side -----------------------------------------------------------------------------
def _ensure_store(cfg: ExtractConfig, index, workers: int) -> None:
    names = [r.name for r in index.records]
    if (cfg.out / "zarr.json").exists():
        store = open_store(cfg.out)
        splits = [r.split for r in index.records]
        if (store.videos.name.tolist(), store.videos.split.tolist(), store.dataset) != (names, splits, index.dataset):
            raise StoreError(
                f"{cfg.out} was built from another video list ({store.dataset} split {store.source['split']},"
                f" {len(store.videos)} videos; now {index.dataset} split {index.official_split}, {len(names)}"
                " videos). Use a new --out"
            )
        return
    if cfg.out.exists() and any(cfg.out.iterdir()):
        raise StoreError(f"{cfg.out} exists and is not a store; refusing to write into it")
    parent = next(p for p in (cfg.out, *cfg.out.absolute().parents) if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):  # before probing every video
        raise StoreError(f"cannot create the store {cfg.out}: {parent} is not writable")
    log.info("probing %d videos", len(names))
    paths = [str(r.path) for r in index.records]
    probes = _probe(paths, workers, cfg.progress)
    table = {
        "name": names,
        "path": paths,
        "split": [r.split for r in index.records],
        "label": [r.label for r in index.records],
        "fps": [p[1] for p in probes],
        "source_frames": [p[0] for p in probes],
        "probe_error": [p[2] for p in probes],
    }
    create_store(cfg.out, index.dataset, str(index.root), index.classes, table, index.source())


def extract_videos(cfg: ExtractConfig) -> ExtractSummary:
    """Run stage 1 for this process's share of the videos; return what it did."""
    if cfg.frame_stride < 1 or (cfg.batch_size is not None and cfg.batch_size < 1) or cfg.frames_per_shard < 1:
        raise AdviseCacheError("--frame-stride, --batch-size and --frames-per-shard must be >= 1")
    if cfg.writers < 1:
        raise AdviseCacheError("--writers must be >= 1")
    t0 = time.perf_counter()
    (k, n), device = resolve_launch(cfg.shard, cfg.device)
    key = ifm_key(cfg.model) if cfg.name is None else cfg.name
    if not SAFE_KEY.fullmatch(key):
        raise AdviseCacheError(f"--name {key!r}: use letters, digits, '-', '_' and '.', not starting with "
                               "'.' (it names a folder inside the store)")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise StoreError(f"--out {cfg.out} is a file, not a store")
    index = load_dataset(cfg.dataset, cfg.root, cfg.split, cfg.annotations, cfg.holdout)
    # The weights before any store: a model that cannot be built leaves nothing behind;
    # weights not on this machine are told before open_clip's slow import.
    check_weights(cfg.model, cfg.pretrained)
    ifm = create_ifm(cfg.model, cfg.pretrained, device, cfg.precision, cfg.seed)
    workers = default_workers(ifm.device) if cfg.workers is None else max(0, cfg.workers)
    batch = cfg.batch_size or (256 if ifm.device.type == "cuda" else 64)
    try:
        _ensure_store(cfg, index, workers)
        store = open_store(cfg.out, mode="a")
        arrays = store.add_ifm(key, ifm.info(), cfg.frame_stride, cfg.frames_per_shard, cfg.codec, cfg.dtype)
    except OSError as e:  # a read-only folder, a full disk
        raise StoreError(f"cannot write the store {cfg.out}: {e.strerror or first_line(e)}") from e
    table = store.videos
    mine = np.arange(len(table))[k::n]
    summary = ExtractSummary(str(cfg.out), key, len(mine), workers=workers, batch_size=batch, shard=(k, n),
                             device=str(ifm.device), missing=len(store.source["missing"]))
    try:
        status = arrays.status()
        _repair(arrays, table, [int(v) for v in mine if status[v] == DONE])
        status = arrays.status()
        pending = [int(v) for v in mine if status[v] == PENDING]
        # Claimed and still pending: ours alone until the run ends (see IFMArrays.claim).
        todo = arrays.claim(pending)
        status = arrays.status()
        ours = set(todo)
        summary.busy = sum(1 for v in pending if v not in ours and status[v] == PENDING)
        reasons = arrays.reasons() if (status[mine] == FAILED).any() else None
        summary.failed = [{"name": str(table.name[v]), "reason": str(reasons[v])}
                          for v in mine if status[v] == FAILED]
        summary.already_done = int((status[mine] == DONE).sum())
        if summary.busy:
            log.warning("%d videos are being extracted by another process; this one leaves them to it",
                        summary.busy)
        _run(cfg, ifm, arrays, table, todo, workers, batch, summary)
    except OSError as e:
        if e.errno not in _STORAGE_ERRORS:
            raise
        # What is done stays done (a video is marked done only once durable); the rest resumes.
        raise StoreError(f"writing {cfg.out} failed: {e.strerror}; fix that and run the same command "
                         "again to continue") from e
    finally:
        arrays.release()
    summary.seconds = time.perf_counter() - t0
    return summary


def _repair(arrays, table, done: list[int]) -> None:
    """Done videos whose shard files are missing or cut go back to pending, to be written
    again by this run (what `verify` reports as damaged)."""
    for v, why in arrays.damaged(done):
        if arrays.claim([v], state=DONE):
            log.warning("%s was marked done but %s; extracting it again", table.name[v], why)
            arrays.reopen(v)
            arrays.release([v])


# -- decoding ------------------------------------------------------------------------------
class _InlineDecoder:
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


class _PoolDecoder:
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
            ctx.Process(target=decode_worker, args=(self.tasks, self.results, self.free, self.shm.name, self.shape),
                        daemon=True, name=f"decode-{i}")
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
                    raise RuntimeError(f"decode process {dead[0].name} died (exit code {dead[0].exitcode})")
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
class _Shard:
    """One shard of one video being filled: a host buffer of frames_per_shard rows."""

    video: int
    index: int
    rows: int
    buf: torch.Tensor
    filled: int = 0


class _Writer:
    """Threads that write finished shards and mark a video done after its last shard. Their
    first error is raised in the main thread at the next hand-over."""

    def __init__(self, arrays, summary: ExtractSummary, threads: int, release, on_done):
        self.arrays, self.summary, self.release, self.on_done = arrays, summary, release, on_done
        self.queue: queue.Queue = queue.Queue(maxsize=2 * threads)
        self.left: dict[int, int] = {}  # video -> shards not yet written
        self.bytes: dict[int, int] = {}
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.stop = False
        self.threads = [threading.Thread(target=self._loop, name=f"store-writer-{i}", daemon=True)
                        for i in range(threads)]
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
                    self.left[v] -= 1
                    self.bytes[v] += nbytes
                    last = self.left[v] == 0
                if last:
                    self.arrays.finish_video(v)
                    with self.lock:
                        self.summary.done += 1
                        self.summary.frames += int(self.arrays.frames[v])
                        self.summary.bytes += self.bytes[v]
                    self.on_done(v)
            except BaseException as e:
                self.error = self.error or e

    def put(self, shard: _Shard) -> None:
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
class _ModelLoop:
    """Fills fixed-size batches of crops across video boundaries, runs the model, and copies
    the tokens (cast to the stored dtype on the device) into per-shard host buffers. On CUDA
    the copies are asynchronous into pinned memory: a batch's shards go to the writer only
    once two later batches have been queued, so the GPU always has work while the host waits."""

    def __init__(self, ifm, batch: int, arrays, writer_put):
        self.ifm, self.batch, self.arrays, self.put = ifm, batch, arrays, writer_put
        self.cuda = ifm.device.type == "cuda"
        self.dtype = getattr(torch, str(np.dtype(arrays.tokens.dtype)))
        size = ifm.spec.size
        self.staging = [torch.empty((batch, size, size, 3), dtype=torch.uint8, pin_memory=self.cuda)
                        for _ in range(2)]
        self.staged = [None, None]  # CUDA events: when each staging buffer may be refilled
        self.cur, self.fill, self.pieces = 0, 0, []
        self.first_launch: float | None = None  # perf_counter of the first batch run
        self.inflight: deque = deque()
        # Batches queued on the GPU before the oldest is waited on: while the host fills the
        # next batch the GPU still has one to run. The CPU runs each batch before returning.
        self.depth = 2 if self.cuda else 0
        self.open: dict[tuple[int, int], _Shard] = {}
        self.spare: list[torch.Tensor] = []  # shard buffers back from the writer
        self.spare_lock = threading.Lock()
        self.dropped: set[int] = set()
        self.per = int(arrays.meta["frames_per_shard"])
        self.row_shape = tuple(arrays.tokens.shape[1:])

    def release(self, buf: torch.Tensor) -> None:
        with self.spare_lock:
            self.spare.append(buf)

    def _shard(self, video: int, index: int) -> _Shard:
        key = (video, index)
        if key not in self.open:
            with self.spare_lock:
                buf = self.spare.pop() if self.spare else None
            if buf is None:
                buf = torch.empty((self.per, *self.row_shape), dtype=self.dtype, pin_memory=self.cuda)
            rows = min(self.per, int(self.arrays.frames[video]) - index * self.per)
            self.open[key] = _Shard(video, index, rows, buf)
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
            self.staged[self.cur] = torch.cuda.Event()
            self.staged[self.cur].record()
        tokens = self.ifm.encode(x, dtype=self.dtype)
        complete = []
        for video, row, pos, n in self.pieces:
            if video in self.dropped:
                continue
            while n:
                index, r = divmod(row, self.per)
                shard = self._shard(video, index)
                take = min(n, shard.rows - r)
                shard.buf[r : r + take].copy_(tokens[pos : pos + take], non_blocking=True)
                shard.filled += take
                if shard.filled == shard.rows:
                    complete.append(self.open.pop((video, index)))
                row, pos, n = row + take, pos + take, n - take
        done = None
        if self.cuda:
            done = torch.cuda.Event()
            done.record()
        self.inflight.append((done, complete))
        self.cur, self.fill, self.pieces = 1 - self.cur, 0, []
        while len(self.inflight) > self.depth:  # older batches: their copies are done or nearly
            self._hand_over()

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
        for key in [key for key in self.open if key[0] == video]:
            self.release(self.open.pop(key).buf)

    def flush(self) -> None:
        self.launch()
        while self.inflight:
            self._hand_over()


def _run(cfg, ifm, arrays, table, todo, workers, batch, summary) -> None:
    bar = tqdm(total=len(todo), desc=f"extract {summary.ifm}", unit="video", disable=not cfg.progress)
    failed_now: list[int] = []
    tasks = []
    for v in todo:
        if table.probe_error[v]:
            _fail(arrays, table, v, str(table.probe_error[v]), summary)
            bar.update()
            continue
        arrays.clear_video(v)
        tasks.append((v, str(table.path[v]), ifm.spec, cfg.frame_stride, int(arrays.frames[v])))
    if not tasks:
        bar.close()
        return
    loop = None
    t0, last_stored = time.perf_counter(), [0.0]

    def stored(video: int) -> None:
        last_stored[0] = time.perf_counter()
        bar.update()

    writer = _Writer(arrays, summary, cfg.writers, release=lambda buf: loop.release(buf), on_done=stored)
    for task in tasks:
        writer.expect(task[0], arrays.shards_of(task[0]))
    loop = _ModelLoop(ifm, batch, arrays, writer.put)
    decoder = _InlineDecoder(tasks) if workers <= 0 else _PoolDecoder(tasks, min(workers, len(tasks)), ifm.spec.size)
    ok = False
    try:
        remaining = len(tasks)
        while remaining:
            event = decoder.next()
            if event[0] == "frames":
                _, video, start, crops, slot = event
                if video not in loop.dropped:
                    loop.add(video, start, crops)
                decoder.release(slot)
            elif event[0] == "done":
                remaining -= 1
            else:  # failed
                remaining -= 1
                loop.drop(event[1])
                failed_now.append(event[1])
                _fail(arrays, table, event[1], event[2], summary)
                bar.update()
        loop.flush()
        ok = True
    finally:
        decoder.close()
        writer.close(abort=not ok)
        bar.close()
    summary.loop_seconds = time.perf_counter() - t0
    if loop.first_launch is not None and last_stored[0] > loop.first_launch:
        summary.steady_seconds = last_stored[0] - loop.first_launch
    if writer.error is not None:
        raise writer.error
    for v in failed_now:  # shards written before the failure
        arrays.clear_video(v)


def _fail(arrays, table, v, reason, summary) -> None:
    arrays.mark_failed(v, reason)
    summary.failed.append({"name": str(table.name[v]), "reason": reason})
    log.warning("failed %s: %s", table.name[v], reason)


def summary_dict(summary: ExtractSummary) -> dict:
    return asdict(summary)
