"""A run folder's files: the checkpoint.pt + checkpoint.json pair, metrics.jsonl, and what fits a store.

`checkpoint.pt` holds the weights, the optimiser state, the step and the run's metadata
(`CheckpointMeta`); `checkpoint.json` beside it holds the same metadata, readable without
torch. Both are written atomically. Everything in the .pt is tensors or plain Python types,
so it loads with `torch.load(weights_only=True)`: loading a checkpoint runs no pickled code.

A checkpoint fits a store when the store gives the same features it was trained on (image
model, weights, grid, dim, normalisation: `check_features`) and, for a classifier, the same
classes in the same order (`check_classes`); `trained.load_model` checks both and builds the model.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__, atomic
from .configs import TMMConfig, TrainConfig, config_from_dict, config_to_dict
from .errors import AdviseCacheError, MismatchError, first_line, writing

CHECKPOINT = "checkpoint.pt"
SIDECAR = "checkpoint.json"
LOCK = ".lock"  # held (flock) by the process training into the folder
# What to do after a storage fault mid-run: nothing written before it is lost.
RESUME = "; then add --resume to the same command to continue from the last checkpoint"

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


def _write_atomic(path: Path, data) -> None:
    """Replace `path` with `data` whole or not at all: a kill or a full disk leaves the old file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        atomic.write_durable(tmp, [data])
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a cut temporary file would only hold the space
        raise


def _json(d: dict) -> bytes:
    return json.dumps(d, indent=2).encode()


def save_checkpoint(out: Path, ckpt: Checkpoint) -> None:
    """Write checkpoint.pt, then checkpoint.json, each atomically (a kill never leaves a torn
    file). The .pt holds the metadata too and is what runs read; a kill between the two leaves
    an older checkpoint.json, which the next `load_checkpoint` rewrites. The .pt is serialised in
    memory first, so a full disk is an OSError of the write (torch's own writer reports it as an
    internal assertion)."""
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
    buf = io.BytesIO()
    torch.save(state, buf)
    for name, data in ((CHECKPOINT, buf.getbuffer()), (SIDECAR, _json(meta))):
        with writing(out / name, RESUME):
            _write_atomic(out / name, data)


# Checkpoints written before the metadata was kept to plain types hold numpy float64 metrics:
# the one pickled global they need, allowed by name.
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]
_OLD_GLOBALS = [_NUMPY_SCALAR, np.dtype, type(np.dtype(np.float64))]


def load_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint file, or the one in a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if path.name == SIDECAR or path.suffix == ".json":
        raise MismatchError(
            f"{path} is a checkpoint's readable metadata; pass the {CHECKPOINT} beside it or its folder"
        )
    if not path.is_file():
        raise MismatchError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_OLD_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MismatchError(f"{path} is not a readable checkpoint ({first_line(e, 200)})") from e
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
            with writing(side):
                _write_atomic(side, _json(meta))
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


class RunFolder:
    """A run folder held by one process: an exclusive flock on RUN/.lock, which the kernel drops
    when the process ends, however it ends (as extraction's claims). Under DDP rank 0 holds it.

    A second run into a held folder is refused at once instead of interleaving its metrics and
    checkpoints with the first's. A folder this process created and left empty (a run refused
    before its first write) is removed again on release."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.created = not self.out.exists()
        with writing(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise AdviseCacheError(
                f"{self.out} is in use by another run (it holds {self.out / LOCK}); wait for it to end, or use "
                "another --out"
            ) from None

    def release(self) -> None:
        if self.fd < 0:
            return
        if self.created and [p.name for p in self.out.iterdir()] == [LOCK]:
            (self.out / LOCK).unlink()
            self.out.rmdir()
        os.close(self.fd)  # drops the lock
        self.fd = -1


def start_metrics(out: Path, config: dict) -> None:
    """A new run's config.json and an empty metrics.jsonl."""
    for name, data in (("config.json", _json(config)), ("metrics.jsonl", b"")):
        with writing(out / name, RESUME):
            _write_atomic(out / name, data)


def append_metrics(path: Path, record: dict) -> None:
    """One line of metrics.jsonl, whole or not at all: a write the disk cuts short is undone."""
    with writing(path, RESUME):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(fd).st_size
        try:
            atomic.write_all(fd, [(json.dumps(record) + "\n").encode()])
        except OSError:
            os.ftruncate(fd, size)
            raise
        finally:
            os.close(fd)


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
    with writing(path, RESUME):
        _write_atomic(path, "".join(line + "\n" for line in keep).encode())
