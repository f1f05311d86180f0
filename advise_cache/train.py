"""Stage 2: train the temporal module from the cache — PRP pretraining or classification.

    advise-cache train --cache ucf101.zarr --out runs/prp           # PRP pretext
    advise-cache finetune --cache ucf101.zarr --out runs/ft --init runs/prp/checkpoint.pt
    torchrun --nproc_per_node 4 -m advise_cache.cli train --cache ucf101.zarr --out runs/prp

No video is decoded and no image model runs: a step reads the clips' tokens from the store
(or from RAM with --preload), runs the TMM and its head, and updates them (AdamW, the lr scaled to
the batch by `configs.scaled_lr`, warm-up then cosine; docs/FIDELITY.md sets each choice against
the released code). A run folder holds config.json, metrics.jsonl (a line per step and per epoch)
and checkpoint.pt with checkpoint.json beside it (readable without torch).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import (
    CHECKPOINT,
    Checkpoint,
    CheckpointMeta,
    RunFolder,
    check_classes,
    check_features,
    load_checkpoint,
    save_checkpoint,
    start_metrics,
    truncate_metrics,
)
from .configs import (
    TMMConfig,
    TrainConfig,
    changed_recipe,
    check_train_config,
    clips_per_video,
    config_to_dict,
    scaled_lr,
)
from .curves import RunLog
from .errors import AdviseCacheError, MismatchError, StoreError
from .loader import ClipLoader, TokenSource
from .models import ClipClassifier, count_params, create_model
from .remote_shards import shard_cache
from .runtime import (
    Dist,
    all_ranks_agree,
    autocast_dtype,
    barrier,
    close_distributed,
    init_distributed,
    make_current,
    resolve_device,
    resolve_precision,
    sum_across,
)
from .sampling import classification_epoch, draw_views, long_enough, prp_epoch
from .storage import describe
from .store import Store, open_store

log = logging.getLogger(__name__)


class TrainingDiverged(AdviseCacheError):
    """The loss or the weights became NaN or Inf, or the loss diverged (`divergence_limit`)."""


# A run has diverged when an epoch's mean loss is over DIVERGED_FACTOR times the larger of
# chance, ln(classes) (the loss of a uniform guess), and the run's first logged loss. A run
# that learns stays near or below both; 10x chance with the 4 PRP rates (13.9) means the right
# class gets about e^-14 of the probability on average: confidently wrong, the mark of a too
# high learning rate even while the weights stay finite. A spike that its epoch recovers
# from does not count; a diverged epoch never replaces the last good checkpoint.
DIVERGED_FACTOR = 10.0


def divergence_limit(num_classes: int, first_loss: float | None) -> float:
    """The epoch mean loss above which a run counts as diverged."""
    return DIVERGED_FACTOR * max(math.log(max(num_classes, 2)), first_loss or 0.0)


# -- the loop ------------------------------------------------------------------------------
def _schedule(step: int, total: int, warmup: int, base_lr: float) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _plan(cfg: TrainConfig, source: TokenSource, videos, labels, epoch: int, d: Dist):
    """This rank's clips of one epoch. With --preload on several ranks, each rank samples only
    its own share of the videos (so it holds only those), cut to the count every rank has."""
    seed, rank, world = cfg.seed, d.rank, d.world
    if cfg.preload != "none" and d.world > 1:
        keep = len(videos) // d.world * clips_per_video(cfg)
        videos, labels = videos[d.rank :: d.world], labels[d.rank :: d.world]
        seed = int(np.random.SeedSequence([cfg.seed, d.rank]).generate_state(1)[0])
        rank, world = 0, 1
    else:
        keep = None
    lengths, s = source.frames[videos], cfg.sampler
    if cfg.task == "prp":
        plan = prp_epoch(videos, lengths, s, seed, epoch, rank, world)
    else:
        plan = classification_epoch(
            videos, lengths, labels, seed, epoch, s.frames, s.stride, cfg.clip_mode, rank, world, s
        )
    return draw_views(plan[:keep], source.train_views(cfg.views_train), seed, epoch, rank)


def resolve_stride(cfg: TrainConfig) -> TrainConfig:
    """The config with the sampler's stride in stored frames. A store extracted with
    --frame-stride s holds source frames 0, s, 2s, ... of each video, so a base stride of
    `source_stride` source frames is source_stride / s stored frames, served exactly only when
    s divides it. Without a source stride, sampler.stride counts stored frames as given."""
    fs = open_store(cfg.cache).ifm(cfg.ifm[0] if cfg.ifm else None).meta.frame_stride
    if cfg.source_stride is None:
        if fs > 1:
            log.warning(
                "--stride %d counts stored frames: %s keeps every %d-th frame, so clip frames are %d "
                "frames of the video apart (--source-stride N counts frames of the video)",
                cfg.sampler.stride,
                cfg.cache,
                fs,
                cfg.sampler.stride * fs,
            )
        return cfg
    if cfg.source_stride < 1 or cfg.source_stride % fs:
        raise MismatchError(
            f"--source-stride {cfg.source_stride}: {cfg.cache} holds every {fs}-th frame of each video "
            f"(extracted with --frame-stride {fs}), so clip frames can only be a multiple of {fs} frames "
            f"apart; use --source-stride {fs} or {2 * fs}, or a store extracted with a --frame-stride "
            f"that divides {cfg.source_stride}"
        )
    return replace(cfg, sampler=replace(cfg.sampler, stride=cfg.source_stride // fs))


def _check_step(cfg: TrainConfig, longest: int) -> None:
    """Refuse clips whose consecutive frames are a whole video apart or more: each step would
    wrap around every video, which makes a clip of unrelated frames, not a playback rate."""
    sampler = cfg.sampler
    if cfg.task == "prp":
        rate = max(abs(r) for r in sampler.rates)
        step, flags = sampler.stride * rate * (1 - sampler.jitter), f"--stride {sampler.stride} x rate {rate}"
    elif cfg.clip_mode == "stride":
        step, flags = sampler.stride, f"--stride {sampler.stride}"
    else:
        return
    if step >= longest:
        raise MismatchError(
            f"{flags} puts a clip's frames {step:.0f} stored frames apart, more than the longest video of "
            f"split {cfg.split!r} has ({longest}); lower them"
        )


@dataclass
class Setup:
    """What a run reads and builds from, checked before any training: `prepare` opens the store
    and the split, `_setup` adds the device, the model's config and the run to resume."""

    store: Store
    source: TokenSource
    videos: np.ndarray  # the store's rows this run trains on
    skipped: int  # videos of the split not done in the store
    labels: np.ndarray
    num_classes: int
    fingerprint: dict
    device: torch.device | None = None
    precision: str = "fp32"
    tmm_cfg: TMMConfig | None = None
    init: Checkpoint | None = None  # --init's checkpoint
    plan0: np.ndarray | None = None  # epoch 0's clips
    steps_per_epoch: int = 0
    ckpt: Checkpoint | None = None  # the run in --out being resumed


