"""What a training run is: `TrainConfig`, and its round trip through plain JSON types.

The trainer runs one; the CLI builds one from flags (the defaults here are the CLI's); every
run folder and checkpoint records one, and readers of a checkpoint (evaluate, embed,
visualize) get it back typed through `config_from_dict`. It lives apart from the trainer so
that reading a checkpoint never imports the training loop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .models import TMMConfig
from .sampling import SamplerConfig

TASKS = ("prp", "classify")
PRELOAD = ("none", "ram", "gpu")


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
    # The base stride in frames of the videos, when given: the run sets sampler.stride (which
    # counts stored frames) to it divided by the store's frame stride, and refuses a source
    # stride the store does not hold (see `train.resolve_stride`).
    source_stride: int | None = None
    clip_mode: str = "stride"  # classification clips: "stride" or "segment"
    tmm: TMMConfig = field(default_factory=TMMConfig)  # in_dim is taken from the store
    init: Path | None = None  # a checkpoint whose TMM starts this run (fine-tuning)
    linear_probe: bool = False  # train the head only
    preload: str = "none"  # "ram" (pinned on CUDA) or "gpu": hold the sampled videos' tokens resident
    save_every: int = 1  # epochs between checkpoints (and one at the end)
    resume: bool = False
    override: bool = False  # with resume: accept changed optimisation settings
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on CUDA, fp32 on the CPU; fp16 uses a GradScaler
    seed: int = 0
    loader_threads: int = 4
    log_every: int = 50  # steps between metric lines (and finiteness checks): the host syncs then only
    compile: bool = False  # torch.compile the model
    progress: bool = True


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain JSON types (paths as text, tuples as lists): what run folders and checkpoints hold."""
    return json.loads(json.dumps(asdict(cfg), default=str))


def config_from_dict(d: dict) -> TrainConfig:
    """The inverse of `config_to_dict`; keys a config did not have yet take their defaults."""
    d = dict(d)
    d["sampler"] = SamplerConfig(**d["sampler"])
    d["tmm"] = TMMConfig(**d["tmm"])
    d["ifm"] = tuple(d.get("ifm", ()))
    for key in ("cache", "out", "init"):
        d[key] = Path(d[key]) if d.get(key) else None
    return TrainConfig(**d)
