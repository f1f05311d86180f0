"""The store an extraction writes into: probing the videos, creating the store or checking the
one at --out, and refusing one the disk cannot hold, before anything is written.

Probing opens every video and decodes its first frame (`video.probe_or_reason`): on a large
dataset it is minutes of work. Under torchrun each rank probes only its share of the videos and
the ranks exchange their results over a gloo process group (torchrun's MASTER_ADDR/PORT),
which lives only for this step; rank 0 alone creates the store. Without a rendezvous to join
(RANK and WORLD_SIZE set by hand), every process probes every video as before.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .configs import ExtractConfig
from .errors import AdviseCacheError, StoreError
from .plan import SizePlan, check_fits, size_plan
from .store import PENDING, check_creatable, create_store, open_store, store_exists
from .video import init_worker, probe_or_reason, sigint_blocked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks that probe together (rank 0 of 1: alone)."""

    rank: int = 0
    world: int = 1

    def gather(self, mine: list) -> list[list]:
        """Every rank's `mine`, by rank (collective)."""
        if self.world == 1:
            return [mine]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, mine)
        return out

    def first_error(self, error: AdviseCacheError | None) -> None:
        """Raise on every rank the first error any rank found (collective)."""
        found = self.gather([None if error is None else (type(error).__name__, str(error))])
        if error is not None:
            raise error
        first = next((f[0] for f in found if f[0] is not None), None)
        if first is not None:
            raise (StoreError if first[0] == "StoreError" else AdviseCacheError)(first[1])


def join_group() -> Group:
    """A gloo group of this torchrun job's ranks for the probing step, or a group of one when
    there is no job or no rendezvous address to join."""
    env = os.environ
    if not ("RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env and "MASTER_PORT" in env):
        return Group()
    world = int(env["WORLD_SIZE"])
    if world == 1:
        return Group()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return Group(dist.get_rank(), dist.get_world_size())


def leave_group(group: Group) -> None:
    if group.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def probe_all(paths: list[str], workers: int, progress: bool, decoder: str = "decord") -> list[tuple[int, float, str]]:
    """(frames, fps, reason) of each video, probed by `workers` processes (0: in line)."""
    pool = None
    probe = functools.partial(probe_or_reason, decoder=decoder)
    try:
        if workers <= 0:
            results = map(probe, paths)
        else:
            # spawn: forking a process that has already started torch's thread pools can deadlock.
            pool = ProcessPoolExecutor(
                min(workers, max(1, len(paths))), mp_context=mp.get_context("spawn"), initializer=init_worker
            )
            with sigint_blocked():  # the pool starts its processes (and its manager thread) here
                results = pool.map(probe, paths, chunksize=8)
        return list(tqdm(results, total=len(paths), desc="probe", unit="video", disable=not progress, leave=False))
    finally:
        if pool is not None:  # its workers ignore Ctrl-C: they finish the probe in hand, then go
            pool.shutdown(wait=True, cancel_futures=True)


def probe_shared(paths: list[str], workers: int, progress: bool, group: Group, decoder: str = "decord") -> list:
    """`probe_all`, each rank of `group` probing every world-th video from its rank."""
    if group.world == 1:
        return probe_all(paths, workers, progress, decoder)
    mine = probe_all(paths[group.rank :: group.world], workers, progress and group.rank == 0, decoder)
    parts = group.gather(mine)
    out: list = [None] * len(paths)
    for r, part in enumerate(parts):
        out[r :: group.world] = part
    return out


def existing_store(cfg: ExtractConfig, index):
    """The store at --out, checked to hold this dataset's video list; None when there is none."""
    if not store_exists(cfg.out):
        return None
    store = open_store(cfg.out)
    names = [r.name for r in index.records]
    splits = [r.split for r in index.records]
    if (store.videos.name.tolist(), store.videos.split.tolist(), store.dataset) != (names, splits, index.dataset):
        raise StoreError(
            f"{cfg.out} was built from another video list ({store.dataset} split {store.source['split']},"
            f" {len(store.videos)} videos; now {index.dataset} split {index.official_split}, {len(names)}"
            " videos). Use a new --out"
        )
    return store


def probe_table(cfg: ExtractConfig, index, workers: int, group: Group = Group()) -> dict:
    """The video table of a new store: every video probed for its frames and rate."""
    check_creatable(cfg.out)
    log.info("probing %d videos", len(index.records))
    paths = [str(r.path) for r in index.records]
    probes = probe_shared(paths, workers, cfg.progress, group, cfg.decoder)
    return {
        "name": [r.name for r in index.records],
        "path": paths,
        "split": [r.split for r in index.records],
        "label": [r.label for r in index.records],
        "fps": [p[1] for p in probes],
        "source_frames": [p[0] for p in probes],
        "probe_error": [p[2] for p in probes],
    }


def store_or_table(cfg: ExtractConfig, index, workers: int, group: Group = Group()):
    """(the existing store, None), or (None, the probed table of the store to create). In a
    group, rank 0's view of --out decides for every rank, so all of them probe or none does."""
    error, store = None, None
    try:
        store = existing_store(cfg, index)
        if store is None:
            check_creatable(cfg.out)
    except AdviseCacheError as e:
        error = e
    group.first_error(error)
    new = group.gather(store is None)[0]
    if not new:
        return (store if store is not None else open_store(cfg.out)), None
    return None, probe_table(cfg, index, workers, group)


def written(store, key: str, cfg: ExtractConfig) -> np.ndarray:
    """Videos this run will not write: done or failed in a group of the same stride and dtype."""
    if key not in store.ifm_keys():
        return np.zeros(len(store.videos), bool)
    a = store.ifm(key)
    if (a.meta.frame_stride, a.meta.dtype) != (cfg.frame_stride, cfg.dtype):
        return np.zeros(len(store.videos), bool)  # add_ifm refuses this group anyway
    return a.status() != PENDING


def plan_store(cfg: ExtractConfig, key: str, grid, dim: int, store, table: dict | None) -> SizePlan:
    frames = store.videos.source_frames if table is None else np.asarray(table["source_frames"], np.int64)
    done = written(store, key, cfg) if table is None else np.zeros(len(frames), bool)
    views = 1 + cfg.aug_views + cfg.crops
    return size_plan(
        cfg.out, cfg.model, grid, dim, frames, done, cfg.frame_stride, cfg.dtype, cfg.frames_per_shard, cfg.codec, views
    )


def ensure_store(cfg: ExtractConfig, index, workers: int, key: str, grid, dim: int, group: Group = Group()) -> None:
    """Create the store unless it exists (rank 0 of a group: the others wait for it); either
    way refuse, before writing, one that cannot fit."""
    store, table = store_or_table(cfg, index, workers, group)
    error = None
    if group.rank == 0:
        try:
            check_fits(plan_store(cfg, key, grid, dim, store, table))
            if table is not None:
                create_store(cfg.out, index.dataset, str(index.root), index.classes, table, index.source())
        except AdviseCacheError as e:
            error = e
        except OSError as e:  # reported on every rank, not left to a hang
            error = StoreError(f"cannot write the store {cfg.out}: {e.strerror or e}")
    group.first_error(error)
