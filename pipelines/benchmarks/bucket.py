"""Training from a store in a bucket: the loader against raw readers, on an S3 emulator.

    .venv/bin/python -m pipelines.benchmarks.bucket                     # ~5 min on 2 cores
    .venv/bin/python -m pipelines.benchmarks.bucket --quick --no-write  # a look

Starts moto's S3 server on 127.0.0.1 (no other address is touched), copies a store of random
ViT-B-16-shaped tokens into it, and alternates rounds of readers over one PRP plan:
- the raw range-GET reader: obstore, every frame's bytes at their known place (no index read),
  a shard's frames in one `get_ranges`, 16 shards at a time, copied into one batch buffer;
  beside it the same reader through fsspec (s3fs `cat_ranges`), when s3fs is installed;
- `ClipLoader` on the bucket store: without a cache (range requests), and with a fresh
  `--local-cache` (first epoch: whole shards pulled), then the same plan again (cached epoch);
- the local raw `preadv` reader (benchmarks/loader.py's ceiling) over the same bytes on local disk.
The emulator is a Python server on the same cores, so absolute rates say little about a real
bucket; the ratios, measured side by side, are the point.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

if not __package__:  # run as `python pipelines/NAME.py`: import the checkout's packages, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from pipelines.common import REPO, describe_machine, num, parse_sized, parser, pct, say
from pipelines.readers import (
    FRAME_BYTES,
    RANGE_WARMUP,
    ceiling,
    drain,
    ensure_store,
    make_plan,
    raw_obstore,
    raw_s3fs,
    rows_of,
)
from pipelines.sections import Section, publish, section, table

BUCKET = "advise-bench"
TARGET_FIRST, TARGET_CACHED = 0.7, 0.8
# A first epoch: every video's shard is new to the reader, so the plan spans many videos (4 clips
# each, as the sampler's default) and one batch only is left untimed (threads starting).
SIZES = {
    "cpu": {"videos": 48, "frames": 64, "batch_size": 16, "clips": 192, "rounds": 3, "pairs": 3},
    "quick": {"videos": 4, "frames": 16, "batch_size": 4, "clips": 16, "rounds": 1, "pairs": 1},
}
LOCAL_WARMUP = 4  # readers.ceiling's: the cached epoch is timed the same way


@contextmanager
def emulator():
    """moto's S3 server on a free port of 127.0.0.1 with an empty bucket; the environment set
    for it as a user's would be (AWS_ENDPOINT_URL, keys); stopped on the way out."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1"
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"), timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit("moto's S3 server did not start (is moto[server] installed? `make venv`)")
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        from advise_cache import storage

        storage._BUCKETS.clear()  # clients of this endpoint


def upload(local: Path, url: str) -> int:
    """Copy a local store into the bucket, object for file; returns the bytes."""
    from advise_cache.storage import bucket, store_location

    b = bucket(store_location(url))
    files = [p for p in local.rglob("*") if p.is_file() and not p.name.startswith(".")]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: b.write(str(p.relative_to(local)), p.read_bytes()), files))
    return sum(p.stat().st_size for p in files)


def first_epoch(url: str, plan, batch: int, cache_dir: Path | None, threads: int = 4):
    """Clips/s of ClipLoader over the plan from the bucket store with a fresh reader (no shard
    index known); with `cache_dir`, into a fresh cache. Returns the rate and the source."""
    from advise_cache.loader import ClipLoader, TokenSource
    from advise_cache.remote_shards import shard_cache
    from advise_cache.store import open_store

    if cache_dir is not None:
        shutil.rmtree(cache_dir, ignore_errors=True)
    source = TokenSource(open_store(url, local_cache=shard_cache(cache_dir)))
    return drain(ClipLoader(source, plan, batch, threads=threads), batch, warmup=RANGE_WARMUP), source


def local_pairs(cached, local: Path, plan, batch: int, pairs: int, rnd: int) -> dict[str, list[float]]:
    """`pairs` passes each, alternating, over the plan three times: the loader on the cached
    bucket store, the loader on the local store, the local raw preadv reader (benchmarks/loader.py's
    ceiling, 4 batches untimed, as here) without and with each frame's crc32c checked (the loader
    always checks: store format 3)."""
    from advise_cache.loader import ClipLoader, TokenSource
    from advise_cache.store import open_store

    on_disk = TokenSource(open_store(local))
    longer = plan * 3
    out: dict[str, list[float]] = {"cached": [], "loader_local": [], "local": [], "local_checked": []}
    for k in range(pairs):
        for name in list(out)[:: 1 if (rnd + k) % 2 == 0 else -1]:
            if name.startswith("local"):
                out[name].append(ceiling(local, longer, batch, 4, check=name == "local_checked"))
            else:
                src = cached if name == "cached" else on_disk
                out[name].append(drain(ClipLoader(src, longer, batch, threads=4), batch, warmup=LOCAL_WARMUP))
    return out


