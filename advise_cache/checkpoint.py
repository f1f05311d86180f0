"""A run folder's files: the checkpoint.pt + checkpoint.json pair, metrics.jsonl, and what fits a store.

`checkpoint.pt` holds the weights, the optimiser state, the step and the run's metadata
(`CheckpointMeta`); `checkpoint.json` beside it holds the same metadata, readable without
torch. Both are written atomically. Everything in the .pt is tensors or plain Python types,
so it loads with `torch.load(weights_only=True)`: loading a checkpoint runs no pickled code.

A checkpoint fits a store when the store gives the same features it was trained on (image
model, weights, grid, dim, normalisation: `check_features`) and, for a classifier, the same
classes in the same order (`check_classes`). `load_model` does both and builds the model.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .configs import TrainConfig, config_from_dict, config_to_dict
from .errors import MismatchError
from .loader import TokenSource
from .models import ClipClassifier, TMMConfig, create_model

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
SIDECAR = "checkpoint.json"

# What makes two stores' features the same space. Frame stride and how the weights were
# named (a tag or a file) do not: the weights' checksum identifies them.
FEATURE_KEYS = ("model", "weights_sha256", "input_size", "grid", "dim", "normalisation")


@dataclass(frozen=True)
class CheckpointMeta:
    """What a run was: its config, model, classes and the features it was trained on."""

    task: str  # "prp" or "classify"
    config: TrainConfig
    tmm: TMMConfig  # as built (in_dim from the store; from --init when fine-tuning)
    num_classes: int
    classes: list[str]  # a classifier's class names in output order; PRP: its rates
    fingerprint: dict  # the store's `fingerprint` of the features trained on
    store: str
    dataset: str
    init: str | None  # the checkpoint the TMM started from
    trainable_params: int
    world: int  # processes
    precision: str
    version: str = __version__
    step: int | None = None  # None in config.json, which describes a run before its first step
    metrics: dict | None = None  # the last epoch's metrics line
    first_loss: float | None = None  # the run's first logged loss: what divergence is judged against

    def to_dict(self) -> dict:
        """Plain JSON types, in the order checkpoint.json has always shown them."""
        d = {
            "version": self.version,
            "task": self.task,
            "config": config_to_dict(self.config),
            "tmm": asdict(self.tmm),
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "fingerprint": self.fingerprint,
            "store": self.store,
            "dataset": self.dataset,
            "init": self.init,
            "trainable_params": self.trainable_params,
            "world": self.world,
            "precision": self.precision,
        }
        if self.step is not None:
            d["step"] = self.step
        if self.metrics is not None:
            d["metrics"] = self.metrics
        if self.first_loss is not None:
            d["first_loss"] = self.first_loss
        return _plain(d)

    @classmethod
    def from_dict(cls, d: dict) -> CheckpointMeta:
        d = _plain(d)
        return cls(
            task=d["task"],
            config=config_from_dict(d["config"]),
            tmm=TMMConfig(**d["tmm"]),
            num_classes=int(d["num_classes"]),
            classes=list(d.get("classes") or []),
            fingerprint=d["fingerprint"],
            store=d["store"],
            dataset=d["dataset"],
            init=d.get("init"),
            trainable_params=int(d["trainable_params"]),
            world=int(d.get("world", 1)),
            precision=d.get("precision", "fp32"),
            version=d.get("version", ""),
            step=d.get("step"),
            metrics=d.get("metrics"),
            first_loss=d.get("first_loss"),
        )


@dataclass
class Checkpoint:
    meta: CheckpointMeta
    model: dict[str, torch.Tensor]  # the ClipClassifier's state dict
    optimizer: dict | None = None
    step: int = 0
    epoch: int = 0
    scaler: dict | None = None  # the GradScaler's state, with --precision fp16


def _plain(x):
    """Python numbers, strings, lists and dicts only (numpy scalars and tuples converted)."""
    return json.loads(json.dumps(x))


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(out: Path, ckpt: Checkpoint) -> None:
    """Write checkpoint.pt, then checkpoint.json, each atomically (a kill never leaves a torn
    file). The .pt holds the metadata too and is what runs read; a kill between the two leaves
    an older checkpoint.json, which the next `load_checkpoint` rewrites."""
    meta = ckpt.meta.to_dict()
    state = {
        "model": ckpt.model,
        "optimizer": ckpt.optimizer,
        "step": int(ckpt.step),
        "epoch": int(ckpt.epoch),
        "meta": meta,
    }
    if ckpt.scaler is not None:
        state["scaler"] = ckpt.scaler
    out = Path(out)
    _write_atomic(out / CHECKPOINT, lambda p: torch.save(state, p))
    _write_atomic(out / SIDECAR, lambda p: p.write_text(json.dumps(meta, indent=2)))


# Checkpoints written before the metadata was kept to plain types hold numpy float64 metrics:
# the one pickled global they need, allowed by name.
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]
_OLD_GLOBALS = [_NUMPY_SCALAR, np.dtype, type(np.dtype(np.float64))]


def load_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint file, or the one in a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise MismatchError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_OLD_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MismatchError(f"{path} is not a readable checkpoint ({e})") from e
    if not isinstance(raw, dict) or "meta" not in raw or "model" not in raw:
        raise MismatchError(f"{path} is not an advise-cache checkpoint")
    meta = _plain(raw["meta"])
    side = path.with_name(SIDECAR)
    if path.name == CHECKPOINT and os.access(path.parent, os.W_OK):
        try:
            stale = json.loads(side.read_text()) != meta
        except (OSError, ValueError):
            stale = True
        if stale:  # left behind by a kill between the two writes of save_checkpoint
            _write_atomic(side, lambda p: p.write_text(json.dumps(meta, indent=2)))
    try:
        typed = CheckpointMeta.from_dict(meta)
    except (KeyError, TypeError, ValueError) as e:
        raise MismatchError(f"{path} has metadata this version cannot read ({e!r})") from e
    return Checkpoint(
        typed, raw["model"], raw.get("optimizer"), int(raw.get("step", 0)), int(raw.get("epoch", 0)), raw.get("scaler")
    )


def check_features(trained_on: dict, fingerprint: dict, what: str) -> None:
    """A checkpoint fits a store when its features are the same: IFM, weights, grid, dim,
    normalisation — whatever the dataset. Both arguments are `Store.fingerprint`s."""
    theirs, ours = trained_on["features"], fingerprint["features"]
    differs = sorted({k for a, b in zip(theirs, ours) for k in FEATURE_KEYS if a.get(k) != b.get(k)})
    if len(theirs) != len(ours) or differs:

        def show(fs):
            return " + ".join(
                f"{f['model']} ({f['pretrained']}, grid {f['grid']}, dim {f['dim']}, "
                f"weights {str(f['weights_sha256'])[:12]})"
                for f in fs
            )

        detail = f" (differs in: {', '.join(differs)})" if differs else ""
        raise MismatchError(f"{what} was trained on features {show(theirs)}; this store gives {show(ours)}{detail}")


def check_classes(trained: list[str], classes: list[str], what: str, where: str) -> None:
    """A classifier's outputs mean the class names it was trained with, in their order."""
    theirs = list(trained or [])
    if theirs and theirs != list(classes):
        i = next((i for i, (a, b) in enumerate(zip(theirs, classes)) if a != b), min(len(theirs), len(classes)))
        got = lambda xs: repr(xs[i]) if i < len(xs) else "nothing"  # noqa: E731
        raise MismatchError(
            f"{what} was trained for other classes than {where} holds (class {i}: "
            f"{got(theirs)} there, {got(classes)} here)"
        )


