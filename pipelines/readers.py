"""The minimal readers and random-token stores the loader benchmarks share (benchmarks/loader.py,
benchmarks/bucket.py, the storage ablation): a store of ViT-B-16-shaped tokens made once, a PRP plan
over it, the minimal `preadv` reader (the ceiling) and `ClipLoader` timed over the same plan,
and the raw range-GET readers (obstore, s3fs) of the same frames in a bucket.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from advise_cache.testing import token_store
from pipelines.common import clock, say

SHAPE = (14, 14, 768)  # ViT-B-16 at 224 px
FRAME_BYTES = int(np.prod(SHAPE)) * 2
WARMUP_BATCHES = 4  # untimed: threads starting, buffers touched for the first time


def ensure_store(work: Path, videos: int, frames: int, seed: int) -> Path:
    from advise_cache.store import DONE, open_store

    path = work / f"store-{videos}x{frames}.zarr"
    if (path / "zarr.json").is_file():
        a = open_store(path).ifm("ViT-B-16")
        if (a.status() == DONE).all() and a.frame_checked:  # a store made before format 3 is made again
            return path
        shutil.rmtree(path)
    say(f"writing {videos * frames * FRAME_BYTES / 1e9:.1f} GB of tokens into {path} (once)")
    work.mkdir(parents=True, exist_ok=True)
    token_store(path, "ViT-B-16", SHAPE, [frames] * videos, seed)
    return path


VIEWS = 3  # the views store: the centre crop and 2 augmented views, a third of the videos (the same bytes)


def ensure_views_store(work: Path, videos: int, frames: int, seed: int) -> Path:
    from advise_cache.store import DONE, open_store

    videos = max(1, videos // VIEWS)
    path = work / f"store-{videos}x{frames}x{VIEWS}views.zarr"
    if (path / "zarr.json").is_file() and (open_store(path).ifm("ViT-B-16").status() == DONE).all():
        return path
    shutil.rmtree(path, ignore_errors=True)
    say(f"writing {VIEWS * videos * frames * FRAME_BYTES / 1e9:.1f} GB of tokens into {path} (once)")
    work.mkdir(parents=True, exist_ok=True)
    token_store(path, "ViT-B-16", SHAPE, [frames] * videos, seed, aug_views=VIEWS - 1)
    return path


def warm_page_cache(path: Path) -> int:
    """Bytes read: every file of the store once (a shard is 64 frames, about 19 MB)."""
    return sum(len(p.read_bytes()) for p in path.rglob("*") if p.is_file())


def make_plan(store_path: Path, clips: int, seed: int):
    """The source and a PRP plan of `clips` clips; in a store with views each clip reads the view
    it draws (train's `draw_views`, --views-train all)."""
    from advise_cache.loader import TokenSource
    from advise_cache.sampling import SamplerConfig, draw_views, prp_epoch
    from advise_cache.store import open_store

    source = TokenSource(open_store(store_path))
    videos, _ = source.videos("train")
    sampler = SamplerConfig(clips_per_video=-(-clips // len(videos)))
    plan = prp_epoch(videos, source.frames[videos], sampler, seed, 0)[:clips]
    return source, draw_views(plan, source.train_views("all"), seed, 0)


def unchecked(store_path: Path):
    """A TokenSource of the same store whose readers do not check the frames' crc32c."""
    from advise_cache.loader import TokenSource
    from advise_cache.store import open_store

    source = TokenSource(open_store(store_path))
    for reader in source._readers:  # the library always checks; only this comparison turns it off
        reader.check = False
    return source


# -- the readers -----------------------------------------------------------------------------
def ceiling(store_path: Path, plan, batch: int, threads: int, check: bool = False) -> float:
    """Clips/s of the minimal reader over the plan: shards opened and indexes read beforehand,
    then a thread pool `preadv`ing each frame into its slot of one (B*T, frame bytes) buffer;
    with `check`, its crc32c beside it too, and google_crc32c's value of the frame compared."""
    import google_crc32c
    import torch

    from advise_cache.store import open_store

    per = 64
    arrays_dir = store_path / "ifm" / "ViT-B-16" / "tokens" / "c"
    a = open_store(store_path).ifm("ViT-B-16")
    start = a.view_start([r.video for r in plan], [r.view for r in plan])  # the clip's view: offset without views
    rows = np.stack([s + r.indices for s, r in zip(start.tolist(), plan)])  # (clips, T)
    fds, index = {}, {}
    for s in np.unique(rows // per).tolist():
        fd = os.open(arrays_dir / str(s) / "0" / "0" / "0", os.O_RDONLY)
        fds[s] = fd
        index[s] = np.frombuffer(os.pread(fd, 16 * per, os.fstat(fd).st_size - 16 * per - 4), "<u8")[0::2].astype(
            np.int64
        )
    where = [(fds[int(r) // per], int(index[int(r) // per][int(r) % per])) for r in rows.reshape(-1)]
    T = rows.shape[1]
    # torch's allocator, like the loader's buffers: it asks for transparent huge pages, which
    # make the kernel's copy into the buffer ~1.6x faster here than into a plain numpy array.
    buf = torch.empty((batch * T, FRAME_BYTES), dtype=torch.uint8).numpy()
    crcs = np.empty(batch * T, "<u4")
    crc_bytes = crcs.view(np.uint8)

    def read(lo: int, hi: int, base: int) -> None:
        for i in range(lo, hi):
            fd, off = where[base + i]
            if not check:
                os.preadv(fd, [buf[i]], off)
            else:
                os.preadv(fd, [buf[i], crc_bytes[4 * i : 4 * i + 4]], off)
                if google_crc32c.value(buf[i]) != crcs[i]:
                    raise RuntimeError(f"frame at {off} fails its crc32c")

    n = len(plan) // batch
    edges = np.linspace(0, batch * T, threads + 1).astype(int).tolist()
    with ThreadPoolExecutor(threads) as pool:
        for b in range(n):
            if b == WARMUP_BATCHES:
                t0 = time.perf_counter()
            list(pool.map(lambda e, b=b: read(e[0], e[1], b * batch * T), zip(edges[:-1], edges[1:])))
        seconds = time.perf_counter() - t0
    for fd in fds.values():
        os.close(fd)
    return (n - WARMUP_BATCHES) * batch / seconds


def drain(loader, batch: int, device: str = "cpu", warmup: int = WARMUP_BATCHES) -> float:
    """Clips/s of a loader after its first `warmup` batches, the consumer doing nothing."""
    for b, _ in enumerate(loader):
        if b == warmup - 1:
            t0 = clock(device)
    return (len(loader) - warmup) * batch / (clock(device) - t0)


def loader_now(source, plan, batch: int, threads: int, device: str = "cpu") -> float:
    """Clips/s of ClipLoader over the plan."""
    import torch

    from advise_cache.loader import ClipLoader

    return drain(ClipLoader(source, plan, batch, threads=threads, device=torch.device(device)), batch, device)


# -- the raw range-GET readers of a store in a bucket (benchmarks/bucket.py) ---------------------
RANGE_WARMUP = 1  # batches left untimed: a first epoch has few


def rows_of(url: str, plan) -> np.ndarray:
    """The store rows of each clip of the plan (views aside): where its frames are."""
    from advise_cache.store import open_store

    offset = open_store(url).ifm("ViT-B-16").offset
    return np.stack([offset[r.video] + r.indices for r in plan])


def raw_obstore(url: str, rows: np.ndarray, batch: int) -> float:
    """Clips/s of the raw range-GET reader: frame f of a shard is at f x frame bytes (the writer
    lays chunks back to back), a shard's frames in one get_ranges, 16 shards in flight."""
    import obstore

    from advise_cache.storage import bucket, store_location

    store = bucket(store_location(url)).store
    T = rows.shape[1]
    buf = np.empty((batch * T, FRAME_BYTES), np.uint8)

    def fetch(job) -> None:
        s, at, frames = job
        got = obstore.get_ranges(
            store,
            f"ifm/ViT-B-16/tokens/c/{s}/0/0/0",
            starts=[f * FRAME_BYTES for f in frames],
            lengths=[FRAME_BYTES] * len(frames),
        )
        for i, data in zip(at, got):
            buf[i] = np.frombuffer(data, np.uint8)

    with ThreadPoolExecutor(16) as pool:
        return _timed(rows, batch, lambda r: list(pool.map(fetch, _by_shard(r))))


def raw_s3fs(url: str, rows: np.ndarray, batch: int) -> float | None:
    """The same reader through fsspec: s3fs's cat_ranges over every frame of a batch."""
    try:
        import s3fs
    except ImportError:
        return None
    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], key="bench", secret="bench")
    base = url.removeprefix("s3://")
    T = rows.shape[1]
    buf = np.empty((batch * T, FRAME_BYTES), np.uint8)

    def read(r: np.ndarray) -> None:
        paths = [f"{base}/ifm/ViT-B-16/tokens/c/{x // 64}/0/0/0" for x in r.tolist()]
        starts = [(x % 64) * FRAME_BYTES for x in r.tolist()]
        for i, data in enumerate(fs.cat_ranges(paths, starts, [s + FRAME_BYTES for s in starts])):
            buf[i] = np.frombuffer(data, np.uint8)

    return _timed(rows, batch, read)


def _by_shard(r: np.ndarray) -> list[tuple[int, list[int], list[int]]]:
    shards: dict[int, tuple[list[int], list[int]]] = {}
    for i, x in enumerate(r.tolist()):
        at, frames = shards.setdefault(x // 64, ([], []))
        at.append(i)
        frames.append(x % 64)
    return [(s, at, frames) for s, (at, frames) in shards.items()]


def _timed(rows: np.ndarray, batch: int, read) -> float:
    n = len(rows) // batch
    for b in range(n):
        if b == RANGE_WARMUP:
            t0 = time.perf_counter()
        read(rows[b * batch : (b + 1) * batch].reshape(-1))
    return (n - RANGE_WARMUP) * batch / (time.perf_counter() - t0)