def measure(args, local: Path, url: str) -> dict[str, list[float]]:
    """Rounds alternating the readers of a first epoch (the order reversed each round), each
    followed by passes over the local cache it filled; clips/s per reader."""
    _, plan = make_plan(local, args.clips, args.seed)
    plan = plan[: len(plan) // args.batch_size * args.batch_size]
    rows = rows_of(url, plan)
    cache_dir = Path(tempfile.mkdtemp(prefix="bench-bucket-cache-", dir=args.work))
    names = ("raw", "s3fs", "loader", "first", "cached", "loader_local", "local", "local_checked")
    rate: dict[str, list[float]] = {k: [] for k in names}
    for rnd in range(args.rounds):
        for name in ["raw", "s3fs", "loader", "first"][:: 1 if rnd % 2 == 0 else -1]:
            if name == "raw":
                rate["raw"].append(raw_obstore(url, rows, args.batch_size))
            elif name == "s3fs":
                got = raw_s3fs(url, rows, args.batch_size)
                if got is not None:
                    rate["s3fs"].append(got)
            elif name == "loader":
                rate["loader"].append(first_epoch(url, plan, args.batch_size, None)[0])
            else:
                got, cached = first_epoch(url, plan, args.batch_size, cache_dir)
                rate["first"].append(got)
        for k, v in local_pairs(cached, local, plan, args.batch_size, args.pairs, rnd).items():
            rate[k] += v
        say(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rate.items() if v) + " clips/s")
    shutil.rmtree(cache_dir, ignore_errors=True)
    return rate


def render(facts, args, argv, rate: dict[str, list[float]]) -> Section:
    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rate[a], rate[b]))

    names = {
        "raw": ("raw range-GET reader (obstore)", "raw"),
        "s3fs": ("raw range-GET reader (fsspec: s3fs)", "raw"),
        "loader": ("`ClipLoader`, bucket, no cache (range requests)", "raw"),
        "first": ("`ClipLoader`, bucket, first epoch into a fresh --local-cache", "raw"),
        "cached": ("`ClipLoader`, bucket, cached epoch (--local-cache)", "local"),
        "loader_local": ("`ClipLoader`, the same store on local disk", "local"),
        "local": ("local raw preadv reader (same bytes on local disk)", "local"),
        "local_checked": ("the same, each frame's crc32c checked", "local"),
    }
    rows = [
        [
            label,
            num(statistics.median(rate[k])),
            f"{statistics.median(rate[k]) * 8 * FRAME_BYTES / 1e9:.3f}",
            f"{pct(ratio(k, ref))} of {ref}",
        ]
        for k, (label, ref) in names.items()
        if rate[k]
    ]
    lines = [
        f"moto's S3 server on 127.0.0.1 (a Python server sharing the cores; a real bucket differs in "
        f"every absolute figure). Store of {args.videos} videos x {args.frames} frames of ViT-B-16-shaped "
        f"float16 tokens ({FRAME_BYTES / 1e3:.0f} kB a frame, 64 frames a shard object), PRP clips of 8 "
        f"frames, batch {args.batch_size}, {args.clips} clips a pass ({RANGE_WARMUP} batch untimed); "
        f"{args.rounds} rounds, the readers' order reversed every round, each round's first-epoch "
        f"readers then {args.pairs} alternating passes of the four local ones over the plan three times "
        "(4 batches untimed); medians of the ratios of each round (or pass).",
        "",
        table(["reader", "clips/s", "GB/s", "ratio"], rows),
        "",
        f"- first epoch from the bucket / raw range-GET reader: no cache {pct(ratio('loader', 'raw'))}, "
        f"pulling whole shards into --local-cache {pct(ratio('first', 'raw'))} (target >= {pct(TARGET_FIRST)}).",
        f"- cached epoch / local raw preadv reader: {pct(ratio('cached', 'local'))} (target >= {pct(TARGET_CACHED)}); "
        f"/ the same reader checking each frame's crc32c, as the loader does: {pct(ratio('cached', 'local_checked'))}.",
        f"- cached epoch / `ClipLoader` on the local store: {pct(ratio('cached', 'loader_local'))} (the cache's own "
        "cost; the loader's own against the raw reader is benchmarks/loader.py's figure).",
    ]
    if rate["s3fs"]:
        lines.append(
            f"- obstore / fsspec (s3fs), the raw readers: {ratio('raw', 's3fs'):.2f}x: why storage.py uses obstore."
        )
    return section("bench_bucket", "Training from a bucket (S3 emulator)", __name__, argv, facts, lines)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--work", type=Path, default=REPO / "data" / "bench_bucket", help="the local store and cache")
    args = parse_sized(p, argv, SIZES, "a tiny store, one round")
    local = ensure_store(args.work, args.videos, args.frames, args.seed)
    facts = describe_machine("cpu", packages=("zarr", "obstore", "moto", "s3fs"))
    with emulator():
        url = f"s3://{BUCKET}/{local.name}"
        say(f"copying {local} into {url}: {upload(local, url) / 1e9:.2f} GB")
        rate = measure(args, local, url)
    return publish(render(facts, args, argv, rate), args)


if __name__ == "__main__":
    raise SystemExit(main())