def token_source(meta: CheckpointMeta, store, what: str) -> TokenSource:
    """The store's tokens a checkpoint reads (its image models, where the store has them all),
    checked to be the features it was trained on."""
    trained = meta.fingerprint["ifms"]
    source = TokenSource(store, trained if set(trained) <= set(store.ifm_keys()) else None)
    fingerprint = store.fingerprint(source.keys)
    check_features(meta.fingerprint, fingerprint, what)
    was, now = (int(f["features"][0].get("frame_stride") or 1) for f in (meta.fingerprint, fingerprint))
    if was != now:  # the same features, but the clip stride counts stored frames
        stride = meta.config.sampler.stride
        log.warning(
            "%s: its clip stride, %d stored frames, was %d frames of the video on the store it was "
            "trained on (frame stride %d) and is %d here (frame stride %d)",
            what,
            stride,
            stride * was,
            was,
            stride * now,
            now,
        )
    return source


def load_model(checkpoint: Path, store, device: torch.device) -> tuple[ClipClassifier, CheckpointMeta, TokenSource]:
    """A checkpoint's model in eval mode on `device`, checked against the store it is to be
    used on, with its metadata and the store's tokens it reads."""
    ckpt = load_checkpoint(checkpoint)
    source = token_source(ckpt.meta, store, f"checkpoint {checkpoint}")
    model = create_model(ckpt.meta.tmm, ckpt.meta.num_classes)
    model.load_state_dict(ckpt.model)
    return model.to(device).eval(), ckpt.meta, source


def append_metrics(path: Path, record: dict) -> None:
    """One line of metrics.jsonl."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint a resumed run starts from."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line torn by a kill or a full disk: nothing after it counts
            break
        if record.get("step", 0) <= step:
            keep.append(line)
    path.write_text("".join(line + "\n" for line in keep))
