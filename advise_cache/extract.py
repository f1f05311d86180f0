"""Stage 1: decode every video, run the frozen image model once per frame, fill the store.

    advise-cache extract ucf101 --root /data/ucf101 --out ucf101.zarr
    torchrun --nproc_per_node 8 -m advise_cache.cli extract ucf101 --root ... --out ...

Three stages run at once so the model never waits (extract_stages.py holds them; this
module plans the run, claims the videos and wires the stages together):

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
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .configs import PRECISIONS, ExtractConfig, check_seed
from .datasets import load_dataset
from .errors import AdviseCacheError, StoreError, WeightsError, first_line
from .extract_probe import ensure_store, join_group, leave_group, plan_store, store_or_table
from .extract_stages import InlineDecoder, ModelLoop, PoolDecoder, Writer
from .ifm import check_weights, create_ifm
from .pixels import RESIZES
from .plan import SizePlan
from .runtime import cores_per_process, local_rank, make_current, resolve_device
from .storage import store_location
from .store import DONE, FAILED, PENDING, SAFE_KEY, open_store
from .video import FramePlan, decoder_available
from .views import REFERENCE_SIZE, view_specs

log = logging.getLogger(__name__)

EXIT_SOME_FAILED = 3  # documented in the README: the run finished but some videos failed
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


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
    rank: int = 0  # under torchrun: not 0 on the ranks whose part rank 0's summary includes

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
            f" (of {self.videos})"
            + (f"; {self.busy} left to another process extracting them now" if self.busy else "")
            + (
                f"; {self.missing} listed videos missing on disk (`advise-cache info` names them)"
                if self.missing
                else ""
            ),
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


def default_workers(device: torch.device) -> int:
    """Decode processes: this process's share of the node's cores (under torchrun, the usable
    cores divided by LOCAL_WORLD_SIZE), less what the main process needs (on CUDA one core for
    the model loop and one for the writer threads; on the CPU the model's threads share every
    core anyway, so one is kept back)."""
    return max(1, cores_per_process() - (2 if device.type == "cuda" else 1))


def resolve_launch(shard: tuple[int, int], device: str) -> tuple[tuple[int, int], str]:
    """This process's part of the videos and its device. Under torchrun (RANK, WORLD_SIZE,
    LOCAL_RANK in the environment) rank r of W takes part K*W + r of N*W, so `--shard K/N`
    composes with it, and CUDA device LOCAL_RANK; no process group is needed."""
    env = os.environ
    k, n = shard
    if "RANK" in env and "WORLD_SIZE" in env:
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        except ValueError as e:
            raise AdviseCacheError(f"RANK/WORLD_SIZE must be integers ({e})") from e
        if not 0 <= rank < world:
            raise AdviseCacheError(f"RANK {rank} is not within WORLD_SIZE {world}")
        cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        local = local_rank(cuda)
        if cuda:
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


# -- main side -----------------------------------------------------------------------------
def _check_flags(cfg: ExtractConfig) -> str:
    """The numbers and the key a user passes, checked before any work; returns the key."""
    if cfg.frame_stride < 1 or (cfg.batch_size is not None and cfg.batch_size < 1) or cfg.frames_per_shard < 1:
        raise AdviseCacheError("--frame-stride, --batch-size and --frames-per-shard must be >= 1")
    if cfg.writers < 1:
        raise AdviseCacheError("--writers must be >= 1")
    if cfg.resize not in RESIZES:
        raise AdviseCacheError(f"--resize {cfg.resize!r}: choose from {', '.join(RESIZES)}")
    why = decoder_available(cfg.decoder)
    if why:
        raise AdviseCacheError(why)
    if cfg.precision not in PRECISIONS:
        raise AdviseCacheError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    check_seed(cfg.seed)
    view_specs(cfg.aug_views, cfg.crops, cfg.seed, REFERENCE_SIZE)  # the counts, checked
    if (cfg.aug_views or cfg.crops) and cfg.resize != "tensor":
        raise AdviseCacheError(
            "--aug-views and --crops need --resize tensor: --resize pil hands over centre crops only"
        )
    key = ifm_key(cfg.model) if cfg.name is None else cfg.name
    if not SAFE_KEY.fullmatch(key):
        raise AdviseCacheError(
            f"--name {key!r}: use letters, digits, '-', '_' and '.', not starting with "
            "'.' (it names a folder inside the store)"
        )
    if isinstance(cfg.out, Path) and cfg.out.exists() and not cfg.out.is_dir():
        raise StoreError(f"--out {cfg.out} is a file, not a store")
    return key


def plan_extraction(cfg: ExtractConfig) -> SizePlan:
    """`extract --dry-run`: the store's size for these settings and the free space where it
    goes, and the image model's rate measured on random crops. Probes the videos (or reads an
    existing store's table), loads no weights (random ones of the same architecture cost the
    same), writes nothing."""
    cfg = replace(cfg, out=store_location(cfg.out, "--out"))  # a bucket URL, or a path
    key = _check_flags(cfg)
    index = load_dataset(cfg.dataset, cfg.root, cfg.split, cfg.annotations, cfg.holdout)
    # Random weights: the grid, the width and the compute of the real ones.
    ifm = create_ifm(cfg.model, "none", resolve_launch(cfg.shard, cfg.device)[1], cfg.precision, cfg.seed)
    workers = default_workers(torch.device("cpu")) if cfg.workers is None else max(0, cfg.workers)
    store, table = store_or_table(cfg, index, workers)
    plan = plan_store(cfg, key, ifm.grid, ifm.dim, store, table)
    batch = cfg.batch_size or default_batch(ifm.device)  # the batch extraction runs: the rate it gets
    try:
        check_weights(cfg.model, cfg.pretrained)
        weights = ""
    except WeightsError as e:  # the plan stands; the run would not
        weights = str(e)
    return replace(plan, model_fps=model_rate(ifm, batch), device=str(ifm.device), weights=weights)


def default_batch(device: torch.device) -> int:
    """Frames a model call takes when --batch-size is not given."""
    return 256 if device.type == "cuda" else 64


def model_rate(ifm, batch: int, repeats: int = 2) -> float:
    """Frames/s of the image model alone on random crops: a warm-up batch, then `repeats` timed."""
    crops = torch.randint(0, 256, (batch, ifm.spec.size, ifm.spec.size, 3), dtype=torch.uint8)
    ifm.encode(crops, dtype=torch.float16)
    if ifm.device.type == "cuda":
        torch.cuda.synchronize(ifm.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = ifm.encode(crops, dtype=torch.float16)
    out.cpu()  # waits for the device
    return repeats * batch / (time.perf_counter() - t0)


def extract_videos(cfg: ExtractConfig) -> ExtractSummary:
    """Run stage 1 for this process's share of the videos; return what it did."""
    cfg = replace(cfg, out=store_location(cfg.out, "--out"))  # a bucket URL, or a path
    key = _check_flags(cfg)
    t0 = time.perf_counter()
    (k, n), device = resolve_launch(cfg.shard, cfg.device)
    index = load_dataset(cfg.dataset, cfg.root, cfg.split, cfg.annotations, cfg.holdout)
    # The weights before any store: a model that cannot be built leaves nothing behind;
    # weights not on this machine are told before open_clip's slow import.
    check_weights(cfg.model, cfg.pretrained)
    make_current(resolve_device(device))
    ifm = create_ifm(cfg.model, cfg.pretrained, device, cfg.precision, cfg.seed)
    workers = default_workers(ifm.device) if cfg.workers is None else max(0, cfg.workers)
    batch = cfg.batch_size or default_batch(ifm.device)
    # Under torchrun the ranks probe the videos together, and rank 0 reports for all of them.
    group = join_group()
    try:
        summary = _extract(cfg, key, index, ifm, workers, batch, (k, n), group)
        summary.seconds = time.perf_counter() - t0
        return job_summary(summary, group)
    finally:
        leave_group(group)


