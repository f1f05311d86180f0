"""The paper's evaluation protocol as one resumable function: PRP pretraining, the fine-tune from it
(Acc_ft), the same fine-tune from a random TMM (ΔAcc = Acc_ft - Acc_scratch), and, beside it, a
fine-tune from a random TMM for as many optimisation steps as PRP and the fine-tune together (the
compute-matched scratch run: what the PRP steps would have bought spent on the labels instead).

    result = run_protocol(Path("runs/x"), prp=TrainConfig(..., task="prp"), finetune=TrainConfig(..., task="classify"))
    result.delta, result.delta_matched, result.stages["ft"].top1

Each stage trains in its own folder under `folder` (prp/, ft/, scratch/, scratch-matched/) with
`resume=True`, so a killed protocol continues where it stopped and a finished training returns its
metrics; each evaluation is kept in its folder's eval.json, the whole result in protocol.json.
`estimate_protocol` times the first steps of each training, an epoch's end and one evaluation,
for a study's ETA.
The configs' `out`, `init`, `resume` and (for the matched run) `epochs` and `max_steps` are the
protocol's; everything else is the caller's. A TMM with nothing to pretrain (`tmm="none"`, average
pooling) runs the scratch stage alone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .checkpoint import CHECKPOINT
from .configs import TrainConfig

log = logging.getLogger(__name__)

STAGES = ("prp", "ft", "scratch", "scratch-matched")
PROBE_STEPS = 20  # steps of each training estimate_protocol times
RESULT = "protocol.json"


@dataclass(frozen=True)
class Stage:
    """One training and, for a classifier, its evaluation on the test split."""

    steps: int
    train_acc: float  # of the last epoch (PRP: the rate accuracy)
    top1: float | None = None
    top5: float | None = None
    videos: int | None = None  # test videos


@dataclass(frozen=True)
class ProtocolResult:
    stages: dict  # STAGES name -> Stage, for the stages that ran

    def top1(self, name: str) -> float | None:
        stage = self.stages.get(name)
        return stage.top1 if stage else None

    @property
    def acc_ft(self) -> float | None:
        return self.top1("ft")

    @property
    def acc_scratch(self) -> float:
        return self.stages["scratch"].top1

    @property
    def delta(self) -> float | None:
        """ΔAcc: Acc_ft minus the same fine-tune from a random TMM."""
        return None if self.acc_ft is None else self.acc_ft - self.acc_scratch

    @property
    def delta_matched(self) -> float | None:
        """Acc_ft minus a fine-tune from a random TMM as long as PRP and the fine-tune together."""
        matched = self.top1("scratch-matched")
        return None if self.acc_ft is None or matched is None else self.acc_ft - matched

    def to_dict(self) -> dict:
        return {name: asdict(stage) for name, stage in self.stages.items()}

    @classmethod
    def from_dict(cls, d: dict) -> ProtocolResult:
        return cls({name: Stage(**stage) for name, stage in d.items()})


def matched_config(finetune: TrainConfig, ft_steps: int, target: int) -> TrainConfig:
    """The fine-tune stretched to `target` steps: its epochs scaled up (rounded up to a whole
    epoch, so the cosine schedule spans the run) and the run cut at exactly `target` steps."""
    epochs = math.ceil(finetune.epochs * target / max(ft_steps, 1))
    return replace(finetune, init=None, epochs=epochs, max_steps=target)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _run_stage(cfg: TrainConfig, views: int, split: str) -> Stage:
    """Train (or resume, or read back) one stage; evaluate a classifier once (eval.json)."""
    from .evaluate import evaluate
    from .train import train

    metrics = train(replace(cfg, resume=True))
    if cfg.task == "prp":
        return Stage(metrics["step"], metrics["acc"])
    path = cfg.out / "eval.json"
    if not path.exists():
        result = evaluate(cfg.cache, cfg.out, views=views, split=split, device=cfg.device)
        _write_json(path, {k: v for k, v in result.items() if k != "confusion"})
    e = json.loads(path.read_text())
    return Stage(metrics["step"], metrics["acc"], e["top1"], e["top5"], e["videos"])


def run_protocol(
    folder: Path,
    prp: TrainConfig,
    finetune: TrainConfig,
    views: int = 4,
    split: str = "test",
    matched: bool = True,
) -> ProtocolResult:
    """PRP (`prp`) -> fine-tune from it, from scratch and (with `matched`) from scratch for PRP's
    and the fine-tune's steps together (each `finetune`) -> evaluate on `split` with `views` clips
    a video. Resumable; a finished protocol returns its protocol.json without touching a run."""
    folder = Path(folder)
    if (folder / RESULT).exists():
        return ProtocolResult.from_dict(json.loads((folder / RESULT).read_text()))
    if prp.task != "prp" or finetune.task != "classify":
        raise ValueError(f"run_protocol needs a prp and a classify config, got {prp.task} and {finetune.task}")
    folder.mkdir(parents=True, exist_ok=True)
    stages: dict[str, Stage] = {}
    pretrain = finetune.tmm.tmm != "none"
    if pretrain:
        stages["prp"] = _run_stage(replace(prp, out=folder / "prp"), views, split)
        ft = replace(finetune, out=folder / "ft", init=folder / "prp" / CHECKPOINT)
        stages["ft"] = _run_stage(ft, views, split)
    stages["scratch"] = _run_stage(replace(finetune, out=folder / "scratch", init=None), views, split)
    if pretrain and matched:
        target = stages["prp"].steps + stages["ft"].steps
        cfg = matched_config(replace(finetune, out=folder / "scratch-matched"), stages["ft"].steps, target)
        stages["scratch-matched"] = _run_stage(cfg, views, split)
    result = ProtocolResult(stages)
    _write_json(folder / RESULT, result.to_dict())
    log.info(
        "%s: %s", folder, ", ".join(f"{k} {v.train_acc if v.top1 is None else v.top1:.3f}" for k, v in stages.items())
    )
    return result


@dataclass(frozen=True)
class _Timing:
    """What the first steps of a training cost, in seconds (`_time_stage`)."""

    setup: float  # from the call to the end of the first step
    step: float  # each step after it
    epoch_end: float  # after the last step: the checkpoint, the curves (each epoch pays it)
    evaluation: float
    epoch_steps: int

    def stage(self, epochs: int, max_steps: int | None) -> float:
        """Seconds of a training of `epochs` (at most `max_steps` steps), evaluated once."""
        steps = min(epochs * self.epoch_steps, max_steps or math.inf)
        epochs = min(epochs, math.ceil(steps / self.epoch_steps))
        return self.setup + (steps - 1) * self.step + epochs * self.epoch_end + self.evaluation


def _time_stage(cfg: TrainConfig, views: int, split: str) -> _Timing:
    """The first steps of `cfg` (at most PROBE_STEPS) in cfg.out, timed step by step, and, for a
    classifier, one evaluation."""
    from .evaluate import evaluate
    from .train import epoch_steps, train

    per_epoch = epoch_steps(cfg)
    probe = min(per_epoch, PROBE_STEPS, cfg.max_steps or per_epoch)
    stamps = [time.perf_counter()]
    train(replace(cfg, epochs=1, max_steps=probe, resume=False), on_step=lambda *_: stamps.append(time.perf_counter()))
    end = time.perf_counter()
    if cfg.task == "classify":
        evaluate(cfg.cache, cfg.out, views=views, split=split, device=cfg.device)
    step = (stamps[-1] - stamps[1]) / (len(stamps) - 2) if len(stamps) > 2 else stamps[1] - stamps[0]
    return _Timing(stamps[1] - stamps[0], step, end - stamps[-1], time.perf_counter() - end, per_epoch)


def estimate_protocol(
    scratch: Path, prp: TrainConfig, finetune: TrainConfig, views: int = 4, split: str = "test", matched: bool = True
) -> dict:
    """Seconds each stage of `run_protocol(folder, prp, finetune, views, split, matched)` would
    take (STAGES name -> seconds), from the first steps of PRP and of the fine-tune (at most
    PROBE_STEPS each, timed step by step) and one evaluation, trained in `scratch` (the caller
    removes it): a stage costs the setup and evaluation measured, its steps (`epochs` x the
    steps of an epoch, at most `max_steps`) at the measured rate, and each epoch's end (its
    checkpoint and curves) as measured once."""
    scratch = Path(scratch)
    ft = _time_stage(replace(finetune, out=scratch / "ft", init=None), views, split)
    fine_tune = ft.stage(finetune.epochs, finetune.max_steps)
    if finetune.tmm.tmm == "none":
        return {"scratch": fine_tune}
    p = _time_stage(replace(prp, out=scratch / "prp", init=None), views, split)
    stages = {"prp": p.stage(prp.epochs, prp.max_steps), "ft": fine_tune, "scratch": fine_tune}
    if matched:
        prp_steps = min(prp.epochs * p.epoch_steps, prp.max_steps or math.inf)
        ft_steps = min(finetune.epochs * ft.epoch_steps, finetune.max_steps or math.inf)
        longer = matched_config(finetune, int(ft_steps), int(prp_steps + ft_steps))
        stages["scratch-matched"] = ft.stage(longer.epochs, longer.max_steps)
    return stages