def prepare(cfg: TrainConfig) -> Setup:
    """Open the store and check everything that could stop a run, before any training."""
    check_train_config(cfg)
    store = open_store(cfg.cache, local_cache=shard_cache(cfg.local_cache, cfg.local_cache_gb))
    source = TokenSource(store, list(cfg.ifm) or None, skip_damaged=cfg.skip_damaged)
    source.train_views(cfg.views_train)  # --views-train asks for views the store holds
    videos, skipped = source.videos(cfg.split)
    if not len(videos):
        raise StoreError(
            f"{cfg.cache}: no done video in split {cfg.split!r} "
            f"(splits: {', '.join(sorted(set(store.videos.split.tolist())))})"
        )
    if cfg.task == "prp":
        videos = long_enough(videos, source.frames[videos], cfg.sampler)
    _check_step(cfg, int(source.frames[videos].max()))
    labels = store.videos.label[videos]
    classes = store.classes
    if cfg.task == "classify":
        if (labels < 0).any():
            raise StoreError(f"{cfg.cache}: split {cfg.split!r} has unlabelled videos; cannot fine-tune")
        num_classes = len(classes)
    else:
        num_classes = len(cfg.sampler.rates)
    fingerprint = store.fingerprint(source.keys)
    return Setup(store, source, videos, skipped, labels, num_classes, fingerprint)


