"""One configuration of the Table 6 benchmark (benchmarks/efficiency.py) built and trained for a few
steps in its own process: R3D-50 on pixels, the TMM behind the frozen image model run every step
(AdViSe online), or the TMM from a store of random tokens (from the cache).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from pipelines.common import clock, memory, say

SIZE, RATES = 224, 4  # pixels a side; PRP's playback rates (the classes)
CONFIGS = {  # name: (method, image model or None)
    "online-B16": ("AdViSe online (IFM every step)", "ViT-B-16"),
    "online-L14": ("AdViSe online (IFM every step)", "ViT-L-14"),
    "cached-B16": ("AdViSe from the cache", "ViT-B-16"),
    "cached-L14": ("AdViSe from the cache", "ViT-L-14"),
    "r3d50": ("R3D-50 end to end (pixels)", None),
}
TOKENS = {"ViT-B-16": (14, 768), "ViT-L-14": (16, 1024)}  # grid and width at 224 px


def _pixels_r3d(spec: dict, device, labels):
    """R3D-50 on pixels: the model, its forward MACs, and the same batch of pixels every step."""
    import torch

    from advise_cache.models import R3D50, forward_cost

    b, t = spec["batch_size"], spec["frames"]
    model = R3D50(RATES).to(device)
    with torch.device("meta"):
        macs_model = forward_cost(R3D50(RATES), (3, t, SIZE, SIZE))["macs"]
    pixels = torch.randn(b, 3, t, SIZE, SIZE, device=device)  # as the IFM sees them, made once

    def batches():
        while True:
            yield pixels, labels

    return model, macs_model, 0, batches


def _online_tmm(spec: dict, device, labels, rng):
    """The IFM run on every step's frames, then the TMM (the paper's online baseline): the TMM,
    the MACs of each, and batches of fresh tokens."""
    import numpy as np
    import torch

    from advise_cache.configs import TMMConfig
    from advise_cache.ifm import create_ifm
    from advise_cache.models import create_model, forward_cost, model_stats

    ifm_name = CONFIGS[spec["config"]][1]
    (grid, dim), b, t = TOKENS[ifm_name], spec["batch_size"], spec["frames"]
    cfg = TMMConfig(in_dim=dim)
    model = create_model(cfg, RATES).to(device)
    ifm = create_ifm(ifm_name, "none", str(device), "auto", spec["seed"])
    if tuple(ifm.grid) != (grid, grid) or ifm.dim != dim:
        raise SystemExit(f"{ifm_name} gives {ifm.grid} x {ifm.dim} tokens, expected {grid} x {dim}")
    macs_ifm = t * forward_cost(ifm.backbone, (3, SIZE, SIZE))["macs"]
    frames = torch.from_numpy(rng.integers(0, 256, (b * t, SIZE, SIZE, 3), dtype=np.uint8))

    def batches():
        while True:
            with torch.no_grad():
                tokens = ifm.encode(frames)  # (B*T, h, w, D), frozen: no graph
            yield tokens.reshape(b, t, grid, grid, dim).permute(0, 4, 1, 2, 3), labels

    return model, model_stats(cfg, RATES, clip=(t, grid, grid, dim))["macs"], macs_ifm, batches


def _cached_tmm(spec: dict, device):
    """The TMM trained from the store (the cache): the TMM, its MACs, and the loader's batches
    of a PRP plan long enough for every step."""
    import torch

    from advise_cache.configs import TMMConfig
    from advise_cache.loader import ClipLoader, TokenSource
    from advise_cache.models import create_model, model_stats
    from advise_cache.sampling import SamplerConfig, prp_epoch
    from advise_cache.store import open_store

    ifm_name = CONFIGS[spec["config"]][1]
    (grid, dim), b, t = TOKENS[ifm_name], spec["batch_size"], spec["frames"]
    cfg = TMMConfig(in_dim=dim)
    model = create_model(cfg, RATES).to(device)
    source = TokenSource(open_store(spec["store"]), [ifm_name])
    videos, _ = source.videos("train")
    plan, epoch, need = [], 0, b * (spec["warmup"] + spec["max_iters"])
    while len(plan) < need:
        plan += prp_epoch(videos, source.frames[videos], SamplerConfig(frames=t), spec["seed"], epoch)
        epoch += 1
    loader = ClipLoader(source, plan[:need], b, device=device)
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32  # as train.train casts, on the device

    def batches():
        for x, y in loader:
            yield x.to(device, compute, non_blocking=True), y

    return model, model_stats(cfg, RATES, clip=(t, grid, grid, dim))["macs"], 0, batches


def _timed_steps(spec: dict, model, batches, device) -> tuple[list[float], float]:
    """Seconds of each timed training step (after the warm-up ones), until enough are timed;
    and the wall time of them all."""
    import torch

    from advise_cache.configs import TrainConfig
    from advise_cache.train import train_step

    cuda = device.type == "cuda"
    recipe = TrainConfig(cache=Path(), out=Path())
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    model.train()
    times, it, t_start = [], batches(), time.perf_counter()
    while True:
        t0 = clock(device)
        x, y = next(it)
        loss, _ = train_step(model, opt, x, y, recipe.label_smoothing, torch.bfloat16 if cuda else None)
        loss.item()  # waits for the step, as the trainer's metrics do
        times.append(time.perf_counter() - t0)
        timed = times[spec["warmup"] :]
        say(f"[{spec['config']}] iteration {len(times)}: {times[-1]:.2f} s")
        enough = len(timed) >= spec["iters"] and sum(timed) >= spec["min_time"]
        if enough or len(timed) >= spec["max_iters"]:
            return timed, time.perf_counter() - t_start


def measure(spec: dict) -> dict:
    """Build one configuration, train it for a few iterations, return what was measured."""
    import numpy as np
    import torch

    from advise_cache.models import count_params
    from advise_cache.runtime import resolve_device

    torch.set_num_threads(spec["threads"])
    device = resolve_device(spec["device"])
    cuda = device.type == "cuda"
    baseline = memory()[0]
    torch.manual_seed(spec["seed"])
    method, ifm_name = CONFIGS[spec["config"]]
    rng = np.random.default_rng(spec["seed"])
    labels = torch.from_numpy(rng.integers(0, RATES, spec["batch_size"])).to(device)
    if ifm_name is None:
        model, macs_model, macs_ifm, batches = _pixels_r3d(spec, device, labels)
    elif spec["config"].startswith("online"):
        model, macs_model, macs_ifm, batches = _online_tmm(spec, device, labels, rng)
    else:
        model, macs_model, macs_ifm, batches = _cached_tmm(spec, device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    timed, wall = _timed_steps(spec, model, batches, device)
    peak = memory()[1]
    return {
        "config": spec["config"],
        "method": method,
        "ifm": ifm_name,
        "device": str(device),
        "params": count_params(model),
        "macs_ifm": macs_ifm,
        "macs_model": macs_model,
        "macs": macs_ifm + macs_model,
        "baseline_rss": baseline,
        "memory": torch.cuda.max_memory_allocated(device) if cuda else peak - baseline,
        "seconds": statistics.median(timed),
        "iters": len(timed),
        "wall": wall,
    }
