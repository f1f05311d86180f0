"""Stage 2: train the temporal module from the cache — PRP pretraining or classification.

    advise-cache train --cache ucf101.zarr --out runs/prp           # PRP pretext
    advise-cache finetune --cache ucf101.zarr --out runs/ft --init runs/prp/checkpoint.pt
    torchrun --nproc_per_node 4 -m advise_cache.cli train --cache ucf101.zarr --out runs/prp

No video is decoded and no image model runs: a step reads the clips' tokens from the store
(or from RAM with --preload), runs the TMM and its head, and updates them. The recipe is the
paper's: AdamW, lr 1e-3 at batch 32 scaled linearly, warm-up then cosine decay, weight decay
1e-6, label smoothing 0.05. A run folder holds config.json, metrics.jsonl (a line per step
and per epoch) and checkpoint.pt with checkpoint.json beside it (readable without torch).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__
from .errors import AdviseCacheError, MismatchError, StoreError
from .ifm import resolve_device
from .loader import ClipLoader, TokenSource
from .models import TMMConfig, count_params, create_model
from .sampling import SamplerConfig, classification_epoch, prp_epoch
from .store import open_store

log = logging.getLogger(__name__)

TASKS = ("prp", "classify")
CHECKPOINT = "checkpoint.pt"


class TrainingDiverged(AdviseCacheError):
    """The loss became NaN or Inf."""


@dataclass(frozen=True)
class TrainConfig:
    cache: Path
    out: Path
    task: str = "prp"  # "prp" pretext or "classify" (fine-tuning / linear probe)
    ifm: tuple[str, ...] = ()  # IFM keys in the store, concatenated along channels; () = the only one
    split: str = "train"
    epochs: int = 20
    max_steps: int | None = None  # stop early (the schedule still spans `epochs`)
    batch_size: int = 32  # per process
    lr: float = 1e-3  # at a global batch of 32; scaled linearly
    warmup_epochs: float = 5.0  # capped at a fifth of the run, so short runs still decay
    weight_decay: float = 1e-6
    label_smoothing: float = 0.05
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    clip_mode: str = "stride"  # classification clips: "stride" or "segment"
    tmm: TMMConfig = field(default_factory=TMMConfig)  # in_dim is taken from the store
    init: Path | None = None  # a checkpoint whose TMM starts this run (fine-tuning)
    linear_probe: bool = False  # train the head only
    preload: bool = False  # hold the split's tokens in RAM
    save_every: int = 1  # epochs between checkpoints (and one at the end)
    resume: bool = False
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on CUDA, fp32 on the CPU
    seed: int = 0
    loader_threads: int = 4
    progress: bool = True


def config_to_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    return json.loads(json.dumps(d, default=str))


def config_from_dict(d: dict) -> TrainConfig:
    d = dict(d)
    d["sampler"] = SamplerConfig(**{**d["sampler"], "rates": tuple(d["sampler"]["rates"])})
    d["tmm"] = TMMConfig(**d["tmm"])
    d["ifm"] = tuple(d["ifm"])
    for key in ("cache", "out", "init"):
        d[key] = Path(d[key]) if d.get(key) else None
    return TrainConfig(**d)


# -- distributed ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = resolve_device(device).type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def _mean_across(values: list[float], d: Dist) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / d.world).tolist()


# -- checkpoints ---------------------------------------------------------------------------
def save_checkpoint(out: Path, state: dict, meta: dict) -> None:
    """Write checkpoint.pt and checkpoint.json atomically (a kill never leaves a torn file)."""
    for name, write in ((CHECKPOINT, lambda p: torch.save({**state, "meta": meta}, p)),
                        ("checkpoint.json", lambda p: p.write_text(json.dumps(meta, indent=2)))):
        tmp = out / f".{name}.tmp"
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out / name)


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise MismatchError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise MismatchError(f"{path} is not a readable checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or "meta" not in ckpt or "model" not in ckpt:
        raise MismatchError(f"{path} is not an advise-cache checkpoint")
    return ckpt


# What makes two stores' features the same space. Frame stride and how the weights were
# named (a tag or a file) do not: the weights' checksum identifies them.
FEATURE_KEYS = ("model", "weights_sha256", "input_size", "grid", "dim", "normalisation")


def check_features(ckpt_meta: dict, fingerprint: dict, what: str) -> None:
    """A checkpoint fits a store when its features are the same: IFM, weights, grid, dim,
    normalisation — whatever the dataset."""
    theirs, ours = ckpt_meta["fingerprint"]["features"], fingerprint["features"]
    differs = sorted({k for a, b in zip(theirs, ours) for k in FEATURE_KEYS if a.get(k) != b.get(k)})
    if len(theirs) != len(ours) or differs:
        def show(fs):
            return " + ".join(f"{f['model']} ({f['pretrained']}, grid {f['grid']}, dim {f['dim']}, "
                              f"weights {str(f['weights_sha256'])[:12]})" for f in fs)
        detail = f" (differs in: {', '.join(differs)})" if differs else ""
        raise MismatchError(f"{what} was trained on features {show(theirs)}; this store gives {show(ours)}{detail}")


# -- the loop ------------------------------------------------------------------------------
def _schedule(step: int, total: int, warmup: int, base_lr: float) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _plan(cfg: TrainConfig, source: TokenSource, videos, labels, epoch: int, d: Dist):
    lengths = source.frames[videos]
    if cfg.task == "prp":
        return prp_epoch(videos, lengths, cfg.sampler, cfg.seed, epoch, d.rank, d.world)
    return classification_epoch(videos, lengths, labels, cfg.seed, epoch, cfg.sampler.frames,
                                cfg.sampler.stride, cfg.clip_mode, d.rank, d.world)


def prepare(cfg: TrainConfig):
    """Open the store and check everything that could stop a run, before any training."""
    if cfg.task not in TASKS:
        raise AdviseCacheError(f"task must be one of {TASKS}, got {cfg.task!r}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise AdviseCacheError("--epochs and --batch-size must be >= 1")
    if not cfg.lr > 0:
        raise AdviseCacheError(f"--lr must be positive, got {cfg.lr}")
    store = open_store(cfg.cache)
    source = TokenSource(store, list(cfg.ifm) or None)
    videos, skipped = source.videos(cfg.split)
    if not len(videos):
        raise StoreError(f"{cfg.cache}: no done video in split {cfg.split!r} "
                         f"(splits: {', '.join(sorted(set(store.videos.split.tolist())))})")
    labels = store.videos.label[videos]
    classes = store.classes
    if cfg.task == "classify":
        if (labels < 0).any():
            raise StoreError(f"{cfg.cache}: split {cfg.split!r} has unlabelled videos; cannot fine-tune")
        num_classes = len(classes)
    else:
        num_classes = len(cfg.sampler.rates)
    fingerprint = store.fingerprint(source.keys)
    return store, source, videos, skipped, labels, num_classes, fingerprint


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) one training; returns the final metrics."""
    d = init_distributed(cfg.device)
    store, source, videos, skipped, labels, num_classes, fingerprint = prepare(cfg)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    tmm_cfg = replace(cfg.tmm, in_dim=source.dim)
    if tmm_cfg.spatial_pool and tmm_cfg.spatial_pool > min(source.grid):
        raise MismatchError(f"--spatial-pool {tmm_cfg.spatial_pool} is larger than the store's "
                            f"{source.grid[0]}x{source.grid[1]} token grid")

    init = load_checkpoint(cfg.init) if cfg.init else None
    if init is not None:
        check_features(init["meta"], fingerprint, f"--init {cfg.init}")
        tmm_cfg = TMMConfig(**init["meta"]["tmm"])
    torch.manual_seed(cfg.seed)
    model = create_model(tmm_cfg, num_classes)
    if init is not None:
        tmm_state = {k[4:]: v for k, v in init["model"].items() if k.startswith("tmm.")}
        model.tmm.load_state_dict(tmm_state)
    if cfg.linear_probe:
        model.tmm.requires_grad_(False)
    model.to(device)

    cfg.out.mkdir(parents=True, exist_ok=True)
    plan0 = _plan(cfg, source, videos, labels, 0, d)
    steps_per_epoch = len(plan0) // cfg.batch_size
    if steps_per_epoch == 0:
        raise AdviseCacheError(f"{len(plan0)} clips per epoch per process is fewer than --batch-size "
                               f"{cfg.batch_size}; lower it")
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total // 5)
    world_batch = cfg.batch_size * d.world
    base_lr = cfg.lr * world_batch / 32
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=cfg.weight_decay)

    meta = {
        "version": __version__,
        "task": cfg.task,
        "config": config_to_dict(cfg),
        "tmm": asdict(tmm_cfg),
        "num_classes": num_classes,
        "classes": store.classes if cfg.task == "classify" else [str(r) for r in cfg.sampler.rates],
        "fingerprint": fingerprint,
        "store": str(Path(cfg.cache).resolve()),
        "dataset": store.dataset,
        "init": str(cfg.init) if cfg.init else None,
        "trainable_params": count_params(model),
        "world": d.world,
    }
    step = 0
    resumed_metrics: dict = {}
    metrics_path = cfg.out / "metrics.jsonl"
    if cfg.resume and (cfg.out / CHECKPOINT).exists():
        ckpt = load_checkpoint(cfg.out)
        check_features(ckpt["meta"], fingerprint, f"the checkpoint in {cfg.out}")
        if ckpt["meta"]["tmm"] != meta["tmm"] or ckpt["meta"]["task"] != cfg.task:
            raise MismatchError(f"{cfg.out} holds a run with another model or task; use another --out")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        resumed_metrics = ckpt["meta"].get("metrics", {})
        _truncate_metrics(metrics_path, step)
        log.info("resuming %s at step %d", cfg.out, step)
    elif d.main:
        if (cfg.out / CHECKPOINT).exists():
            raise AdviseCacheError(f"{cfg.out} already holds a run; pass --resume to continue it")
        metrics_path.write_text("")
        (cfg.out / "config.json").write_text(json.dumps(meta, indent=2))

    if cfg.preload:
        held = source.preload(videos)
        log.info("preloaded %d videos (%.1f MB)", len(videos), held / 1e6)
    train_model = model
    if d.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if skipped and d.main:
        log.warning("skipping %d video(s) of split %r that are not done in the store", skipped, cfg.split)

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    last_step = min(total, cfg.max_steps or total)
    bar = tqdm(total=last_step, initial=step, desc=f"{cfg.task} {cfg.out.name}", unit="step",
               disable=not (cfg.progress and d.main))
    final = resumed_metrics  # what a finished run returns when asked to resume
    epoch = step // steps_per_epoch
    while step < last_step:
        skip = step - epoch * steps_per_epoch
        plan = plan0 if epoch == 0 else _plan(cfg, source, videos, labels, epoch, d)
        loader = ClipLoader(source, plan, cfg.batch_size, threads=cfg.loader_threads, skip_batches=skip)
        model.train()
        if cfg.linear_probe:
            model.tmm.eval()  # frozen: BatchNorm statistics stay those of the checkpoint
        sums = np.zeros(3)  # loss, correct, clips
        t_epoch = t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = _schedule(step, total, warmup, base_lr)
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = train_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at step {step}; stopped. The last good checkpoint is "
                    f"{cfg.out / CHECKPOINT}" + ("" if (cfg.out / CHECKPOINT).exists() else " (none yet)"))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            acc = (logits.argmax(1) == y).float().mean().item()
            loss_v, acc_v = _mean_across([loss.item(), acc], d)
            sums += (loss_v * len(y), acc_v * len(y), len(y))
            dt, t0 = time.perf_counter() - t0, time.perf_counter()  # waiting for data included
            if d.main:
                _append(metrics_path, {"kind": "step", "step": step, "epoch": epoch, "loss": loss_v,
                                       "acc": acc_v, "lr": lr, "clips_per_s": world_batch / dt})
            bar.update()
            bar.set_postfix(loss=f"{loss_v:.3f}", acc=f"{acc_v:.2f}", refresh=False)
            if step >= last_step:
                break
        seconds = time.perf_counter() - t_epoch
        final = {"kind": "epoch", "epoch": epoch, "step": step, "loss": sums[0] / max(sums[2], 1),
                 "acc": sums[1] / max(sums[2], 1), "clips": int(sums[2]) * d.world,
                 "clips_per_s": sums[2] * d.world / seconds, "data_wait_frac": loader.wait_seconds / seconds,
                 "seconds": seconds}
        if d.main:
            _append(metrics_path, final)
        epoch_done = step % steps_per_epoch == 0
        if d.main and ((epoch_done and (epoch + 1) % cfg.save_every == 0) or step >= last_step):
            save_checkpoint(cfg.out, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                      "step": step, "epoch": epoch}, {**meta, "step": step, "metrics": final})
        if epoch_done:
            epoch += 1
    bar.close()
    if d.world > 1:
        dist.barrier()
    return final


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint a resumed run starts from."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))