def epoch_steps(cfg: TrainConfig) -> int:
    """Optimisation steps in one epoch of `cfg` in one process (what a study's ETA scales by)."""
    cfg = resolve_stride(cfg)
    s = prepare(cfg)
    return len(_plan(cfg, s.source, s.videos, s.labels, 0, Dist())) // cfg.batch_size


def train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    label_smoothing: float = 0.0,
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch on the model's device. Returns (loss, logits), detached
    and still on the device: nothing here waits for the GPU."""
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return loss.detach(), logits.detach()


def _last_good(out: Path) -> str:
    # Every checkpoint is written only after its weights gave a finite, undiverged loss
    # (`_checked_loss`), so the one in the folder, if any, is good.
    path = out / CHECKPOINT
    return f"The last good checkpoint is {path}" if path.exists() else "No good checkpoint was written"


def _checked_loss(model, x: torch.Tensor, y: torch.Tensor, smoothing: float, compute, d: Dist) -> float:
    """The mean loss of the model's weights as they are now on a batch (over every rank): what a
    checkpoint of them would start from. Losses logged during an epoch belong to the weights
    before each step, so a last update that broke the weights shows only here. BatchNorm's
    running statistics are put back afterwards: the check changes nothing."""
    buffers = [b.clone() for b in model.buffers()]
    with torch.no_grad(), torch.autocast(x.device.type, dtype=compute, enabled=compute is not None):
        loss = F.cross_entropy(model(x).float(), y, label_smoothing=smoothing).double().reshape(1)
    for b, saved in zip(model.buffers(), buffers):
        b.copy_(saved)
    return float(sum_across(loss, d).item() / d.world)


def _finite_weights(model: torch.nn.Module) -> bool:
    return bool(torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all())


def train(cfg: TrainConfig, on_step=None) -> dict:
    """Run (or resume) one training; returns the final metrics. `on_step(step, loss)`, if given,
    is called after every optimisation step with the loss still on the device (for timing)."""
    d = init_distributed(cfg.device)
    folder = None
    try:
        error = None
        if d.main:
            try:
                folder = RunFolder(cfg.out)
            except AdviseCacheError as e:
                error = e
        all_ranks_agree(d, error)
        with ExitStack() as closing:  # the progress bar ends before an error's line is printed
            return _train(cfg, d, on_step, closing)
    finally:
        if folder is not None:
            folder.release()
        close_distributed(d)


HEAD_FIELDS = ("head", "head_hidden")  # a fine-tune's head is new: its flags apply beside --init


def _init_tmm(asked: TMMConfig, trained: TMMConfig, init: Path) -> TMMConfig:
    """The model a fine-tune from --init builds: the checkpoint's TMM, with the head asked for.
    Model flags that ask for another TMM are refused, not ignored (the defaults, and flags that
    repeat the checkpoint's values, pass); the head flags apply where they differ from the
    defaults, and the checkpoint's head kind is kept where they do not."""
    default = TMMConfig()
    given = [
        f.name for f in fields(TMMConfig) if f.name != "in_dim" and getattr(asked, f.name) != getattr(default, f.name)
    ]
    differ = [k for k in given if k not in HEAD_FIELDS and getattr(asked, k) != getattr(trained, k)]
    if differ:
        flags = " ".join(f"--{k.replace('_', '-')} {getattr(asked, k)}" for k in differ)
        theirs = ", ".join(f"{k} {getattr(trained, k)}" for k in differ)
        raise MismatchError(f"the TMM comes from --init {init} ({theirs}); leave out {flags}")
    return replace(trained, **{k: getattr(asked, k) for k in given if k in HEAD_FIELDS})


def _setup(cfg: TrainConfig, d: Dist) -> Setup:
    """Everything that could stop a run, checked before any training: returns its pieces."""
    s = prepare(cfg)
    s.device = resolve_device(cfg.device)
    if s.device.type == "cuda" and d.world > 1:
        s.device = torch.device("cuda", d.local_rank)
    make_current(s.device)  # what defaults to the current device (pinned memory's context, the scaler) is on it
    if cfg.preload == "gpu" and s.device.type != "cuda":
        raise AdviseCacheError("--preload gpu needs a CUDA device; use --preload ram")
    s.precision = resolve_precision(cfg.precision, s.device)
    if s.precision == "fp16" and s.device.type != "cuda":
        raise AdviseCacheError("--precision fp16 needs a CUDA device; use fp32 or bf16")
    if cfg.sync_bn and d.world > 1 and s.device.type != "cuda":
        raise AdviseCacheError("--sync-bn needs CUDA devices (torch's SyncBatchNorm); pass --no-sync-bn")
    s.tmm_cfg = replace(cfg.tmm, in_dim=s.source.dim)
    grid = s.source.grid
    if s.tmm_cfg.spatial_pool and s.tmm_cfg.spatial_pool > min(grid):
        raise MismatchError(
            f"--spatial-pool {s.tmm_cfg.spatial_pool} is larger than the store's {grid[0]}x{grid[1]} token grid"
        )
    s.init = load_checkpoint(cfg.init) if cfg.init else None
    if s.init is not None:
        check_features(s.init.meta.fingerprint, s.fingerprint, f"--init {cfg.init}")
        s.tmm_cfg = _init_tmm(cfg.tmm, s.init.meta.tmm, cfg.init)
    s.plan0 = _plan(cfg, s.source, s.videos, s.labels, 0, d)
    s.steps_per_epoch = len(s.plan0) // cfg.batch_size
    if s.steps_per_epoch == 0:
        raise AdviseCacheError(
            f"{len(s.plan0)} clips per epoch per process is fewer than --batch-size {cfg.batch_size}; lower it"
        )
    s.ckpt = _run_to_resume(cfg, d, s)
    return s


def _run_to_resume(cfg: TrainConfig, d: Dist, s: Setup) -> Checkpoint | None:
    """The checkpoint in --out to resume (with --resume), checked to be this run's; None for a
    new run. A run already in --out without --resume is refused."""
    if not (cfg.out / CHECKPOINT).exists():
        return None
    if not cfg.resume:
        if d.main:
            raise AdviseCacheError(f"{cfg.out} already holds a run; pass --resume to continue it")
        return None
    ckpt = load_checkpoint(cfg.out)
    check_features(ckpt.meta.fingerprint, s.fingerprint, f"the checkpoint in {cfg.out}")
    if ckpt.meta.tmm != s.tmm_cfg or ckpt.meta.task != cfg.task:
        raise MismatchError(f"{cfg.out} holds a run with another model or task; use another --out")
    if cfg.task == "classify":
        check_classes(ckpt.meta.classes, s.store.classes, f"the run in {cfg.out}", str(cfg.cache))
    changed = changed_recipe(config_to_dict(ckpt.meta.config), config_to_dict(cfg))
    if changed and not cfg.override:
        raise MismatchError(
            f"{cfg.out} was started with other settings ({changed}); resume with the same "
            "flags, or pass --override to continue with the new ones"
        )
    return ckpt


@dataclass
class Run:
    """One run while it trains: its model and optimiser, where it is, and what it logs."""

    cfg: TrainConfig
    d: Dist
    s: Setup
    model: ClipClassifier
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    compute: torch.dtype | None  # autocast's dtype; None: fp32
    layout: torch.memory_format
    meta: CheckpointMeta
    base_lr: float
    warmup: int  # steps
    total: int  # steps of the whole schedule
    last_step: int  # where this invocation stops (--max-steps)
    train_model: torch.nn.Module | None = None  # the model, in DDP and compiled where asked
    step: int = 0
    first_loss: float | None = None  # the run's first logged loss: divergence is measured against it
    final: dict = field(default_factory=dict)  # the last epoch's metrics
    run_log: RunLog | None = None  # rank 0's
    bar: tqdm | None = None


def _train(cfg: TrainConfig, d: Dist, on_step, closing: ExitStack) -> dict:
    error, s = None, None
    try:
        cfg = resolve_stride(cfg)
        s = _setup(cfg, d)
    except AdviseCacheError as e:
        error = e
    all_ranks_agree(d, error)  # one rank's user error ends every rank, with its message
    total = cfg.epochs * s.steps_per_epoch
    last_step = min(total, cfg.max_steps or total)
    if s.ckpt is not None and s.ckpt.step >= last_step:
        # Finished already: its metrics, without building anything (drivers resume every run).
        log.info("%s finished at step %d; nothing to resume", cfg.out, s.ckpt.step)
        return dict(s.ckpt.meta.metrics or {})
    run = _build(cfg, d, s, total, last_step)
    _start_or_resume(run)
    if d.main:
        run.run_log = RunLog(cfg.out, cfg.tensorboard, run.step)
        closing.callback(run.run_log.close)
    run.train_model = _ready_to_train(run)
    desc = f"{cfg.task} {cfg.out.name}"
    run.bar = closing.enter_context(
        tqdm(total=last_step, initial=run.step, desc=desc, unit="step", disable=not (cfg.progress and d.main))
    )
    epoch = run.step // s.steps_per_epoch
    while run.step < last_step:
        x, y = _train_epoch(run, epoch, on_step)
        epoch_done = run.step % s.steps_per_epoch == 0
        _end_epoch(run, epoch, epoch_done, x, y)
        if epoch_done:
            epoch += 1
    run.bar.close()
    barrier(d)
    return run.final


def _build(cfg: TrainConfig, d: Dist, s: Setup, total: int, last_step: int) -> Run:
    """The model (its TMM from --init where given) on the device, its optimiser and precision,
    and the metadata its checkpoints carry."""
    cuda = s.device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    # On CUDA the TMM runs channels_last_3d, the layout the store's (B, T, h, w, D) already has.
    layout = torch.channels_last_3d if cuda else torch.contiguous_format
    torch.manual_seed(cfg.seed)
    model = create_model(s.tmm_cfg, s.num_classes)
    if s.init is not None:
        model.tmm.load_state_dict({k[4:]: v for k, v in s.init.model.items() if k.startswith("tmm.")})
    if cfg.linear_probe:
        model.tmm.requires_grad_(False)
    if cfg.sync_bn and d.world > 1:  # before the optimizer: the converted layers keep the parameters
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(s.device, memory_format=layout)
    base_lr = scaled_lr(cfg, d.world)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=cfg.weight_decay, **({"fused": True} if cuda else {}))
    meta = CheckpointMeta(
        task=cfg.task,
        config=cfg,
        tmm=s.tmm_cfg,
        num_classes=s.num_classes,
        classes=s.store.classes if cfg.task == "classify" else [str(r) for r in cfg.sampler.rates],
        fingerprint=s.fingerprint,
        store=describe(cfg.cache),
        dataset=s.store.dataset,
        init=str(cfg.init) if cfg.init else None,
        trainable_params=count_params(model),
        world=d.world,
        precision=s.precision,
    )
    scaler = torch.amp.GradScaler(s.device.type) if s.precision == "fp16" else None
    warmup = min(round(cfg.warmup_epochs * s.steps_per_epoch), total // 5)
    compute = autocast_dtype(s.precision)
    return Run(cfg, d, s, model, opt, scaler, compute, layout, meta, base_lr, warmup, total, last_step)


def _start_or_resume(run: Run) -> None:
    """A new run starts its metrics file (rank 0); a resumed one loads its checkpoint's weights,
    optimiser and scaler and cuts its metrics back to the checkpoint's step."""
    cfg, d, ckpt = run.cfg, run.d, run.s.ckpt
    if ckpt is None:
        if d.main:
            start_metrics(cfg.out, run.meta.to_dict())
        return
    run.model.load_state_dict(ckpt.model)
    run.opt.load_state_dict(ckpt.optimizer)
    if run.scaler is not None and ckpt.scaler is not None:
        run.scaler.load_state_dict(ckpt.scaler)
    run.step, run.first_loss, run.final = ckpt.step, ckpt.meta.first_loss, ckpt.meta.metrics or {}
    if d.main:
        truncate_metrics(cfg.out / "metrics.jsonl", run.step)
    log.info("resuming %s at step %d", cfg.out, run.step)


def _ready_to_train(run: Run) -> torch.nn.Module:
    """The videos preloaded where asked, and the model as the loop calls it: in DDP on several
    ranks, compiled with --compile."""
    cfg, d, s = run.cfg, run.d, run.s
    if cfg.preload != "none":
        mine = s.videos[d.rank :: d.world] if d.world > 1 else s.videos  # the videos _plan gives this rank
        held = s.source.preload(mine, s.device, on_device=cfg.preload == "gpu")
        log.info("preloaded %d videos (%.1f GB) into %s", len(mine), held / 1e9, cfg.preload)
    model = run.model
    if d.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[s.device.index] if s.device.type == "cuda" else None
        )
    if cfg.compile:
        model = torch.compile(model)
    if s.skipped and d.main:
        log.warning("skipping %d video(s) of split %r that are not done in the store", s.skipped, cfg.split)
    return model


