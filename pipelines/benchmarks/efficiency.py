"""Training efficiency, the paper's Table 6: AdViSe online, AdViSe from the cache, R3D-50. This
script owns the "online vs from the cache" figure.

    .venv/bin/python -m pipelines.benchmarks.efficiency    # make bench-efficiency; ~15 min on 2 CPU cores
    python3 -m pipelines.benchmarks.efficiency --device cuda --batch-size 32 --min-time 5 --rounds 1
    .venv/bin/python -m pipelines.benchmarks.efficiency --configs cached-B16,r3d50 --no-write

Per configuration: trainable parameters, forward MACs per clip (`models.forward_cost`), peak
memory and seconds per `train.train_step` plus producing its batch (frozen IFM on the frames,
`ClipLoader` from a store of random tokens, or R3D-50 on pixels; decoding left out).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

if not __package__:  # run as `python pipelines/NAME.py`: import the checkout's packages, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from advise_cache.testing import token_store
from pipelines.benchmarks.efficiency_runs import CONFIGS, RATES, SIZE, TOKENS, measure
from pipelines.common import child_main, describe_machine, module_of, parser, run_child, say
from pipelines.sections import Section, publish, section, table

STORE_VIDEOS, STORE_FRAMES = 4, 48  # each generated store
PAPER = {"time": 3.4, "memory": 8.2}  # R3D-50 over AdViSe online (the IFM run every step), Table 6
# Table 6's R3D-50 FLOPs over ours (41.74 G MACs for 8 x 224 x 224), as issue 20 read the paper.
PAPER_R3D_RATIO = 3.0
# glibc unmaps blocks of 64 KiB or more when freed: the peak RSS follows live tensors
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": "0"}


def r3d50_conventions() -> list[tuple[str, float]]:
    """R3D-50 forward GMACs per clip under the counting conventions that could explain Table 6's
    figure, each counted by `forward_cost` on the meta device (instant): (convention, GMACs)."""
    import torch
    from torch import nn

    from advise_cache.models import R3D50, forward_cost

    class Block(nn.Module):  # Hara et al.'s bottleneck: 1x1x1, 3x3x3, 1x1x1, projection shortcut
        def __init__(self, d_in: int, width: int, stride):
            super().__init__()
            convs = [nn.Conv3d(d_in, width, 1), nn.Conv3d(width, width, 3, stride, 1), nn.Conv3d(width, 4 * width, 1)]
            self.convs = nn.Sequential(*convs)
            same = d_in == 4 * width and stride == 1
            self.shortcut = nn.Identity() if same else nn.Conv3d(d_in, 4 * width, 1, stride)

        def forward(self, x):
            return self.convs(x) + self.shortcut(x)

    def r3d_333() -> nn.Module:  # Hara et al.'s 3D ResNet-50 without temporal down-sampling
        layers: list[nn.Module] = [nn.Conv3d(3, 64, 7, stride=(1, 2, 2), padding=3), nn.MaxPool3d(3, (1, 2, 2), 1)]
        d_in = 64
        for i, (width, depth) in enumerate(zip(R3D50.widths, R3D50.depths)):
            for j in range(depth):
                layers.append(Block(d_in, width, (1, 2, 2) if j == 0 and i > 0 else 1))
                d_in = 4 * width
        return nn.Sequential(*layers)

    def macs(model: nn.Module, t: int = 8, size: int = SIZE) -> float:
        return forward_cost(model, (3, t, size, size))["macs"] / 1e9

    with torch.device("meta"):
        slow, k3, hara = R3D50(RATES), R3D50(RATES, stem_temporal_kernel=3, temporal_kernels=(3, 3, 3, 3)), r3d_333()
        ours = macs(slow)
        return [
            ("ours: slow-only R3D-50, 8 x 224 x 224, MACs", ours),
            ("the same counted as FLOPs (2 per MAC)", 2 * ours),
            ("16 frames", macs(slow, t=16)),
            ("256 x 256 pixels", macs(slow, size=256)),
            ("temporal kernel 3 in every block and the stem", macs(k3)),
            ("3 x 3 x 3 middle convs and a 7 x 7 x 7 stem (Hara et al.)", macs(hara)),
            ("that, counted as FLOPs", 2 * macs(hara)),
            ("three crops of one clip (the code's test views)", 3 * ours),
        ]


def gb(x: float) -> str:
    return f"{x / 1e9:.2f}"


def render(machine: dict, rows: list[dict], args, argv) -> Section:
    cuda = args.device.startswith("cuda")
    out = [
        f"One PRP training iteration (`train.train_step`: forward, backward, AdamW step) on a batch of "
        f"{args.batch_size} clips of {args.frames} frames at {SIZE} x {SIZE}; {args.warmup} warm-up "
        f"iteration(s), then the median of the timed ones (at least {args.iters}, more until "
        f"{args.min_time:g} s, at most {args.max_iters}); {args.threads} torch threads. Each "
        f"configuration in a fresh process, {args.rounds} round(s) of all of them in turn, the best round "
        "kept" + ("." if cuda else "; memory in another process (below)."),
        "",
        table(
            [
                "configuration",
                "image model",
                "trainable params (M)",
                "forward GMACs per clip (IFM + model)",
                f"{'peak GPU memory allocated' if cuda else 'peak memory added'} (GB)",
                "s / iteration",
                "every round's s / iteration",
            ],
            [
                [
                    r["method"],
                    r["ifm"] or "—",
                    f"{r['params'] / 1e6:.2f}",
                    f"{r['macs'] / 1e9:.1f} ({r['macs_ifm'] / 1e9:.1f} + {r['macs_model'] / 1e9:.2f})"
                    if r["macs_ifm"]
                    else f"{r['macs'] / 1e9:.2f}",
                    gb(r["memory"]),
                    f"{r['seconds']:.3f}",
                    f"{', '.join(f'{s:.3f}' for s in r['rounds'])} ({r['iters']} timed)",
                ]
                for r in rows
            ],
            left=2,
        ),
        "",
        'GMACs: 10^9 multiply-accumulates (the paper\'s "FLOPs"). Decoding is left out (pixels made '
        "once), so the ratios below understate what the cache saves.",
    ]
    if not cuda:
        out += [
            f"Peak memory added: peak resident memory minus that after the imports "
            f"({gb(statistics.mean(r['baseline_rss'] for r in rows))} GB), in a second process per "
            "configuration (warm-up and one iteration) with MALLOC_MMAP_THRESHOLD_=65536 and "
            "MALLOC_ARENA_MAX=2. With the default allocator (the timing process): "
            + ", ".join(f"{r['config']} {gb(r['memory_timing_run'])}" for r in rows)
            + " GB."
        ]
    by = {r["config"]: r for r in rows}

    def versus(a: dict, b: dict) -> str:
        return f"{a['seconds'] / b['seconds']:.1f}x the time per iteration, {a['memory'] / b['memory']:.1f}x the memory"

    out.append("")
    for ifm, tag in (("ViT-B-16", "B16"), ("ViT-L-14", "L14")):
        r3d, cached, online = by.get("r3d50"), by.get(f"cached-{tag}"), by.get(f"online-{tag}")
        if r3d and online:
            out.append(
                f"- R3D-50 vs AdViSe online ({ifm} run every step, the paper's comparison): {versus(r3d, online)}; "
                f"the paper: {PAPER['time']}x the time and {PAPER['memory']}x the memory."
            )
        if online and cached:
            out.append(
                f"- The cache's own gain, AdViSe online vs from the cache ({ifm}): {versus(online, cached)}, "
                f"{online['macs'] / cached['macs']:.0f}x the forward MACs."
            )
        if r3d and cached:
            out.append(f"- R3D-50 vs AdViSe from the cache ({ifm} tokens): {versus(r3d, cached)}.")
    name = "bench_efficiency" + ("_gpu" if cuda else "")
    return section(name, "Training efficiency, the paper's Table 6", __name__, argv, machine, out + r3d50_note())


def r3d50_note() -> list[str]:
    """Table 6's R3D-50 FLOPs against ours under each counting convention (`r3d50_conventions`)."""
    rows = r3d50_conventions()
    ours = rows[0][1]
    return [
        "",
        f"Table 6's R3D-50 FLOPs are about {PAPER_R3D_RATIO:.1f}x our count (as issue 20 read the paper); "
        "what each counting convention gives, by `forward_cost`:",
        "",
        table(["R3D-50 counted as", "GMACs", "over ours"], [[n, f"{m:.2f}", f"{m / ours:.2f}x"] for n, m in rows]),
        "",
        "No architecture or counting convention we tried lands on it except three views of one clip, which "
        "Table 6 does not mention: the gap is unexplained. It does not touch the time and memory ratios, "
        "which are measured.",
    ]


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    for flag, kind, default, what in (
        ("batch-size", int, 2, "clips per iteration"),
        ("frames", int, 8, "frames per clip"),
        ("warmup", int, 1, "iterations before timing"),
        ("iters", int, 2, "timed iterations, at least"),
        ("min-time", float, 20.0, "time more iterations until this many seconds"),
        ("max-iters", int, 30, "timed iterations, at most"),
        ("rounds", int, 2, "timing runs of every configuration; the best is kept"),
        ("threads", int, os.cpu_count() or 1, "torch threads"),
    ):
        p.add_argument(f"--{flag}", type=kind, default=default, help=what)
    p.add_argument("--save-json", type=Path, help="also write the raw measurements here")
    args = p.parse_args(argv)
    if args.child:
        return child_main(measure, json.loads(args.child))
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if unknown := [c for c in configs if c not in CONFIGS]:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    machine = describe_machine(args.device, packages=("zarr", "open_clip_torch"))
    work = Path(tempfile.mkdtemp(prefix="bench_efficiency-"))
    keys = ("device", "batch_size", "frames", "warmup", "iters", "min_time", "max_iters", "threads", "seed")
    spec = {k: getattr(args, k) for k in keys}
    rows: dict[str, dict] = {}
    try:
        stores = {}
        for name in configs:
            ifm_name = CONFIGS[name][1]
            if name.startswith("cached") and ifm_name not in stores:
                grid, dim = TOKENS[ifm_name]
                stores[ifm_name] = str(work / f"{ifm_name}.zarr")
                token_store(
                    Path(stores[ifm_name]), ifm_name, (grid, grid, dim), [STORE_FRAMES] * STORE_VIDEOS, args.seed
                )
        specs = {name: {**spec, "config": name, "store": stores.get(CONFIGS[name][1])} for name in configs}
        for _ in range(args.rounds):  # every configuration in turn; each keeps its best round
            for name in configs:
                say(f"[{name}] timing run: starting in a fresh process")
                row = run_child(module_of(__name__), specs[name])
                best = rows.get(name)
                row["rounds"] = [*(best["rounds"] if best else []), row["seconds"]]
                if best is None or row["seconds"] < best["seconds"]:
                    rows[name] = row
                else:
                    best["rounds"] = row["rounds"]
        if not args.device.startswith("cuda"):
            for name in configs:
                say(f"[{name}] memory run: starting in a fresh process")
                once = {**specs[name], "iters": 1, "min_time": 0.0, "max_iters": 1}
                mem = run_child(module_of(__name__), once, MALLOC_ENV)
                rows[name]["memory_timing_run"], rows[name]["memory"] = rows[name]["memory"], mem["memory"]
                rows[name]["baseline_rss"] = mem["baseline_rss"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [rows[name] for name in configs]
    if args.save_json:
        args.save_json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return publish(render(machine, rows, args, argv), args)


if __name__ == "__main__":
    sys.exit(main())
