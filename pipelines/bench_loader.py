"""Loader benchmark: the training data path against the fastest reader of the same frames.

    .venv/bin/python pipelines/bench_loader.py                  # `make bench-loader`, ~3 min on 2 cores
    python3 pipelines/bench_loader.py --device cuda             # part of `make bench-gpu`
    .venv/bin/python pipelines/bench_loader.py --quick --no-write   # a look (and the smoke test)

A store of ViT-B-16-shaped tokens (14 x 14 x 768 float16 a frame, random values written
through the store API: no image model needed) is made once in data/bench_loader/ and read
from the page cache (the script reads it whole first). One PRP plan (`prp_epoch`, 8 frames a
clip) is read, in rounds that alternate the readers (and which goes first) so that a shared
machine's load falls on all of them alike, by:

- ceiling: the least a reader must do: every shard opened and its index read beforehand
  (untimed), then a thread pool that `preadv`s each frame of a batch into its slot of one
  preallocated (B, T, h, w, D) buffer, allocated by torch as the loader's are;
- loader: `ClipLoader` over a `TokenSource`, as training runs it, consumer doing nothing;
- loader @1aa8d33: the loader as it was at commit 1aa8d33 (`git archive` of that commit's
  package, run in a subprocess on the same store and plan; it returns float32 batches).

With `--device cuda` it also measures what the loader is for: `train.train` from the store
against the same `train_step` on a batch already on the GPU (the ceiling of training), and
`train.train --preload gpu`, each as clips/s over the same steps with the GPU synchronised
only at the first and last timed step, and the peak memory the GPU allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from benchmd import describe_machine, say, write_section

REPO = Path(__file__).resolve().parents[1]
SHAPE = (14, 14, 768)  # ViT-B-16 at 224 px
FRAME_BYTES = int(np.prod(SHAPE)) * 2
BASELINE = "1aa8d33"
TARGET_CEILING, TARGET_BASELINE, TARGET_RESIDENT = 0.8, 10.0, 0.9
WARMUP_BATCHES = 4  # untimed: threads starting, buffers touched for the first time


# -- the store -------------------------------------------------------------------------------
def ensure_store(work: Path, videos: int, frames: int, seed: int) -> Path:
    """A store of random ViT-B-16-shaped tokens, `videos` videos of `frames` frames each."""
    from advise_cache.store import DONE, create_store, open_store

    path = work / f"store-{videos}x{frames}.zarr"
    if (path / "zarr.json").is_file():
        arrays = open_store(path).ifm("ViT-B-16")
        if (arrays.status() == DONE).all():
            return path
        shutil.rmtree(path)
    say(f"writing {videos * frames * FRAME_BYTES / 1e9:.1f} GB of tokens into {path} (once)")
    work.mkdir(parents=True, exist_ok=True)
    table = {"name": [f"v{i:04d}" for i in range(videos)], "path": [f"v{i:04d}.avi" for i in range(videos)],
             "split": ["train"] * videos, "label": [i % 4 for i in range(videos)], "fps": [25.0] * videos,
             "source_frames": [frames] * videos, "probe_error": [""] * videos}
    create_store(path, "bench", str(work), ["a", "b", "c", "d"], table)
    store = open_store(path, mode="r+")
    info = {"model": "ViT-B-16", "pretrained": "none", "weights_sha256": None, "input_size": 224,
            "grid": list(SHAPE[:2]), "dim": SHAPE[2], "normalisation": None, "precision": "fp32"}
    arrays = store.add_ifm("ViT-B-16", info, frame_stride=1, frames_per_shard=64)
    rng = np.random.default_rng(seed)
    for v in range(videos):
        arrays.write_video(v, rng.standard_normal((frames, *SHAPE), dtype=np.float32).astype(np.float16))
    return path


def warm_page_cache(path: Path) -> int:
    """Read every file of the store once, so that the timed reads come from RAM."""
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
    per = 64
    arrays_dir = store_path / "ifm" / "ViT-B-16" / "tokens" / "c"
    from advise_cache.store import open_store

    offset = open_store(store_path).ifm("ViT-B-16").offset
    rows = np.stack([offset[r.video] + r.indices for r in plan])  # (clips, T)
    fds, index = {}, {}
    for s in np.unique(rows // per).tolist():
        fd = os.open(arrays_dir / str(s) / "0" / "0" / "0", os.O_RDONLY)
        size = os.fstat(fd).st_size
        fds[s] = fd
        index[s] = np.frombuffer(os.pread(fd, 16 * per, size - 16 * per - 4), "<u8")[0::2].astype(np.int64)
    where = [(fds[int(r) // per], int(index[int(r) // per][int(r) % per])) for r in rows.reshape(-1)]
    T = rows.shape[1]
    # torch's allocator, like the loader's buffers: it asks for transparent huge pages, which
    # make the kernel's copy into the buffer ~1.6x faster here than into a plain numpy array.
    import torch

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
    for b, (x, _) in enumerate(loader):
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


BASELINE_RUN = r"""
import json, sys, time
import numpy as np
import advise_cache.store as store
from advise_cache.loader import ClipLoader, TokenSource
from advise_cache.sampling import ClipRequest
spec = json.loads(sys.argv[1])
store.FORMAT = spec["format"]  # read the same store; the code that reads frames is 1aa8d33's
src = TokenSource(store.open_store(spec["store"]))
plan = np.load(spec["plan"])
reqs = [ClipRequest(int(v), idx, int(y)) for v, idx, y in zip(plan["video"], plan["indices"], plan["label"])]
loader = ClipLoader(src, reqs, spec["batch"], threads=spec["threads"])
for b, (x, y) in enumerate(loader):
    if b == spec["warmup"] - 1:
        t0 = time.perf_counter()
