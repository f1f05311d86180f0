"""Loader and training-from-the-cache benchmark: the data path against its ceilings.

    .venv/bin/python pipelines/bench_loader.py                  # `make bench-loader`, ~5 min on 2 cores
    python3 pipelines/bench_loader.py --device cuda             # part of `make bench-gpu`
    .venv/bin/python pipelines/bench_loader.py --quick --no-write   # a look (and the smoke test)

A store of ViT-B-16-shaped tokens (14 x 14 x 768 float16 a frame, random values) is made once
in data/bench_loader/ and read from the page cache. One PRP plan (8 frames a clip) is read, in
rounds that alternate the readers, by: the ceiling (shards opened and indexes read beforehand,
then a thread pool `preadv`ing each frame into its slot of one torch-allocated (B, T, h, w, D)
buffer); `ClipLoader`, the consumer doing nothing; and the `ClipLoader` of commit 1aa8d33 (its
package from `git archive`, in a fresh process; it returns float32 batches). Then training,
in rounds alternating the modes: `train.train` from the store, timed through `on_step`, against
the same `train.train_step` on a batch already in memory; on CUDA also `--compile` and
`--preload gpu`, with peak GPU memory, the GPU synchronised at the first and last timed step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import (BENCHMARKS, REPO, child_main, describe_machine, load_1min, machine_table, num, pct,
                    run_child, say, table, token_store, write_section)

SHAPE = (14, 14, 768)  # ViT-B-16 at 224 px
FRAME_BYTES = int(np.prod(SHAPE)) * 2
BASELINE = "1aa8d33"
TARGET_CEILING, TARGET_BASELINE, TARGET_TRAIN = 0.8, 10.0, 0.9  # training: 0.8 on the CPU
WARMUP_BATCHES = 4  # untimed: threads starting, buffers touched for the first time


def ensure_store(work: Path, videos: int, frames: int, seed: int) -> Path:
    from advise_cache.store import DONE, open_store

    path = work / f"store-{videos}x{frames}.zarr"
    if (path / "zarr.json").is_file():
        if (open_store(path).ifm("ViT-B-16").status() == DONE).all():
            return path
        shutil.rmtree(path)
    say(f"writing {videos * frames * FRAME_BYTES / 1e9:.1f} GB of tokens into {path} (once)")
    work.mkdir(parents=True, exist_ok=True)
    token_store(path, "ViT-B-16", SHAPE, [frames] * videos, seed)
    return path


def warm_page_cache(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while chunk := f.read(1 << 24):
                    total += len(chunk)
    return total


def make_plan(store_path: Path, clips: int, seed: int):
    from advise_cache.loader import TokenSource
    from advise_cache.sampling import SamplerConfig, prp_epoch
    from advise_cache.store import open_store

    source = TokenSource(open_store(store_path))
    videos, _ = source.videos("train")
    sampler = SamplerConfig(clips_per_video=-(-clips // len(videos)))
    return source, prp_epoch(videos, source.frames[videos], sampler, seed, 0)[:clips]


# -- the readers -----------------------------------------------------------------------------
def ceiling(store_path: Path, plan, batch: int, threads: int) -> float:
    """Clips/s of the minimal reader over the plan (see the module's docstring)."""
    import torch

    from advise_cache.store import open_store

    per = 64
    arrays_dir = store_path / "ifm" / "ViT-B-16" / "tokens" / "c"
    offset = open_store(store_path).ifm("ViT-B-16").offset
    rows = np.stack([offset[r.video] + r.indices for r in plan])  # (clips, T)
    fds, index = {}, {}
    for s in np.unique(rows // per).tolist():
        fd = os.open(arrays_dir / str(s) / "0" / "0" / "0", os.O_RDONLY)
        fds[s] = fd
        index[s] = np.frombuffer(os.pread(fd, 16 * per, os.fstat(fd).st_size - 16 * per - 4),
                                 "<u8")[0::2].astype(np.int64)
    where = [(fds[int(r) // per], int(index[int(r) // per][int(r) % per])) for r in rows.reshape(-1)]
    T = rows.shape[1]
    # torch's allocator, like the loader's buffers: it asks for transparent huge pages, which
    # make the kernel's copy into the buffer ~1.6x faster here than into a plain numpy array.
    buf = torch.empty((batch * T, FRAME_BYTES), dtype=torch.uint8).numpy()

    def read(lo: int, hi: int, base: int) -> None:
        for i in range(lo, hi):
            fd, off = where[base + i]
            os.preadv(fd, [buf[i]], off)

    n = len(plan) // batch
    edges = np.linspace(0, batch * T, threads + 1).astype(int).tolist()
    with ThreadPoolExecutor(threads) as pool:
        for b in range(n):
            if b == WARMUP_BATCHES:
                t0 = time.perf_counter()
            list(pool.map(lambda e: read(e[0], e[1], b * batch * T), zip(edges[:-1], edges[1:])))
        seconds = time.perf_counter() - t0
    for fd in fds.values():
        os.close(fd)
    return (n - WARMUP_BATCHES) * batch / seconds


def loader_now(source, plan, batch: int, threads: int, device: str = "cpu") -> float:
    """Clips/s of ClipLoader over the plan, the consumer doing nothing."""
    import torch

    from advise_cache.loader import ClipLoader

    loader = ClipLoader(source, plan, batch, threads=threads, device=torch.device(device))
    for b, _ in enumerate(loader):
        if b == WARMUP_BATCHES - 1:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (len(loader) - WARMUP_BATCHES) * batch / (time.perf_counter() - t0)


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
    loader = ClipLoader(TokenSource(store.open_store(spec["store"])), reqs, spec["batch"], threads=spec["threads"])
    for b, _ in enumerate(loader):
        if b == WARMUP_BATCHES - 1:
            t0 = time.perf_counter()
    return {"clips_per_s": (len(loader) - WARMUP_BATCHES) * spec["batch"] / (time.perf_counter() - t0)}


# -- training --------------------------------------------------------------------------------
def timed_train(store_path: Path, args, preload: str = "none", compile_: bool = False) -> dict:
    """`train.train` from the store: clips/s over the timed steps, seen through `on_step`."""
    import torch

    from advise_cache.loader import TokenSource
    from advise_cache.sampling import SamplerConfig
    from advise_cache.store import open_store
    from advise_cache.train import train
    from advise_cache.train_config import TrainConfig

    cuda = args.device.startswith("cuda")
    b, warm, steps = args.train_batch, args.warmup, args.steps
    n_videos = len(TokenSource(open_store(store_path)).videos("train")[0])
    marks: dict[int, float] = {}

    def on_step(step, loss):
        if step in (warm, warm + steps):
            if cuda:
                torch.cuda.synchronize(args.device)
            marks[step] = time.perf_counter()

    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
    out = Path(tempfile.mkdtemp(prefix="bench_loader-run-"))
    cfg = TrainConfig(cache=store_path, out=out / "run", task="prp", epochs=1, batch_size=b, device=args.device,
                      progress=False, preload=preload, loader_threads=args.threads, log_every=10**9,
                      max_steps=warm + steps, compile=compile_, seed=args.seed,
                      sampler=SamplerConfig(clips_per_video=-(-(warm + steps + 2) * b // n_videos)))
    try:
        final = train(cfg, on_step=on_step)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"clips_per_s": steps * b / (marks[warm + steps] - marks[warm]), "wait": final["data_wait_frac"],
            "peak_gb": torch.cuda.max_memory_allocated(args.device) / 1e9 if cuda else None}


def resident_step(args) -> dict:
    """The same `train_step` on a batch already in memory, cast each step as `train.train` does."""
    import torch

    from advise_cache.models import TMMConfig, create_model
    from advise_cache.train import train_step
    from advise_cache.train_config import TrainConfig

    cuda = args.device.startswith("cuda")
    device, b = torch.device(args.device), args.train_batch
    layout = torch.channels_last_3d if cuda else torch.contiguous_format
    torch.manual_seed(args.seed)
    model = create_model(TMMConfig(in_dim=SHAPE[2]), 4).to(device, memory_format=layout)
    recipe = TrainConfig(cache=Path(), out=Path())
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                            **({"fused": True} if cuda else {}))
    x16 = torch.randn((b, 8, *SHAPE), device=device).half().permute(0, 4, 1, 2, 3)  # the loader's view
    y = torch.randint(0, 4, (b,), device=device)
    compute = torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        loss, _ = train_step(model, opt, x16.to(compute, memory_format=layout), y, recipe.label_smoothing,
                             torch.bfloat16 if cuda else None)
    loss.item()
    return {"clips_per_s": args.steps * b / (time.perf_counter() - t0), "wait": None,
            "peak_gb": torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None}


def training(store_path: Path, args) -> tuple[list[dict], float]:
    """Rounds alternating training from the store and the resident step; their rows and the
    median per-round ratio of the two."""
    modes = {"`train.train` from the store": lambda: timed_train(store_path, args),
             "`train_step` on a batch in memory": lambda: resident_step(args)}
    if args.device.startswith("cuda"):
        modes["`train.train --compile`"] = lambda: timed_train(store_path, args, compile_=True)
        modes["`train.train --preload gpu`"] = lambda: timed_train(store_path, args, preload="gpu")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for rnd in range(args.train_rounds):
        for mode in list(modes)[:: 1 if rnd % 2 == 0 else -1]:
            runs[mode].append(modes[mode]())
        say(f"training round {rnd + 1}: " + ", ".join(f"{num(v[-1]['clips_per_s'])}" for v in runs.values())
            + " clips/s")
    store_runs, resident_runs = list(runs.values())[:2]
    ratio = statistics.median(a["clips_per_s"] / r["clips_per_s"] for a, r in zip(store_runs, resident_runs))
    resident = statistics.median(r["clips_per_s"] for r in resident_runs)
    rows = []
    for mode, rs in runs.items():
        rate = statistics.median(r["clips_per_s"] for r in rs)
        waits = [r["wait"] for r in rs if r["wait"] is not None]
        peaks = [r["peak_gb"] for r in rs if r["peak_gb"] is not None]
        rows.append([mode, num(rate), pct(rate / resident), pct(statistics.median(waits)) if waits else "-",
                     f"{max(peaks):.2f}" if peaks else "-"])
    return rows, ratio


# -- the report ------------------------------------------------------------------------------
def render(facts, args, readers: list[list], ratios: dict, train_rows: list[list]) -> str:
    cuda = args.device.startswith("cuda")
    target_train = TARGET_TRAIN if cuda else TARGET_CEILING
    lines = [f"## Loader ({'GPU' if cuda else 'CPU'}; pipelines/bench_loader.py)", "",
             f"Written by `pipelines/bench_loader.py{' --device ' + args.device if cuda else ''}`.", "",
             *machine_table(facts), "",
             f"PRP clips of 8 frames of ViT-B-16-shaped float16 tokens ({FRAME_BYTES / 1e3:.0f} kB a frame, "
             f"{8 * FRAME_BYTES / 1e6:.2f} MB a clip) from the page cache; store of {args.videos} videos x "
             f"{args.frames} frames; batch {args.batch_size}, {args.threads} reading threads; {args.rounds} rounds, "
             "each reader once per round; medians over the rounds.", "",
             *table(["reader", "clips/s", "GB/s", "of the ceiling"], readers), "",
             f"- loader / ceiling: {pct(ratios['ceiling'])} (target >= {pct(TARGET_CEILING)}), "
             "median of the per-round ratios."]
    if "baseline" in ratios:
        lines.append(f"- loader / loader at {BASELINE}: {ratios['baseline']:.1f}x (target >= {TARGET_BASELINE:.0f}x).")
    lines += ["", f"Training: default TMM (1 block, hidden 256), PRP, {'bf16 autocast' if cuda else 'fp32'}, batch "
              f"{args.train_batch}, {args.steps} timed steps after {args.warmup}, {args.train_rounds} round(s) "
              "alternating the modes; medians over the rounds.", "",
              *table(["mode", "clips/s", "of in memory", "waiting for data", "peak GPU memory (GB)"], train_rows), "",
              f"- from the store / in memory: {pct(ratios['train'])}, median of the per-round ratios "
              f"(target >= {pct(target_train)}). Peak host memory of training is bench_efficiency.py's figure."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", type=Path, default=REPO / "data" / "bench_loader")
    p.add_argument("--videos", type=int, default=None, help="default: 96 (cpu), 256 (cuda)")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=None, help="readers' batch; default: 32 (cpu), 128 (cuda)")
    p.add_argument("--train-batch", type=int, default=None, help="training's batch; default: 8 (cpu), 128 (cuda)")
    p.add_argument("--threads", type=int, default=None, help="default: 4 (cpu), the cores (cuda)")
    p.add_argument("--clips", type=int, default=None, help="clips read by each reader per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--train-rounds", type=int, default=None, help="default: 3 (cpu), 1 (cuda)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps; default: 6 (cpu), 200 (cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps; default: 1 (cpu), 20 (cuda)")
    p.add_argument("--no-baseline", action="store_true", help=f"skip the loader at {BASELINE}")
    p.add_argument("--quick", action="store_true", help="a tiny store and one short round")
    p.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.videos = args.videos or (8 if args.quick else 256 if cuda else 96)
    args.frames = 16 if args.quick else args.frames
    args.batch_size = args.batch_size or (4 if args.quick else 128 if cuda else 32)
    args.train_batch = args.train_batch or (2 if args.quick else 128 if cuda else 8)
    args.threads = args.threads or (min(16, os.cpu_count() or 4) if cuda else 4)
    args.clips = args.clips or (40 if args.quick else 8192 if cuda else 2048)
    args.rounds = 1 if args.quick else args.rounds
    args.train_rounds = 1 if args.quick else args.train_rounds or (1 if cuda else 3)
    args.steps = 2 if args.quick else args.steps or (200 if cuda else 6)
    args.warmup = 1 if args.quick else args.warmup or (20 if cuda else 1)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(old_loader, json.loads(args.child))
    cuda = args.device.startswith("cuda")
    store_path = ensure_store(args.work, args.videos, args.frames, args.seed)
    say(f"warming the page cache: {warm_page_cache(store_path) / 1e9:.2f} GB read")
    facts = describe_machine(args.device, packages=("zarr",))
    source, plan = make_plan(store_path, args.clips, args.seed)
    plan = plan[: len(plan) // args.batch_size * args.batch_size]
    package = None if args.no_baseline or args.quick or cuda else baseline_package(args.work)  # a CPU figure
    rate: dict[str, list[float]] = {"ceiling": [], "loader": [], "baseline": []}
    for rnd in range(args.rounds):
        for name in ("ceiling", "loader")[:: 1 if rnd % 2 == 0 else -1]:  # neither always first
            rate[name].append(ceiling(store_path, plan, args.batch_size, args.threads) if name == "ceiling"
                              else loader_now(source, plan, args.batch_size, args.threads))
        if package is not None:  # the old loader is slow: an eighth of the plan is plenty
            base = plan[: max(2 * WARMUP_BATCHES, len(plan) // 8 // args.batch_size) * args.batch_size]
            plan_file = args.work / "plan.npz"
            np.savez(plan_file, video=np.array([r.video for r in base]), indices=np.stack([r.indices for r in base]),
                     label=np.array([r.label for r in base]))
            from advise_cache.store import open_store

            spec = {"store": str(store_path), "plan": str(plan_file), "batch": args.batch_size,
                    "threads": args.threads, "format": open_store(store_path).meta["format"]}
            rate["baseline"].append(run_child("bench_loader.py", spec, {"PYTHONPATH": str(package)})["clips_per_s"])
        say(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} clips/s" for k, v in rate.items() if v))
    names = {"ceiling": "ceiling: minimal preadv reader", "loader": "`ClipLoader` (this commit)",
             "baseline": f"`ClipLoader` at {BASELINE}"}
    readers = []
    for k, v in rate.items():
        if v:
            med = statistics.median(v)
            readers.append([names[k], num(med), f"{med * 8 * FRAME_BYTES / 1e9:.2f}",
                            pct(statistics.median(a / c for a, c in zip(v, rate["ceiling"])))])
    ratios = {"ceiling": statistics.median(a / c for a, c in zip(rate["loader"], rate["ceiling"]))}
    if rate["baseline"]:
        ratios["baseline"] = statistics.median(a / b for a, b in zip(rate["loader"], rate["baseline"]))
    if cuda:
        med = statistics.median(loader_now(source, plan, args.batch_size, args.threads, args.device)
                                for _ in range(args.rounds))
        readers.append(["`ClipLoader` to the GPU (pinned, side-stream copy)", num(med),
                        f"{med * 8 * FRAME_BYTES / 1e9:.2f}", pct(med / statistics.median(rate["ceiling"]))])
    train_rows, ratios["train"] = training(store_path, args)
    facts["load average (1 min) at end"] = load_1min()
    section = render(facts, args, readers, ratios, train_rows)
    print(section)
    if not args.no_write:
        write_section(BENCHMARKS, "bench_loader_gpu" if cuda else "bench_loader", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
