"""Stage 1: decode every video, run the frozen image model once per frame, fill the store.

    advise-cache extract ucf101 --root /data/ucf101 --out ucf101.zarr

Three things run at once so the model never waits: decode workers (processes) turn videos
into uint8 crops, the main thread runs the model, and a writer thread stores the tokens and
marks each video done only after its rows are on disk. Killing the run at any point and
starting it again continues where it stopped; `--shard K/N` lets N processes split the
videos of one store between them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .datasets import load_dataset
from .errors import AdviseCacheError, StoreError
from .ifm import create_ifm
from .store import DEFAULT_CODEC, FAILED, PENDING, create_store, open_store
from .video import decode_or_reason, init_worker, probe_or_reason

log = logging.getLogger(__name__)

EXIT_SOME_FAILED = 3  # documented in the README: the run finished but some videos failed


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
    batch_size: int = 64
    workers: int = 2  # decode processes; 0 decodes in the main process
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
    failed: list[dict] = field(default_factory=list)
    missing: int = 0  # videos the split files list but the disk lacks (named in the store)
    frames: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0

    def lines(self) -> list[str]:
        fps = self.frames / self.seconds if self.seconds else 0.0
        per = self.bytes / self.frames if self.frames else 0
        out = [
            f"store {self.store}  ifm {self.ifm}",
            f"videos: {self.done} extracted, {self.already_done} already done, {len(self.failed)} failed"
            f" (of {self.videos})" + (f"; {self.missing} listed videos missing on disk (`advise-cache info`"
                                      " names them)" if self.missing else ""),
            f"frames: {self.frames} in {self.seconds:.1f} s ({fps:.1f} frames/s)",
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


class _Inline:
    """A stand-in for the process pool that runs tasks where they are submitted."""

    def submit(self, fn, *args) -> Future:
        f: Future = Future()
        f.set_result(fn(*args))
        return f

    def map(self, fn, items, chunksize=1):
        return map(fn, items)

    def shutdown(self, wait=True, cancel_futures=False) -> None:
        pass


def _pool(workers: int):
    if workers <= 0:
        return _Inline()
    # spawn: forking a process that has already started torch's thread pools can deadlock.
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=init_worker)


# -- main side -----------------------------------------------------------------------------
def _ensure_store(cfg: ExtractConfig, pool) -> None:
    index = load_dataset(cfg.dataset, cfg.root, cfg.split, cfg.annotations, cfg.holdout)
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
    log.info("probing %d videos", len(names))
    paths = [str(r.path) for r in index.records]
    probes = list(tqdm(pool.map(probe_or_reason, paths, chunksize=8), total=len(paths), desc="probe",
                       unit="video", disable=not cfg.progress, leave=False))
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
    if cfg.frame_stride < 1 or cfg.batch_size < 1 or cfg.frames_per_shard < 1:
        raise AdviseCacheError("--frame-stride, --batch-size and --frames-per-shard must be >= 1")
    k, n = cfg.shard
    t0 = time.perf_counter()
    pool = _pool(cfg.workers)
    try:
        _ensure_store(cfg, pool)
        ifm = create_ifm(cfg.model, cfg.pretrained, cfg.device, cfg.precision, cfg.seed)
        store = open_store(cfg.out, mode="a")
        key = cfg.name or ifm_key(cfg.model)
        arrays = store.add_ifm(key, ifm.info(), cfg.frame_stride, cfg.frames_per_shard, cfg.codec, cfg.dtype)
        table = store.videos
        mine = np.arange(len(table))[k::n]
        status = arrays.status()
        summary = ExtractSummary(str(cfg.out), key, len(mine), missing=len(store.source["missing"]))
        summary.already_done = int((status[mine] != PENDING).sum())
        todo = [int(v) for v in mine if status[v] == PENDING]
        summary.failed = [{"name": str(table.name[v]), "reason": str(arrays.reasons()[v])}
                          for v in mine if status[v] == FAILED]
        summary.already_done -= len(summary.failed)
        _run(cfg, ifm, arrays, table, todo, pool, summary)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    summary.seconds = time.perf_counter() - t0
    return summary


class _Writer:
    """A thread that stores each video's tokens and marks it done, a couple of videos behind
    the model. Its first error is raised in the main thread at the next hand-over."""

    def __init__(self, arrays, summary: ExtractSummary):
        self.arrays, self.summary = arrays, summary
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            video, tokens = item
            try:
                self.summary.bytes += self.arrays.write_video(video, tokens)
            except BaseException as e:
                self.error = e
                return
            self.summary.done += 1
            self.summary.frames += len(tokens)

    def put(self, item) -> None:
        """Queue a video for writing; raise the writer's error instead of waiting on a dead
        thread."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Let the writer finish what it was handed, then stop it."""
        while self.thread.is_alive():
            try:
                self.queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self.thread.join()


def _run(cfg, ifm, arrays, table, todo, pool, summary) -> None:
    writer = _Writer(arrays, summary)
    bar = tqdm(total=len(todo), desc=f"extract {summary.ifm}", unit="video", disable=not cfg.progress)
    pending: dict[Future, int] = {}
    ahead = max(2, 2 * cfg.workers)  # decoded videos waiting for the model
    try:
        for v in todo:
            if table.probe_error[v]:
                _fail(arrays, table, v, str(table.probe_error[v]), summary)
                bar.update()
                continue
            arrays.clear_video(v)
            pending[pool.submit(decode_or_reason, str(table.path[v]), ifm.spec, cfg.frame_stride)] = v
            if len(pending) >= ahead:
                _drain(cfg, ifm, arrays, table, pending, writer, summary, bar)
        while pending:
            _drain(cfg, ifm, arrays, table, pending, writer, summary, bar)
    finally:
        writer.close()
        bar.close()
    if writer.error is not None:
        raise writer.error


def _drain(cfg, ifm, arrays, table, pending, writer, summary, bar) -> None:
    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
    for fut in done:
        v = pending.pop(fut)
        result = fut.result()
        if isinstance(result, str):
            _fail(arrays, table, v, result, summary)
        elif len(result) != arrays.frames[v]:
            _fail(arrays, table, v, f"decoded {len(result)} frames, expected {arrays.frames[v]}", summary)
        else:
            tokens = np.concatenate([
                ifm.encode(result[i : i + cfg.batch_size]).to("cpu", torch.float32).numpy()
                for i in range(0, len(result), cfg.batch_size)
            ])
            writer.put((v, tokens))
            elapsed = bar.format_dict["elapsed"] or 1e-9
            bar.set_postfix_str(f"{summary.frames / elapsed:.1f} frames/s", refresh=False)
        bar.update()


def _fail(arrays, table, v, reason, summary) -> None:
    arrays.mark_failed(v, reason)
    summary.failed.append({"name": str(table.name[v]), "reason": reason})
    log.warning("failed %s: %s", table.name[v], reason)


def summary_dict(summary: ExtractSummary) -> dict:
    return asdict(summary)
