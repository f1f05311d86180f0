"""What a run is: the settings of extraction, of the temporal model and of training, as frozen
dataclasses, and a training config's round trip through plain JSON types.

    cfg = TrainConfig(cache=Path("ucf101.zarr"), out=Path("runs/prp"), tmm=TMMConfig(blocks=2))
    config_from_dict(config_to_dict(cfg)) == cfg
    preset_config("released", cache=Path("ucf101.zarr"), out=Path("runs/prp"))  # the released code's

A preset (`PRESETS`: ours, paper, released) is a model and recipe that fields given on top of it
override; docs/FIDELITY.md sets each against the released code, and tests/test_fidelity.py keeps
that table and these presets the same.

The CLI reads every flag's default from these classes, so this module imports neither torch nor
zarr: `advise-cache --help` answers at once. Every run folder and checkpoint records a
`TrainConfig`; readers of a checkpoint (evaluate, embed, visualize) get it back typed through
`config_from_dict`, without importing the training loop. `check_train_config` refuses a
training config's bad numbers and choices before any work, and `changed_recipe` says what a
resumed run would change. The sampler's settings, `SamplerConfig`, live with the sampler
(sampling.py, numpy only).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .errors import AdviseCacheError, MismatchError
from .ifm_layout import DEFAULT_CODEC
from .sampling import CLASSIFICATION_MODES, SamplerConfig
from .storage import store_location

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # --precision of every command that computes
MAX_SEED = 2**63 - 1  # what torch's and numpy's generators take

TMM_KINDS = ("r3d", "none")
# "mlp": Linear -> ReLU -> Linear; "bn-mlp": Linear without bias -> BatchNorm -> ReLU -> Linear,
# the released code's head (models/head_helper.py MLPHead with BN); "linear": one Linear.
HEAD_KINDS = ("mlp", "linear", "bn-mlp")
# "he": Kaiming-normal convolutions (fan out), as torchvision's ResNets; "torch": PyTorch's own
# layer defaults, which the released TMM keeps (its TemporalModel calls no init).
WEIGHT_INITS = ("he", "torch")


@dataclass(frozen=True)
class TMMConfig:
    """Everything that shapes the temporal model; written into every run folder."""

    in_dim: int = 768  # D of the tokens fed in (after concatenating IFMs)
    spatial_pool: int | None = None  # SFU: pool h×w to S×S; None keeps the grid
    channel_pool: int | None = None  # SFU: pool D to C; None keeps the channels
    tmm: str = "r3d"  # "r3d" bottleneck blocks, or "none" (average-pooling baseline)
    blocks: int = 1
    hidden: int = 256  # bottleneck width
    out_dim: int = 1024  # block output width
    # 3 so that the TMM mixes neighbouring frames before pooling; the paper's counted
    # TMM uses 1 (see docs/MODEL_STATS.md), which `paper()` restores.
    temporal_kernel: int = 3
    head: str = "mlp"  # one of HEAD_KINDS
    head_hidden: int = 1024
    weight_init: str = "he"  # one of WEIGHT_INITS

    def __post_init__(self) -> None:
        if self.tmm not in TMM_KINDS:
            raise MismatchError(f"tmm must be one of {TMM_KINDS}, got {self.tmm!r}")
        if self.head not in HEAD_KINDS:
            raise MismatchError(f"head must be one of {HEAD_KINDS}, got {self.head!r}")
        if self.weight_init not in WEIGHT_INITS:
            raise MismatchError(f"weight_init must be one of {WEIGHT_INITS}, got {self.weight_init!r}")
        for name in ("in_dim", "blocks", "hidden", "out_dim", "temporal_kernel", "head_hidden"):
            if getattr(self, name) < 1:
                raise MismatchError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("spatial_pool", "channel_pool"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MismatchError(f"{name} must be at least 1 or None, got {value}")
        if self.channel_pool is not None and self.channel_pool > self.in_dim:
            raise MismatchError(
                f"channel_pool {self.channel_pool} exceeds in_dim {self.in_dim}: pooling cannot add channels"
            )
        if self.temporal_kernel % 2 == 0:
            # An even kernel cannot be padded symmetrically, so T would change.
            raise MismatchError(f"temporal_kernel must be odd, got {self.temporal_kernel}")

    @classmethod
    def paper(cls, **overrides) -> TMMConfig:
        """The conventions that reproduce the paper's Tables 2 and 3 (params and FLOPs).

        A 1×1×1 first conv, a linear head, input 768 and blocks of output 1024.
        """
        base = cls(temporal_kernel=1, head="linear")
        return replace(base, **overrides)

    @classmethod
    def released(cls, **overrides) -> TMMConfig:
        """The released code's TMM (configs/pretrain/AdViSe.yaml, models/temporal_modeling.py):
        4 blocks 1x1x1 -> 1x3x3 -> 1x1x1 (hidden 256, output 512), a BN-MLP head of 1024 and
        PyTorch's default initialisation: 4.506 M parameters with a 101-way head (Table 8's 4.5 M)."""
        base = cls(blocks=4, out_dim=512, temporal_kernel=1, head="bn-mlp", weight_init="torch")
        return replace(base, **overrides)

    @property
    def pooled_dim(self) -> int:
        """Channels after SFU."""
        return self.channel_pool if self.channel_pool is not None else self.in_dim

    @property
    def feature_dim(self) -> int:
        """Width of the pooled embedding that the head sees."""
        return self.out_dim if self.tmm == "r3d" else self.pooled_dim


@dataclass(frozen=True)
class ExtractConfig:
    dataset: str
    root: Path
    out: Path
    split: int = 1
    annotations: Path | None = None  # folder of the split/label files, when not in root
    holdout: bool = False  # also the unlabelled test set (Kinetics test.csv, SSv2 test.json)
    model: str = "ViT-B-16"
    pretrained: str = "auto"
    name: str | None = None  # the IFM's key in the store; default derived from the model
    frame_stride: int = 1
    batch_size: int | None = None  # frames per forward; None: 256 on CUDA, 64 on the CPU
    workers: int | None = None  # decode processes; 0 decodes in line; None: see default_workers
    writers: int = 4  # threads writing shards
    decoder: str = "decord"  # or "torchcodec" (video.DECODERS)
    resize: str = "tensor"  # where frames are resized: "tensor" (the model's device) or "pil" (pixels.RESIZES)
    device: str = "auto"
    precision: str = "auto"
    dtype: str = "float16"
    codec: str = DEFAULT_CODEC
    frames_per_shard: int = 64
    shard: tuple[int, int] = (0, 1)
    seed: int = 0  # also the seed of the augmented views' draws (views.py)
    progress: bool = True
    aug_views: int = 0  # augmented views stored besides the centre crop (views.py)
    crops: int = 0  # evaluation crops stored: 0, 1 (the centre one) or 3


TASKS = ("prp", "classify")
# Which stored views a training clip draws one from (views.train_views): the centre crop and every
# augmented view, the augmented views alone, or the centre crop alone (a store without views has only it).
VIEWS_TRAIN = ("all", "augmented", "centre")
PRELOAD = ("none", "ram", "gpu")
# How the base lr scales with the global batch: "per-clip", lr x clips / 32 (the project's), or
# "code", lr x videos / 64 (the released code's utils/solver.py, a video being `clips_per_video`
# clips: 1e-3 x clips / 256 with its 4 clips a video).
LR_RULES = ("per-clip", "code")


@dataclass(frozen=True)
class TrainConfig:
    cache: Path
    out: Path
    task: str = "prp"  # "prp" pretext or "classify" (fine-tuning / linear probe)
    ifm: tuple[str, ...] = ()  # IFM keys in the store, concatenated along channels; () = the only one
    split: str = "train"
    epochs: int = 20
    max_steps: int | None = None  # stop early (the schedule still spans `epochs`)
    batch_size: int = 32  # clips per step per process
    lr: float = 1e-3  # scaled linearly by `lr_rule` (see `scaled_lr`)
    lr_rule: str = "per-clip"  # one of LR_RULES
    warmup_epochs: float = 5.0  # capped at a fifth of the run, so short runs still decay
    weight_decay: float = 1e-6
    label_smoothing: float = 0.05
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # The base stride in frames of the videos, when given: the run sets sampler.stride (which
    # counts stored frames) to it divided by the store's frame stride, and refuses a source
    # stride the store does not hold (see `train.resolve_stride`).
    source_stride: int | None = None
    clip_mode: str = "stride"  # classification clips: one of sampling.CLASSIFICATION_MODES
    tmm: TMMConfig = field(default_factory=TMMConfig)  # in_dim is taken from the store
    init: Path | None = None  # a checkpoint whose TMM starts this run (fine-tuning)
    linear_probe: bool = False  # train the head only
    preload: str = "none"  # "ram" or "gpu": hold the sampled videos' tokens resident
    sync_bn: bool = False  # under torchrun, BatchNorm statistics over every rank's batch (CUDA only)
    preset: str = "ours"  # the preset the run started from (a record: the fields hold its values)
    save_every: int = 1  # epochs between checkpoints (and one at the end)
    resume: bool = False
    override: bool = False  # with resume: accept changed optimisation settings
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on CUDA, fp32 on the CPU; fp16 uses a GradScaler
    seed: int = 0
    loader_threads: int = 0  # 0: from this process's share of the cores (loader.default_threads)
    log_every: int = 50  # steps between metric lines (and finiteness checks): the host syncs then only
    compile: bool = False  # torch.compile the model
    tensorboard: bool = False  # event files in RUN/tensorboard besides metrics.jsonl and curves.png
    progress: bool = True
    local_cache: Path | None = None  # a store in a bucket: its shards kept in this folder (remote_shards.py)
    local_cache_gb: float | None = None  # that folder's bound; None: 90% of its disk's free space
    skip_damaged: bool = False  # a video with a frame failing its crc32c is left out (loader.py), not an error
    views_train: str = "all"  # stored views a clip is drawn from: one of VIEWS_TRAIN (views.py)


def fields_from(config_type, flags: dict) -> dict:
    """The entries of `flags` named like a field of `config_type` (a CLI command's locals)."""
    return {f.name: flags[f.name] for f in fields(config_type) if f.name in flags}


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain JSON types (paths as text, tuples as lists): what run folders and checkpoints hold."""
    return json.loads(json.dumps(asdict(cfg), default=str))


def config_from_dict(d: dict) -> TrainConfig:
    """The inverse of `config_to_dict`; keys a config did not have yet take their defaults."""
    d = dict(d)
    d["sampler"] = SamplerConfig(**d["sampler"])
    d["tmm"] = TMMConfig(**d["tmm"])
    d["ifm"] = tuple(d.get("ifm", ()))
    for key in ("out", "init", "local_cache"):
        d[key] = Path(d[key]) if d.get(key) else None
    d["cache"] = store_location(d["cache"]) if d.get("cache") else None  # a path, or a bucket URL
    return TrainConfig(**d)


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise AdviseCacheError(f"--seed must be >= 0 and < 2^63, got {seed}")


@dataclass(frozen=True)
class Preset:
    """A named model and recipe: what a run starts from before the fields given on top."""

    tmm: TMMConfig
    train: dict = field(default_factory=dict)  # TrainConfig fields
    sampler: dict = field(default_factory=dict)  # SamplerConfig fields


PRESETS = {
    "ours": Preset(TMMConfig()),
    "paper": Preset(TMMConfig.paper()),  # the TMM Tables 2 and 3 count, with the project's recipe
    "released": Preset(  # the released code's model and recipe (docs/FIDELITY.md, file by file)
        TMMConfig.released(),
        dict(lr_rule="code", sync_bn=True, precision="fp32", clip_mode="jitter"),
        dict(clip_start="code", clip_order="by-video"),
    ),
}


def preset_config(preset: str = "ours", tmm: dict | None = None, sampler: dict | None = None, **fields) -> TrainConfig:
    """A TrainConfig from `preset` with `fields` (and TMM and sampler fields) on top; a None
    among them means "the preset's" (every field a preset sets has a value). The store and the
    run folder may be left None, for a caller that fills them in later (a --config file)."""
    if preset not in PRESETS:
        raise AdviseCacheError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    p = PRESETS[preset]

    def given(d: dict | None) -> dict:
        return {k: v for k, v in (d or {}).items() if v is not None}

    place = {k: fields.pop(k, None) for k in ("cache", "out")}
    return TrainConfig(
        **place,
        **{**p.train, **given(fields)},
        tmm=replace(p.tmm, **given(tmm)),
        sampler=SamplerConfig(**{**p.sampler, **given(sampler)}),
        preset=preset,
    )


def clips_per_video(cfg: TrainConfig) -> int:
    """One video's clips in an epoch: PRP's and "jitter" fine-tuning's `clips_per_video`, else 1."""
    return cfg.sampler.clips_per_video if cfg.task == "prp" or cfg.clip_mode == "jitter" else 1


def scaled_lr(cfg: TrainConfig, world: int) -> float:
    """The base learning rate for a global batch of `cfg.batch_size * world` clips (`LR_RULES`)."""
    clips = cfg.batch_size * world
    if cfg.lr_rule == "per-clip":
        return cfg.lr * clips / 32
    return cfg.lr * clips / clips_per_video(cfg) / 64


def check_views_train(choice: str) -> None:
    if choice not in VIEWS_TRAIN and not choice.isdigit():
        raise AdviseCacheError(f"--views-train must be one of {', '.join(VIEWS_TRAIN)} or a number, got {choice!r}")


def check_train_config(cfg: TrainConfig) -> None:
    """Every choice and number a user passes, checked before any work: one clear line instead
    of a traceback (or a run that silently does something else)."""
    if cfg.task not in TASKS:
        raise AdviseCacheError(f"task must be one of {TASKS}, got {cfg.task!r}")
    for flag, value, choices in (
        ("--preload", cfg.preload, PRELOAD),
        ("--lr-rule", cfg.lr_rule, LR_RULES),
        ("--clip-mode", cfg.clip_mode, CLASSIFICATION_MODES),
        ("--preset", cfg.preset, tuple(PRESETS)),
    ):
        if value not in choices:
            raise AdviseCacheError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")

    def finite(name: str, value: float, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
        ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
        if not ok:
            bound = f"> {lo}" if lo_open else f">= {lo}"
            raise AdviseCacheError(
                f"{name} must be a finite number {bound}"
                + (f" and <= {hi}" if math.isfinite(hi) else "")
                + f", got {value}"
            )

    for name, value in (
        ("--epochs", cfg.epochs),
        ("--batch-size", cfg.batch_size),
        ("--save-every", cfg.save_every),
        ("--log-every", cfg.log_every),
    ):
        if value < 1:
            raise AdviseCacheError(f"{name} must be >= 1, got {value}")
    if cfg.loader_threads < 0:
        raise AdviseCacheError(f"--loader-threads must be >= 0 (0: from the cores), got {cfg.loader_threads}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise AdviseCacheError(f"--max-steps must be >= 1 (leave it out for no limit), got {cfg.max_steps}")
    check_seed(cfg.seed)
    check_views_train(cfg.views_train)
    if cfg.precision not in PRECISIONS:
        raise AdviseCacheError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.clip_mode not in CLASSIFICATION_MODES:
        raise AdviseCacheError(f"--clip-mode must be one of {', '.join(CLASSIFICATION_MODES)}, got {cfg.clip_mode!r}")
    if len(set(cfg.ifm)) != len(cfg.ifm):
        raise AdviseCacheError(f"--ifm names an image model twice: {','.join(cfg.ifm)}")
    finite("--lr", cfg.lr, 0.0, lo_open=True)
    finite("--warmup-epochs", cfg.warmup_epochs, 0.0)
    finite("--weight-decay", cfg.weight_decay, 0.0, 10.0)
    finite("--label-smoothing", cfg.label_smoothing, 0.0)
    if cfg.label_smoothing >= 1.0:
        raise AdviseCacheError(f"--label-smoothing must be < 1, got {cfg.label_smoothing}")
    if cfg.tmm.head == "bn-mlp" and cfg.batch_size < 2:
        raise AdviseCacheError("--head bn-mlp normalises over the batch: --batch-size must be at least 2")
    if cfg.task == "prp" and len(set(cfg.sampler.rates)) != len(cfg.sampler.rates):
        raise AdviseCacheError(f"--rates must differ from each other, got {','.join(map(str, cfg.sampler.rates))}")


# What makes a resumed run the same run: its optimisation and sampling. Device, threads,
# preloading and logging may change between the two halves.
RECIPE_KEYS = (
    "split",
    "epochs",
    "batch_size",
    "lr",
    "lr_rule",
    "sync_bn",
    "warmup_epochs",
    "weight_decay",
    "label_smoothing",
    "sampler",
    "clip_mode",
    "views_train",
    "linear_probe",
    "seed",
    "ifm",
    "init",
)


def changed_recipe(before: dict, now: dict) -> str:
    """What differs between two runs' recipes (`config_to_dict` forms), as flags; "" if nothing."""
    return "; ".join(
        f"--{k.replace('_', '-')} {before.get(k)!r} then, {now.get(k)!r} now"
        for k in RECIPE_KEYS
        if before.get(k) != now.get(k)
    )