def job_summary(summary: ExtractSummary, group) -> ExtractSummary:
    """Under torchrun, rank 0's summary covers every rank's part (one report for the job; the
    others return theirs marked `rank`, which the CLI does not print); alone, `summary`."""
    if group.world == 1:
        return summary
    parts = [ExtractSummary(**{**d, "shard": tuple(d["shard"])}) for (d,) in group.gather([asdict(summary)])]
    if group.rank:
        return replace(summary, rank=group.rank)
    first = parts[0]
    total = {
        f: sum(getattr(p, f) for p in parts) for f in ("videos", "done", "already_done", "busy", "frames", "bytes")
    }
    return replace(
        first,
        **total,
        failed=[f for p in parts for f in p.failed],
        seconds=max(p.seconds for p in parts),
        loop_seconds=max(p.loop_seconds for p in parts),
        steady_seconds=max(p.steady_seconds for p in parts),
        workers=sum(p.workers for p in parts),
        shard=(first.shard[0] // group.world, first.shard[1] // group.world),
        device=f"{group.world} ranks ({', '.join(p.device for p in parts)})",
    )


def _extract(cfg, key, index, ifm, workers, batch, part, group) -> ExtractSummary:
    k, n = part
    try:
        ensure_store(cfg, index, workers, key, ifm.grid, ifm.dim, group)
        store = open_store(cfg.out, mode="a")
        info = {**ifm.info(), "resize": cfg.resize, "decoder": cfg.decoder}
        views = view_specs(cfg.aug_views, cfg.crops, cfg.seed, ifm.spec.size)
        arrays = store.add_ifm(key, info, cfg.frame_stride, cfg.frames_per_shard, cfg.codec, cfg.dtype, views)
    except OSError as e:  # a read-only folder, a full disk
        raise StoreError(f"cannot write the store {cfg.out}: {e.strerror or first_line(e)}") from e
    for what in ("resize", "decoder"):  # tokens of other pixels would mix into one group
        if getattr(arrays.meta, what) != info[what]:
            log.warning(
                "%s was extracted with --%s %s; this run uses %s: its videos' tokens differ slightly",
                key,
                what,
                getattr(arrays.meta, what),
                info[what],
            )
    table = store.videos
    mine = np.arange(len(table))[k::n]
    summary = ExtractSummary(
        str(cfg.out),
        key,
        len(mine),
        workers=workers,
        batch_size=batch,
        shard=(k, n),
        device=str(ifm.device),
        missing=len(store.source["missing"]),
    )
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
        summary.failed = [{"name": str(table.name[v]), "reason": str(reasons[v])} for v in mine if status[v] == FAILED]
        summary.already_done = int((status[mine] == DONE).sum())
        if summary.busy:
            log.warning("%d videos are being extracted by another process; this one leaves them to it", summary.busy)
        _run(cfg, ifm, arrays, table, todo, workers, batch, summary)
    except OSError as e:
        if e.errno not in _STORAGE_ERRORS:
            raise
        # What is done stays done (a video is marked done only once durable); the rest resumes.
        raise StoreError(
            f"writing {cfg.out} failed: {e.strerror}; fix that and run the same command again to continue"
        ) from e
    finally:
        arrays.release()
    return summary


def _repair(arrays, table, done: list[int]) -> None:
    """Done videos whose shard files are missing or cut go back to pending, to be written
    again by this run (what `verify` reports as damaged)."""
    for v, why in arrays.damaged(done):
        if arrays.claim([v], state=DONE):
            log.warning("%s was marked done but %s; extracting it again", table.name[v], why)
            arrays.reopen(v)
            arrays.release([v])


def _run(cfg, ifm, arrays, table, todo, workers, batch, summary) -> None:
    bar = tqdm(total=len(todo), desc=f"extract {summary.ifm}", unit="video", disable=not cfg.progress)
    failed_now: list[int] = []
    tasks = []
    plan = FramePlan(ifm.spec, cfg.frame_stride, cfg.resize, cfg.decoder)
    for v in todo:
        if table.probe_error[v]:
            _fail(arrays, table, v, str(table.probe_error[v]), summary)
            bar.update()
            continue
        arrays.clear_video(v)
        tasks.append((v, str(table.path[v]), plan, int(arrays.frames[v])))
    if not tasks:
        bar.close()
        return
    loop = None
    t0, last_stored = time.perf_counter(), [0.0]

    def stored(video: int) -> None:
        last_stored[0] = time.perf_counter()
        bar.update()

    writer = Writer(arrays, summary, cfg.writers, release=lambda buf: loop.release(buf), on_done=stored)
    for task in tasks:
        writer.expect(task[0], arrays.shards_of(task[0]))
    loop = ModelLoop(ifm, batch, arrays, writer.put, arrays.views)
    decoder = (
        InlineDecoder(tasks)
        if workers <= 0
        else PoolDecoder(tasks, min(workers, len(tasks)), ifm.spec.size, cfg.resize)
    )
    ok = False
    try:
        remaining = len(tasks)
        while remaining:
            event = decoder.next()
            if event[0] == "frames":
                _, video, start, frames, slot = event
                if video not in loop.dropped:
                    loop.add(video, start, frames)
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
