"""Loader and training-from-the-cache benchmark: the data path against its ceilings.

    .venv/bin/python -m pipelines.benchmarks.loader                  # `make bench-loader`, ~5 min on 2 cores
    python3 -m pipelines.benchmarks.loader --device cuda             # part of `make bench-gpu`
    .venv/bin/python -m pipelines.benchmarks.loader --quick --no-write   # a look (and the smoke test)

From a store of random ViT-B-16-shaped tokens in the page cache, rounds rotate the readers
of one PRP plan (each in every place in turn): a minimal `preadv` reader (the ceiling), `ClipLoader` (every frame checked
against its crc32c) and the same `ClipLoader` with the checks turned off (what they cost); the
readers and stores are pipelines/readers.py's. Then, from a store of
the same bytes holding the centre crop and 2 augmented views of every frame (issue 21), rounds
alternate the minimal reader and `ClipLoader` over a plan whose clips each read their drawn view
(`--views-only`: that part alone, its own section). Then rounds alternate training modes
(loader_training.py): `train.train` from the store (timed through `on_step`) and
`train.train_step` on a batch in memory; on CUDA also `--compile` and `--preload gpu`.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

if not __package__:  # run as `python pipelines/NAME.py`: import the checkout's packages, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from pipelines.benchmarks.loader_training import training
from pipelines.common import REPO, describe_machine, num, parse_sized, parser, pct, say
from pipelines.readers import (
    FRAME_BYTES,
    SHAPE,
    ceiling,
    ensure_store,
    ensure_views_store,
    loader_now,
    make_plan,
    unchecked,
    warm_page_cache,
)
from pipelines.sections import Section, publish, section, table

TARGET_CEILING, TARGET_TRAIN = 0.8, 0.9  # training: 0.8 on the CPU
TARGET_CHECKS = 0.9  # the loader checking every frame's crc32c / the loader not checking
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


def reader_row(name: str, clips_per_s: float, of_ceiling: float) -> list:
    return [name, num(clips_per_s), f"{clips_per_s * 8 * FRAME_BYTES / 1e9:.2f}", pct(of_ceiling)]


def reading(store_path: Path, args) -> tuple[list[list], dict]:
    """Rounds rotating the ceiling (without and with frame checks), the loader and the loader
    without frame checks over one plan; their rows and the median per-round ratios of the loader
    to the others. On CUDA also the loader delivering to the GPU."""
    cuda = args.device.startswith("cuda")
    source, plan = make_plan(store_path, args.clips, args.seed)
    plan = plan[: len(plan) // args.batch_size * args.batch_size]
    plain = unchecked(store_path)
    runs = {
        "ceiling": lambda: ceiling(store_path, plan, args.batch_size, args.threads),
        "checked ceiling": lambda: ceiling(store_path, plan, args.batch_size, args.threads, check=True),
        "loader": lambda: loader_now(source, plan, args.batch_size, args.threads),
        "unchecked": lambda: loader_now(plain, plan, args.batch_size, args.threads),
    }
    rate: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for rnd in range(args.rounds):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:  # each in every place in turn
            rate[name].append(runs[name]())
        say(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} clips/s" for k, v in rate.items() if v))
    names = {
        "ceiling": "ceiling: minimal preadv reader",
        "checked ceiling": "the same, each frame's crc32c read and checked",
        "loader": "`ClipLoader` (this commit), every frame checked",
        "unchecked": "`ClipLoader`, frame crc32c checks off",
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
    if cuda:
        med = statistics.median(
            loader_now(source, plan, args.batch_size, args.threads, args.device) for _ in range(args.rounds)
        )
        gpu = "`ClipLoader` to the GPU (pinned, side-stream copy)"
        rows.append(reader_row(gpu, med, med / statistics.median(rate["ceiling"])))
    return rows, ratios


def render_views(facts, args, argv, rows: list[list], ratios: dict, store_path: Path) -> Section:
    from advise_cache.store import open_store

    a = open_store(store_path).ifm("ViT-B-16")
    lines = [
        f"PRP clips of 8 frames of ViT-B-16-shaped float16 tokens from the page cache; a store of {len(a.frames)} "
        f"videos x {int(a.frames[0])} frames x {len(a.views)} views (the centre crop and {len(a.views) - 1} "
        f"augmented views: the bytes of the loader section's store of {len(a.frames) * len(a.views)} videos x "
        f"{int(a.frames[0])} frames), each clip reading the view it draws "
        f"(`sampling.draw_views`, --views-train all: views {list(range(len(a.views)))}); "
        f"batch {args.batch_size}, {args.threads} reading threads; {args.rounds} rounds, each reader once per round "
        "(rotated); medians over the rounds.",
        "",
        table(["reader", "clips/s", "GB/s", "of the ceiling"], rows),
        "",
        f"- loader / minimal reader of the same frames, both checking each frame's crc32c: "
        f"{pct(ratios['checked ceiling'])} (target >= {pct(TARGET_CEILING)}); the loader not checking / the "
        f"minimal reader not checking: {pct(ratios['unchecked ceiling'])}; the loader checking / the minimal "
        f"reader not checking: {pct(ratios['ceiling'])}. Medians of the per-round ratios.",
    ]
    return section("bench_loader_views", "Loader with views in the store, CPU", __name__, argv, facts, lines)


# -- the report ------------------------------------------------------------------------------
def render(facts, args, argv, readers: list[list], ratios: dict, train_rows: list[list]) -> Section:
    cuda = args.device.startswith("cuda")
    target_train = TARGET_TRAIN if cuda else TARGET_CEILING
    lines = [
        f"PRP clips of 8 frames of ViT-B-16-shaped float16 tokens ({FRAME_BYTES / 1e3:.0f} kB a frame, "
        f"{8 * FRAME_BYTES / 1e6:.2f} MB a clip) from the page cache; store of {args.videos} videos x "
        f"{args.frames} frames; batch {args.batch_size}, {args.threads} reading threads; {args.rounds} "
        "rounds, each reader once per round; medians over the rounds.",
        "",
        table(["reader", "clips/s", "GB/s", "of the ceiling"], readers),
        "",
        f"- loader / ceiling: {pct(ratios['ceiling'])} (target >= {pct(TARGET_CEILING)}), "
        "median of the per-round ratios.",
        f"- loader checking every frame's crc32c / the same loader not checking: {pct(ratios['checks'])} "
        f"(target >= {pct(TARGET_CHECKS)}), median of the per-round ratios; the minimal reader checking / "
        f"not checking: {pct(ratios['minimal checks'])}; loader / minimal reader, both checking: "
        f"{pct(ratios['checked ceiling'])}.",
    ]
    lines += [
        "",
        f"Training: default TMM (1 block, hidden 256), PRP, {'bf16 autocast' if cuda else 'fp32'}, "
        f"batch {args.train_batch}, {args.steps} timed steps after {args.warmup}, {args.train_rounds} "
        "round(s) alternating the modes; medians over the rounds.",
        "",
        table(["mode", "clips/s", "of in memory", "waiting for data", "peak GPU memory (GB)"], train_rows),
        "",
        f"- from the store / in memory: {pct(ratios['train'])}, median of the per-round ratios "
        f"(target >= {pct(target_train)}). Peak host memory of training is benchmarks/efficiency.py's "
        "figure.",
    ]
    name, title = ("bench_loader_gpu", "Loader, GPU") if cuda else ("bench_loader", "Loader, CPU")
    return section(name, title, __name__, argv, facts, lines)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--work", type=Path, default=REPO / "data" / "bench_loader", help="where the store lives")
    p.add_argument("--threads", type=int, help="reading threads; default: 4 (cpu), the cores up to 16 (cuda)")
    p.add_argument("--views-only", action="store_true", help="only the store with views (its own section)")
    args = parse_sized(p, argv, SIZES, "a tiny store and one short round")
    cuda = args.device.startswith("cuda")
    args.threads = args.threads or (min(16, os.cpu_count() or 4) if cuda else 4)
    facts = describe_machine(args.device, packages=("zarr",))
    if not cuda:  # the views row: a CPU figure, like the ceiling's
        views_path = ensure_views_store(args.work, args.videos, args.frames, args.seed)
        say(f"warming the page cache: {warm_page_cache(views_path) / 1e9:.2f} GB read")
        rows, ratios = reading(views_path, args)  # its plan's clips each read their drawn view
        publish(render_views(facts, args, argv, rows, ratios, views_path), args)
    if args.views_only:
        return 0
    store_path = ensure_store(args.work, args.videos, args.frames, args.seed)
    say(f"warming the page cache: {warm_page_cache(store_path) / 1e9:.2f} GB read")
    readers, ratios = reading(store_path, args)
    train_rows, ratios["train"] = training(store_path, args, SHAPE)
    return publish(render(facts, args, argv, readers, ratios, train_rows), args)


if __name__ == "__main__":
    raise SystemExit(main())
