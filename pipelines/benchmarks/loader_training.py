"""The training half of pipelines/benchmarks/loader.py: `train.train` from the store against the same
`train.train_step` on a batch already in memory (on CUDA also `--compile` and `--preload gpu`),
in rounds alternating the modes."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pipelines.common import clock, num, pct, say


def timed_train(store_path: Path, args, preload: str = "none", compile_: bool = False) -> dict:
    """`train.train` from the store: clips/s over the timed steps, seen through `on_step`."""
    import torch

    from advise_cache.configs import TrainConfig
    from advise_cache.loader import TokenSource
    from advise_cache.sampling import SamplerConfig
    from advise_cache.store import open_store
    from advise_cache.train import train

    cuda = args.device.startswith("cuda")
    b, warm, steps = args.train_batch, args.warmup, args.steps
    n_videos = len(TokenSource(open_store(store_path)).videos("train")[0])
    marks: dict[int, float] = {}

    def on_step(step, loss):
        if step in (warm, warm + steps):
            marks[step] = clock(args.device)

    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
    out = Path(tempfile.mkdtemp(prefix="bench_loader-run-"))
    cfg = TrainConfig(
        cache=store_path,
        out=out / "run",
        task="prp",
        epochs=1,
        batch_size=b,
        device=args.device,
        progress=False,
        preload=preload,
        loader_threads=args.threads,
        log_every=10**9,
        max_steps=warm + steps,
        compile=compile_,
        seed=args.seed,
        sampler=SamplerConfig(clips_per_video=-(-(warm + steps + 2) * b // n_videos)),
    )
    try:
        final = train(cfg, on_step=on_step)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "clips_per_s": steps * b / (marks[warm + steps] - marks[warm]),
        "wait": final["data_wait_frac"],
        "peak_gb": torch.cuda.max_memory_allocated(args.device) / 1e9 if cuda else None,
    }


def resident_step(args, shape: tuple[int, int, int]) -> dict:
    """The same `train_step` on a batch already in memory, cast each step as `train.train` does."""
    import torch

    from advise_cache.configs import TMMConfig, TrainConfig
    from advise_cache.models import create_model
    from advise_cache.train import train_step

    cuda = args.device.startswith("cuda")
    device, b = torch.device(args.device), args.train_batch
    layout = torch.channels_last_3d if cuda else torch.contiguous_format
    torch.manual_seed(args.seed)
    model = create_model(TMMConfig(in_dim=shape[2]), 4).to(device, memory_format=layout)
    recipe = TrainConfig(cache=Path(), out=Path())
    opt = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, **({"fused": True} if cuda else {})
    )
    x16 = torch.randn((b, 8, *shape), device=device).half().permute(0, 4, 1, 2, 3)  # the loader's view
    y = torch.randint(0, 4, (b,), device=device)
    compute = torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            t0 = clock(device)
        loss, _ = train_step(
            model,
            opt,
            x16.to(compute, memory_format=layout),
            y,
            recipe.label_smoothing,
            torch.bfloat16 if cuda else None,
        )
    loss.item()
    return {
        "clips_per_s": args.steps * b / (time.perf_counter() - t0),
        "wait": None,
        "peak_gb": torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None,
    }


def training(store_path: Path, args, shape: tuple[int, int, int]) -> tuple[list[dict], float]:
    """Rounds alternating training from the store and the resident step; their rows and the
    median per-round ratio of the two."""
    modes = {
        "`train.train` from the store": lambda: timed_train(store_path, args),
        "`train_step` on a batch in memory": lambda: resident_step(args, shape),
    }
    if args.device.startswith("cuda"):
        modes["`train.train --compile`"] = lambda: timed_train(store_path, args, compile_=True)
        modes["`train.train --preload gpu`"] = lambda: timed_train(store_path, args, preload="gpu")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for rnd in range(args.train_rounds):
        for mode in list(modes)[:: 1 if rnd % 2 == 0 else -1]:
            runs[mode].append(modes[mode]())
        rates = ", ".join(f"{num(v[-1]['clips_per_s'])}" for v in runs.values())
        say(f"training round {rnd + 1}: {rates} clips/s")
    store_runs, resident_runs = list(runs.values())[:2]
    ratio = statistics.median(a["clips_per_s"] / r["clips_per_s"] for a, r in zip(store_runs, resident_runs))
    resident = statistics.median(r["clips_per_s"] for r in resident_runs)
    rows = []
    for mode, rs in runs.items():
        rate = statistics.median(r["clips_per_s"] for r in rs)
        waits = [r["wait"] for r in rs if r["wait"] is not None]
        peaks = [r["peak_gb"] for r in rs if r["peak_gb"] is not None]
        rows.append(
            [
                mode,
                num(rate),
                pct(rate / resident),
                pct(statistics.median(waits)) if waits else "-",
                f"{max(peaks):.2f}" if peaks else "-",
            ]
        )
    return rows, ratio