print(json.dumps({"clips_per_s": (len(loader) - spec["warmup"]) * spec["batch"] / (time.perf_counter() - t0)}))
"""


def loader_baseline(package: Path, store_path: Path, plan_file: Path, batch: int, threads: int) -> float:
    from advise_cache.store import open_store

    spec = {"store": str(store_path), "plan": str(plan_file), "batch": batch, "threads": threads,
            "format": open_store(store_path).meta["format"], "warmup": WARMUP_BATCHES}
    env = {**os.environ, "PYTHONPATH": str(package)}
    done = subprocess.run([sys.executable, "-c", BASELINE_RUN, json.dumps(spec)], capture_output=True,
                          text=True, env=env, cwd=package)
    if done.returncode != 0:
        raise SystemExit(f"the {BASELINE} loader failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["clips_per_s"]


# -- training on the GPU ---------------------------------------------------------------------
def gpu_training(store_path: Path, args) -> list[dict]:
    """train.train from the store, with --preload gpu, and train_step on a resident batch."""
    import torch

    from advise_cache.models import TMMConfig, create_model
    from advise_cache.sampling import SamplerConfig
    from advise_cache.train import TrainConfig, train, train_step

    from advise_cache.loader import TokenSource
    from advise_cache.store import open_store

    device = torch.device(args.device)
    b, warm, steps = args.batch_size, args.warmup, args.steps
    n_videos = len(TokenSource(open_store(store_path)).videos("train")[0])
    per_video = -(-(warm + steps + 2) * b // n_videos)  # one epoch holds every timed step
    rows = []
    modes = (("train from the store", "none", False), ("train from the store, --compile", "none", True),
             ("train, --preload gpu", "gpu", False))
    for mode, preload, compile_ in modes:
        marks: dict[int, float] = {}

        def on_step(step, loss):
            if step in (warm, warm + steps):
                torch.cuda.synchronize(device)
                marks[step] = time.perf_counter()

        torch.cuda.reset_peak_memory_stats(device)
        out = Path(tempfile.mkdtemp(prefix="bench_loader-run-"))
        cfg = TrainConfig(cache=store_path, out=out / "run", task="prp", epochs=1, batch_size=b,
                          device=args.device, progress=False, preload=preload, loader_threads=args.threads,
                          log_every=10**9, max_steps=warm + steps, compile=compile_,
                          sampler=SamplerConfig(clips_per_video=per_video))
        try:
            train(cfg, on_step=on_step)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rows.append({"mode": mode, "clips_per_s": steps * b / (marks[warm + steps] - marks[warm]),
                     "peak_gb": torch.cuda.max_memory_allocated(device) / 1e9})

    torch.manual_seed(0)
    model = create_model(TMMConfig(in_dim=SHAPE[2]), 4).to(device, memory_format=torch.channels_last_3d)
    recipe = TrainConfig(cache=Path(), out=Path())
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
    x16 = torch.randn((b, 8, *SHAPE), device=device).half().permute(0, 4, 1, 2, 3)  # the loader's view
    y = torch.randint(0, 4, (b,), device=device)
    torch.cuda.reset_peak_memory_stats(device)
    for i in range(warm + steps):
        if i == warm:
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        x = x16.to(torch.bfloat16, memory_format=torch.channels_last_3d)  # as train.train casts
        train_step(model, opt, x, y, recipe.label_smoothing, torch.bfloat16)
    torch.cuda.synchronize(device)
    rows.append({"mode": "train_step on a GPU-resident batch", "clips_per_s": steps * b / (time.perf_counter() - t0),
                 "peak_gb": torch.cuda.max_memory_allocated(device) / 1e9})
    return rows


# -- the report ------------------------------------------------------------------------------
def render(facts, args, table: list[dict], ratios: dict, gpu_rows: list[dict]) -> str:
    name = "GPU" if args.device.startswith("cuda") else "CPU"
    lines = [f"## Loader ({name}; pipelines/bench_loader.py)", "",
             f"Written by `pipelines/bench_loader.py{' --device ' + args.device if name == 'GPU' else ''}`.", "",
             "| machine | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in facts.items()], "",
             f"PRP clips of 8 frames of ViT-B-16-shaped float16 tokens ({FRAME_BYTES / 1e3:.0f} kB a frame, "
             f"{8 * FRAME_BYTES / 1e6:.2f} MB a clip) from the page cache; store of {args.videos} videos x "
             f"{args.frames} frames; batch {args.batch_size}, {args.threads} reading threads; {args.rounds} rounds, "
             "each reader once per round; medians over the rounds.", "",
             "| reader | clips/s | GB/s | of the ceiling |", "| --- | ---: | ---: | ---: |"]
    for row in table:
        lines.append(f"| {row['reader']} | {row['clips_per_s']:,.0f} | {row['gbps']:.2f} | "
                     f"{100 * row['of_ceiling']:.0f}% |")
    lines.append("")
    lines.append(f"- loader / ceiling: {100 * ratios['ceiling']:.0f}% (target >= {100 * TARGET_CEILING:.0f}%), "
                 "median of the per-round ratios.")
    if "baseline" in ratios:
        lines.append(f"- loader / loader at {BASELINE}: {ratios['baseline']:.1f}x (target >= {TARGET_BASELINE:.0f}x).")
    if gpu_rows:
        resident = next(r for r in gpu_rows if r["mode"].startswith("train_step"))["clips_per_s"]
        lines += ["", f"Training on the GPU: default TMM (1 block, hidden 256), PRP, bf16 autocast, batch "
                  f"{args.batch_size}, {args.steps} timed steps after {args.warmup}; the GPU synchronised at the "
                  "first and last timed step only.", "",
                  "| mode | clips/s | of resident | peak GPU memory (GB) |", "| --- | ---: | ---: | ---: |"]
        for r in gpu_rows:
            lines.append(f"| {r['mode']} | {r['clips_per_s']:,.0f} | {100 * r['clips_per_s'] / resident:.0f}% | "
                         f"{r['peak_gb']:.2f} |")
        lines.append("")
        lines.append(f"Target: training from the store >= {100 * TARGET_RESIDENT:.0f}% of the resident step.")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", type=Path, default=REPO / "data" / "bench_loader")
    p.add_argument("--videos", type=int, default=None, help="default: 96 (cpu), 256 (cuda)")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 (cpu), 128 (cuda)")
    p.add_argument("--threads", type=int, default=None, help="default: 4 (cpu), the cores (cuda)")
    p.add_argument("--clips", type=int, default=None, help="clips read by each reader per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=200, help="timed training steps (cuda)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--no-baseline", action="store_true", help=f"skip the loader at {BASELINE}")
    p.add_argument("--quick", action="store_true", help="a tiny store and one short round")
    p.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.videos = args.videos or (8 if args.quick else 256 if cuda else 96)
    args.frames = 16 if args.quick else args.frames
    args.batch_size = args.batch_size or (4 if args.quick else 128 if cuda else 32)
    args.threads = args.threads or (min(16, os.cpu_count() or 4) if cuda else 4)
    args.clips = args.clips or (40 if args.quick else 8192 if cuda else 2048)
    args.rounds = 1 if args.quick else args.rounds
    if args.quick:
        args.steps, args.warmup = 3, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    store_path = ensure_store(args.work, args.videos, args.frames, args.seed)
    say(f"warming the page cache: {warm_page_cache(store_path) / 1e9:.2f} GB read")
    facts = describe_machine(args.device, packages=("zarr",))
    source, plan = make_plan(store_path, args.clips, args.seed)
    plan = plan[: len(plan) // args.batch_size * args.batch_size]
    skip = args.no_baseline or args.quick or args.device.startswith("cuda")  # a CPU figure: not on GPU time
    package = None if skip else baseline_package(args.work)
    plan_file = args.work / "plan.npz"
    rate: dict[str, list[float]] = {"ceiling": [], "loader": [], "baseline": []}
    for rnd in range(args.rounds):
        order = ("ceiling", "loader") if rnd % 2 == 0 else ("loader", "ceiling")  # neither always first
        for name in order:
            if name == "ceiling":
                rate["ceiling"].append(ceiling(store_path, plan, args.batch_size, args.threads))
            else:
                rate["loader"].append(loader_now(source, plan, args.batch_size, args.threads))
        if package is not None:  # the old loader is slow: an eighth of the plan is plenty
            base_plan = plan[: max(2 * WARMUP_BATCHES, len(plan) // 8 // args.batch_size) * args.batch_size]
            np.savez(plan_file, video=np.array([r.video for r in base_plan]),
                     indices=np.stack([r.indices for r in base_plan]), label=np.array([r.label for r in base_plan]))
            rate["baseline"].append(loader_baseline(package, store_path, plan_file, args.batch_size, args.threads))
        say(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} clips/s" for k, v in rate.items() if v))
    rate = {k: v for k, v in rate.items() if v}
    table = []
    names = {"ceiling": "ceiling: minimal preadv reader", "loader": "`ClipLoader` (this commit)",
             "baseline": f"`ClipLoader` at {BASELINE}"}
    for k, v in rate.items():
        med = statistics.median(v)
        table.append({"reader": names[k], "clips_per_s": med, "gbps": med * 8 * FRAME_BYTES / 1e9,
                      "of_ceiling": statistics.median(a / c for a, c in zip(v, rate["ceiling"]))})
    ratios = {"ceiling": table[1]["of_ceiling"]}
    if rate.get("baseline"):
        ratios["baseline"] = statistics.median(a / b for a, b in zip(rate["loader"], rate["baseline"]))
    if args.device.startswith("cuda"):
        to_gpu = [loader_now(source, plan, args.batch_size, args.threads, args.device) for _ in range(args.rounds)]
        med = statistics.median(to_gpu)
        table.append({"reader": "`ClipLoader` to the GPU (pinned, side-stream copy)", "clips_per_s": med,
                      "gbps": med * 8 * FRAME_BYTES / 1e9, "of_ceiling": med / statistics.median(rate["ceiling"])})
    gpu_rows = gpu_training(store_path, args) if args.device.startswith("cuda") else []
    section = render(facts, args, table, ratios, gpu_rows)
    print(section)
    if not args.no_write:
        name = "bench_loader_gpu" if args.device.startswith("cuda") else "bench_loader"
        write_section(REPO / "BENCHMARKS.md", name, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
