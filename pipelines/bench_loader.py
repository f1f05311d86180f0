"""Loader and training-from-the-cache benchmark: the data path against its ceilings.

    .venv/bin/python pipelines/bench_loader.py                  # `make bench-loader`, ~5 min on 2 cores
    python3 pipelines/bench_loader.py --device cuda             # part of `make bench-gpu`
    .venv/bin/python pipelines/bench_loader.py --quick --no-write   # a look (and the smoke test)

From a store of random ViT-B-16-shaped tokens in the page cache, rounds rotate the readers
of one PRP plan (each in every place in turn): a minimal `preadv` reader (the ceiling), `ClipLoader` (every frame checked
against its crc32c), the same `ClipLoader` with the checks turned off (what they cost), and the
`ClipLoader` of commit 1aa8d33 (from `git archive`, in a fresh process). Then, from a store of
the same bytes holding the centre crop and 2 augmented views of every frame (issue 21), rounds
alternate the minimal reader and `ClipLoader` over a plan whose clips each read their drawn view
(`--views-only`: that part alone, its own section). Then rounds alternate training modes
(bench_loader_train.py): `train.train` from the store (timed through `on_step`) and
`train.train_step` on a batch in memory; on CUDA also `--compile` and `--preload gpu`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_loader_train import training
from common import (
    REPO,
    child_main,
    clock,
    describe_machine,
    fill_in,
    heading,
    num,
    parser,
    pct,
    publish,
    run_child,
    say,
    table,
    token_store,
)

SHAPE = (14, 14, 768)  # ViT-B-16 at 224 px
FRAME_BYTES = int(np.prod(SHAPE)) * 2
BASELINE = "1aa8d33"
TARGET_CEILING, TARGET_BASELINE, TARGET_TRAIN = 0.8, 10.0, 0.9  # training: 0.8 on the CPU
TARGET_CHECKS = 0.9  # the loader checking every frame's crc32c / the loader not checking
WARMUP_BATCHES = 4  # untimed: threads starting, buffers touched for the first time
# Store videos x frames; readers' batch, clips a round, rounds; training batch, rounds, timed
# and untimed steps. A flag of the same name overrides one.
SIZES = {
    "cpu": {
        "videos": 96,
        "frames": 48,
        "batch_size": 32,
        "clips": 2048,
        "rounds": 8,  # a multiple of the 4 readers rotated
        "train_batch": 8,
        "train_rounds": 3,
        "steps": 6,
        "warmup": 1,
    },
    "cuda": {
        "videos": 256,
        "frames": 48,
        "batch_size": 128,
        "clips": 8192,
        "rounds": 5,
        "train_batch": 128,
        "train_rounds": 1,
        "steps": 200,
        "warmup": 20,
    },
    "quick": {
        "videos": 8,
        "frames": 16,
        "batch_size": 4,
        "clips": 40,
        "rounds": 1,
        "train_batch": 2,
        "train_rounds": 1,
        "steps": 2,
        "warmup": 1,
    },
}


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


def drain(loader, batch: int, device: str = "cpu") -> float:
    """Clips/s of a loader after its first WARMUP_BATCHES batches, the consumer doing nothing."""
    for b, _ in enumerate(loader):
        if b == WARMUP_BATCHES - 1:
            t0 = clock(device)
    return (len(loader) - WARMUP_BATCHES) * batch / (clock(device) - t0)


def loader_now(source, plan, batch: int, threads: int, device: str = "cpu") -> float:
    """Clips/s of ClipLoader over the plan."""
    import torch

    from advise_cache.loader import ClipLoader

    return drain(ClipLoader(source, plan, batch, threads=threads, device=torch.device(device)), batch, device)


def baseline_package(work: Path) -> Path | None:
    """The package as it was at BASELINE, unpacked once from git; None where git cannot."""
    target = work / f"baseline-{BASELINE}"
    if (target / "advise_cache" / "loader.py").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE, "advise_cache"], capture_output=True)
    except OSError:
        archive = None
    if archive is None or archive.returncode != 0:
        say(f"no git history here: the loader at {BASELINE} is left out")
        return None
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def old_loader(spec: dict) -> dict:
    """In a child whose advise_cache is BASELINE's: its ClipLoader over the saved plan."""
    import advise_cache.store as store
    from advise_cache.loader import ClipLoader, TokenSource
    from advise_cache.sampling import ClipRequest

    store.FORMAT = spec["format"]  # read the same store; the code that reads frames is 1aa8d33's
    plan = np.load(spec["plan"])
    reqs = [ClipRequest(int(v), idx, int(y)) for v, idx, y in zip(plan["video"], plan["indices"], plan["label"])]
    source = TokenSource(store.open_store(spec["store"]))
    return {"clips_per_s": drain(ClipLoader(source, reqs, spec["batch"], threads=spec["threads"]), spec["batch"])}