def _train_epoch(run: Run, epoch: int, on_step) -> tuple[torch.Tensor, torch.Tensor]:
    """The steps of one epoch (from where a resumed run stopped, to its end or the last step);
    sets `run.final` to the epoch's metrics and returns the last batch."""
    cfg, s = run.cfg, run.s
    skip = run.step - epoch * s.steps_per_epoch
    plan = s.plan0 if epoch == 0 else _plan(cfg, s.source, s.videos, s.labels, epoch, run.d)
    loader = ClipLoader(s.source, plan, cfg.batch_size, threads=cfg.loader_threads, skip_batches=skip, device=s.device)
    run.model.train()
    if cfg.linear_probe:
        run.model.tmm.eval()  # frozen: BatchNorm statistics stay those of the checkpoint
    # Loss and correct clips summed on the device; the host reads them every log_every steps.
    window = torch.zeros(2, device=s.device, dtype=torch.float64)
    sums = np.zeros(3)  # loss, correct clips, clips
    t_epoch = t_window = time.perf_counter()
    window_steps = 0
    for x, y in loader:
        x = x.to(s.device, dtype=run.compute or torch.float32, memory_format=run.layout, non_blocking=True)
        lr = _schedule(run.step, run.total, run.warmup, run.base_lr)
        for group in run.opt.param_groups:
            group["lr"] = lr
        loss, logits = train_step(run.train_model, run.opt, x, y, cfg.label_smoothing, run.compute, run.scaler)
        window[0] += loss * len(y)
        window[1] += (logits.argmax(1) == y).sum()
        run.step += 1
        window_steps += 1
        if on_step is not None:
            on_step(run.step, loss)
        end = run.step >= run.last_step or run.step % s.steps_per_epoch == 0
        if end or run.step % cfg.log_every == 0:
            t_window = _log_window(run, epoch, lr, window, window_steps, sums, t_window)
            window_steps = 0
        if run.step >= run.last_step:
            break
    seconds = time.perf_counter() - t_epoch
    loss_sum, correct, clips = sums
    run.final = {
        "kind": "epoch",
        "epoch": epoch,
        "step": run.step,
        "loss": float(loss_sum / max(clips, 1)),
        "acc": float(correct / max(clips, 1)),
        "clips": int(clips),
        "clips_per_s": float(clips / seconds),
        "data_wait_frac": loader.wait_seconds / seconds,
        "seconds": seconds,
    }
    if run.d.main:
        run.run_log.epoch(run.final)
    return x, y