def baseline_spec(store_path: Path, plan, args) -> dict:
    """What the child timing the loader at BASELINE reads: an eighth of the plan (that loader is
    slow), saved beside the store, and the store's format."""
    from advise_cache.store import open_store

    base = plan[: max(2 * WARMUP_BATCHES, len(plan) // 8 // args.batch_size) * args.batch_size]
    plan_file = args.work / "plan.npz"
    np.savez(
        plan_file,
        video=np.array([r.video for r in base]),
        indices=np.stack([r.indices for r in base]),
        label=np.array([r.label for r in base]),
    )
    return {
        "store": str(store_path),
        "plan": str(plan_file),
        "batch": args.batch_size,
        "threads": args.threads,
        "format": open_store(store_path).meta["format"],
    }


def reader_row(name: str, clips_per_s: float, of_ceiling: float) -> list:
    return [name, num(clips_per_s), f"{clips_per_s * 8 * FRAME_BYTES / 1e9:.2f}", pct(of_ceiling)]


def reading(store_path: Path, args) -> tuple[list[list], dict]:
    """Rounds rotating the ceiling (without and with frame checks), the loader and the loader
    without frame checks (then the loader at BASELINE, on the CPU) over one plan; their rows and the median per-round ratios of
    the loader to the others. On CUDA also the loader delivering to the GPU."""
    cuda = args.device.startswith("cuda")
    source, plan = make_plan(store_path, args.clips, args.seed)
    plan = plan[: len(plan) // args.batch_size * args.batch_size]
    package = None if args.no_baseline or args.quick or cuda else baseline_package(args.work)  # a CPU figure
    spec = None if package is None else baseline_spec(store_path, plan, args)
    plain = unchecked(store_path)
    runs = {
        "ceiling": lambda: ceiling(store_path, plan, args.batch_size, args.threads),
        "checked ceiling": lambda: ceiling(store_path, plan, args.batch_size, args.threads, check=True),
        "loader": lambda: loader_now(source, plan, args.batch_size, args.threads),
        "unchecked": lambda: loader_now(plain, plan, args.batch_size, args.threads),
    }
    rate: dict[str, list[float]] = {name: [] for name in (*runs, "baseline")}
    names = list(runs)
    for rnd in range(args.rounds):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:  # each in every place in turn
            rate[name].append(runs[name]())
        if spec is not None:
            rate["baseline"].append(run_child("bench_loader.py", spec, {"PYTHONPATH": str(package)})["clips_per_s"])
        say(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} clips/s" for k, v in rate.items() if v))
    names = {
        "ceiling": "ceiling: minimal preadv reader",
        "checked ceiling": "the same, each frame's crc32c read and checked",
        "loader": "`ClipLoader` (this commit), every frame checked",
        "unchecked": "`ClipLoader`, frame crc32c checks off",
        "baseline": f"`ClipLoader` at {BASELINE}",
    }
    rows = [
        reader_row(names[k], statistics.median(v), statistics.median(a / c for a, c in zip(v, rate["ceiling"])))
        for k, v in rate.items()
        if v
    ]
    ratios = {"ceiling": statistics.median(a / c for a, c in zip(rate["loader"], rate["ceiling"]))}
    ratios["checks"] = statistics.median(a / u for a, u in zip(rate["loader"], rate["unchecked"]))
    ratios["checked ceiling"] = statistics.median(a / c for a, c in zip(rate["loader"], rate["checked ceiling"]))
    ratios["minimal checks"] = statistics.median(c / u for c, u in zip(rate["checked ceiling"], rate["ceiling"]))
    ratios["unchecked ceiling"] = statistics.median(u / c for u, c in zip(rate["unchecked"], rate["ceiling"]))
    if rate["baseline"]:
        ratios["baseline"] = statistics.median(a / b for a, b in zip(rate["loader"], rate["baseline"]))
    if cuda:
        med = statistics.median(
            loader_now(source, plan, args.batch_size, args.threads, args.device) for _ in range(args.rounds)
        )
        gpu = "`ClipLoader` to the GPU (pinned, side-stream copy)"
        rows.append(reader_row(gpu, med, med / statistics.median(rate["ceiling"])))
    return rows, ratios


def views_reading(store_path: Path, args) -> tuple[list[list], dict]:
    """`reading` over the store with views (its plan's clips each read their drawn view), without
    the old loader: rows and ratios of the same four readers."""
    return reading(store_path, argparse.Namespace(**{**vars(args), "no_baseline": True}))


def render_views(facts, args, argv, rows: list[list], ratios: dict, store_path: Path) -> str:
    from advise_cache.store import open_store

    a = open_store(store_path).ifm("ViT-B-16")
    lines = [
        *heading("Loader with views in the store, CPU", "bench_loader.py", argv, facts),
        f"PRP clips of 8 frames of ViT-B-16-shaped float16 tokens from the page cache; a store of {len(a.frames)} "
        f"videos x {int(a.frames[0])} frames x {len(a.views)} views (the centre crop and {len(a.views) - 1} "
        f"augmented views: the bytes of the loader section's store of {len(a.frames) * len(a.views)} videos x "
        f"{int(a.frames[0])} frames), each clip reading the view it draws "
        f"(`sampling.draw_views`, --views-train all: views {list(range(len(a.views)))}); "
        f"batch {args.batch_size}, {args.threads} reading threads; {args.rounds} rounds, each reader once per round "
        "(rotated); medians over the rounds.",
        "",
        *table(["reader", "clips/s", "GB/s", "of the ceiling"], rows),
        "",
        f"- loader / minimal reader of the same frames, both checking each frame's crc32c: "
        f"{pct(ratios['checked ceiling'])} (target >= {pct(TARGET_CEILING)}); the loader not checking / the "
        f"minimal reader not checking: {pct(ratios['unchecked ceiling'])}; the loader checking / the minimal "
        f"reader not checking: {pct(ratios['ceiling'])}. Medians of the per-round ratios.",
    ]
    return "\n".join(lines) + "\n"


# -- the report ------------------------------------------------------------------------------
def render(facts, args, argv, readers: list[list], ratios: dict, train_rows: list[list]) -> str:
    cuda = args.device.startswith("cuda")
    target_train = TARGET_TRAIN if cuda else TARGET_CEILING
    lines = [
        *heading(f"Loader, {'GPU' if cuda else 'CPU'}", "bench_loader.py", argv, facts),
        f"PRP clips of 8 frames of ViT-B-16-shaped float16 tokens ({FRAME_BYTES / 1e3:.0f} kB a frame, "
        f"{8 * FRAME_BYTES / 1e6:.2f} MB a clip) from the page cache; store of {args.videos} videos x "
        f"{args.frames} frames; batch {args.batch_size}, {args.threads} reading threads; {args.rounds} "
        "rounds, each reader once per round; medians over the rounds.",
        "",
        *table(["reader", "clips/s", "GB/s", "of the ceiling"], readers),
        "",
        f"- loader / ceiling: {pct(ratios['ceiling'])} (target >= {pct(TARGET_CEILING)}), "
        "median of the per-round ratios.",
        f"- loader checking every frame's crc32c / the same loader not checking: {pct(ratios['checks'])} "
        f"(target >= {pct(TARGET_CHECKS)}), median of the per-round ratios; the minimal reader checking / "
        f"not checking: {pct(ratios['minimal checks'])}; loader / minimal reader, both checking: "
        f"{pct(ratios['checked ceiling'])}.",
    ]
    if "baseline" in ratios:
        lines.append(f"- loader / loader at {BASELINE}: {ratios['baseline']:.1f}x (target >= {TARGET_BASELINE:.0f}x).")
    lines += [
        "",
        f"Training: default TMM (1 block, hidden 256), PRP, {'bf16 autocast' if cuda else 'fp32'}, "
        f"batch {args.train_batch}, {args.steps} timed steps after {args.warmup}, {args.train_rounds} "
        "round(s) alternating the modes; medians over the rounds.",
        "",
        *table(["mode", "clips/s", "of in memory", "waiting for data", "peak GPU memory (GB)"], train_rows),
        "",
        f"- from the store / in memory: {pct(ratios['train'])}, median of the per-round ratios "
        f"(target >= {pct(target_train)}). Peak host memory of training is bench_efficiency.py's "
        "figure.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--work", type=Path, default=REPO / "data" / "bench_loader", help="where the store lives")
    for key in SIZES["cpu"]:
        p.add_argument(
            "--" + key.replace("_", "-"),
            type=int,
            help=", ".join(f"{kind} {size[key]}" for kind, size in SIZES.items()),
        )
    p.add_argument("--threads", type=int, help="reading threads; default: 4 (cpu), the cores up to 16 (cuda)")
    p.add_argument("--no-baseline", action="store_true", help=f"skip the loader at {BASELINE}")
    p.add_argument("--quick", action="store_true", help="a tiny store and one short round")
    p.add_argument("--views-only", action="store_true", help="only the store with views (its own section)")
    args = p.parse_args(argv)
    if args.child:
        return child_main(old_loader, json.loads(args.child))
    cuda = args.device.startswith("cuda")
    fill_in(args, SIZES["quick" if args.quick else "cuda" if cuda else "cpu"])
    args.threads = args.threads or (min(16, os.cpu_count() or 4) if cuda else 4)
    facts = describe_machine(args.device, packages=("zarr",))
    if not cuda:  # the views row: a CPU figure, like the ceiling's
        views_path = ensure_views_store(args.work, args.videos, args.frames, args.seed)
        say(f"warming the page cache: {warm_page_cache(views_path) / 1e9:.2f} GB read")
        rows, ratios = views_reading(views_path, args)
        publish(render_views(facts, args, argv, rows, ratios, views_path), args, "bench_loader_views")
    if args.views_only:
        return 0
    store_path = ensure_store(args.work, args.videos, args.frames, args.seed)
    say(f"warming the page cache: {warm_page_cache(store_path) / 1e9:.2f} GB read")
    readers, ratios = reading(store_path, args)
    train_rows, ratios["train"] = training(store_path, args, SHAPE)
    section = render(facts, args, argv, readers, ratios, train_rows)
    return publish(section, args, "bench_loader_gpu" if cuda else "bench_loader")


if __name__ == "__main__":
    raise SystemExit(main())