def _log_window(run: Run, epoch: int, lr: float, window, steps: int, sums: np.ndarray, since: float) -> float:
    """The window's summed loss and correct clips read to the host (the loop waits here only),
    checked for NaN, added to the epoch's `sums`, logged by rank 0; returns when the next
    window starts."""
    loss_sum, correct = sum_across(window, run.d).tolist()
    window.zero_()
    clips = steps * run.cfg.batch_size * run.d.world
    loss_v, acc_v = loss_sum / clips, correct / clips
    if not math.isfinite(loss_v):
        raise TrainingDiverged(f"loss became {loss_v} at step {run.step}; stopped. {_last_good(run.cfg.out)}")
    run.first_loss = loss_v if run.first_loss is None else run.first_loss
    sums += (loss_sum, correct, clips)
    now = time.perf_counter()  # data wait included
    if run.d.main:
        record = dict(kind="step", step=run.step, epoch=epoch, loss=loss_v, acc=acc_v, lr=lr)
        run.run_log.step({**record, "clips_per_s": clips / (now - since)})
    run.bar.set_postfix(loss=f"{loss_v:.3f}", acc=f"{acc_v:.2f}", refresh=False)
    run.bar.update(steps)
    return now


def _end_epoch(run: Run, epoch: int, epoch_done: bool, x: torch.Tensor, y: torch.Tensor) -> None:
    """Stop a diverged run; otherwise save a checkpoint where one is due, once its weights are
    shown finite and undiverged on the epoch's last batch (so every checkpoint written is good)."""
    cfg, d, step = run.cfg, run.d, run.step
    limit = divergence_limit(run.s.num_classes, run.first_loss)
    if run.final["loss"] > limit:
        raise TrainingDiverged(
            f"the loss diverged: epoch {epoch} averaged {run.final['loss']:.4g}, more than {DIVERGED_FACTOR:g}x "
            f"chance or the first loss, whichever is larger ({limit:.4g}); stopped at step {step} (a lower "
            f"--lr may help). {_last_good(cfg.out)}"
        )
    if not ((epoch_done and (epoch + 1) % cfg.save_every == 0) or step >= run.last_step):
        return
    if not _finite_weights(run.model):
        raise TrainingDiverged(f"the weights became NaN or Inf by step {step}; stopped. {_last_good(cfg.out)}")
    now = _checked_loss(run.model, x, y, cfg.label_smoothing, run.compute, d)
    if not now <= limit:  # NaN too
        raise TrainingDiverged(
            f"the weights after step {step} give a loss of {now:.4g} on its batch, more than "
            f"{DIVERGED_FACTOR:g}x chance or the first loss ({limit:.4g}); stopped (a lower --lr may help). "
            f"{_last_good(cfg.out)}"
        )
    if d.main:
        meta = replace(run.meta, step=step, metrics=run.final, first_loss=run.first_loss)
        scaler = None if run.scaler is None else run.scaler.state_dict()
        save_checkpoint(cfg.out, Checkpoint(meta, run.model.state_dict(), run.opt.state_dict(), step, epoch, scaler))
