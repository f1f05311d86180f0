"""What a run shows of its progress: metrics.jsonl lines, curves.png, TensorBoard event files.

    log = RunLog(Path("runs/prp"), tensorboard=True, first_step=0)
    log.step({"kind": "step", "step": 50, "loss": 1.2, ...})   # a line; a TensorBoard scalar
    log.epoch({"kind": "epoch", "epoch": 0, ...})              # a line; curves.png redrawn
    plot_curves(Path("runs/prp"))                              # curves.png from metrics.jsonl

Drawn with PIL, not matplotlib: training redraws it at every epoch's end, and matplotlib's
import and one redraw cost about a second of the training loop's thread each time; this takes
milliseconds. Per epoch, the mean training loss and accuracy (solid); the logged steps' losses
behind them (faint); and test top-1 wherever `evaluate` scored a checkpoint of the run (dots).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .checkpoint import append_metrics
from .errors import AdviseCacheError

log = logging.getLogger(__name__)

CURVES = "curves.png"
PANEL = (420, 260)  # width, height of each of the two panels, in pixels
MARGIN = (52, 16, 34, 28)  # left, right, bottom, top
TRAIN, STEPS, TEST, AXES = (31, 119, 180), (174, 199, 232), (214, 39, 40), (90, 90, 90)


def read_curves(metrics: Path) -> dict[str, list[tuple[float, float]]]:
    """(x, y) series from a metrics.jsonl: the epochs' loss and accuracy (x = epochs done), the
    steps' loss (x = fraction of epochs), and evaluations' top-1 (x = the checkpoint's epochs)."""
    series: dict[str, list[tuple[float, float]]] = {"loss": [], "acc": [], "step_loss": [], "test_acc": []}
    steps_per_epoch = None
    for line in metrics.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # a line torn by a kill: what follows is not the run's
            break
        kind = r.get("kind")
        if kind == "epoch":
            series["loss"].append((r["epoch"] + 1, r["loss"]))
            series["acc"].append((r["epoch"] + 1, r["acc"]))
            steps_per_epoch = steps_per_epoch or r["step"] / (r["epoch"] + 1)
        elif kind == "step":
            series["step_loss"].append((r["step"], r["loss"]))
        elif kind == "eval":
            series["test_acc"].append((r["epochs"], r["top1"]))
    per = steps_per_epoch or max([s for s, _ in series["step_loss"]] or [1])
    series["step_loss"] = [(s / per, v) for s, v in series["step_loss"]]
    return series


def plot_curves(run: Path) -> Path | None:
    """Draw RUN/curves.png from RUN/metrics.jsonl (None when there is nothing to draw yet)."""
    run = Path(run)
    s = read_curves(run / "metrics.jsonl")
    if not s["loss"] and not s["step_loss"]:
        return None
    font = ImageFont.load_default(size=12)
    img = Image.new("RGB", (2 * PANEL[0], PANEL[1]), "white")
    _panel(
        img,
        font,
        0,
        "loss (faint: logged steps; solid: epoch means)",
        [(s["step_loss"], STEPS, False), (s["loss"], TRAIN, False)],
    )
    acc = [(s["acc"], TRAIN, False), (s["test_acc"], TEST, True)]
    _panel(img, font, PANEL[0], "accuracy (line: train epochs; red dots: evaluate's test top-1)", acc, lo=0.0, hi=1.0)
    path = run / CURVES
    tmp = path.with_name(f".{CURVES}.tmp")
    img.save(tmp, format="png")
    tmp.replace(path)  # a reader never sees half a picture
    return path


class RunLog:
    """The main process's record of a run: every metrics line goes to metrics.jsonl and, with
    `tensorboard`, to event files in RUN/tensorboard (a resumed run drops the events past its
    checkpoint, as it drops the lines); curves.png is redrawn at each epoch's end. A curve that
    cannot be drawn is a warning: the run goes on."""

    def __init__(self, run: Path, tensorboard: bool = False, first_step: int = 0):
        self.run, self.writer = Path(run), None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise AdviseCacheError(
                    "--tensorboard needs the tensorboard package: pip install 'advise-cache[tensorboard]'"
                ) from e
            self.writer = SummaryWriter(self.run / "tensorboard", purge_step=first_step or None)

    def step(self, record: dict) -> None:
        append_metrics(self.run / "metrics.jsonl", record)
        self._scalars("step", record, record["step"])

    def epoch(self, record: dict) -> None:
        append_metrics(self.run / "metrics.jsonl", record)
        self._scalars("epoch", record, record["step"])
        try:
            plot_curves(self.run)
        except OSError as e:
            log.warning("could not draw %s: %s", self.run / CURVES, e.strerror or e)

    def _scalars(self, kind: str, record: dict, step: int) -> None:
        if self.writer is None:
            return
        for key in ("loss", "acc", "lr", "clips_per_s"):
            if key in record:
                self.writer.add_scalar(f"{kind}/{key}", record[key], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _panel(img, font, x0: int, title: str, lines, lo: float | None = None, hi: float | None = None) -> None:
    draw = ImageDraw.Draw(img)
    w, h = PANEL
    left, right, bottom, top = MARGIN
    points = [p for pts, _, _ in lines for p in pts if math.isfinite(p[1])]
    xs = [x for x, _ in points] or [0.0, 1.0]
    ys = [y for _, y in points] or [0.0, 1.0]
    x_lo, x_hi = 0.0, max(max(xs), 1.0)
    y_lo = min(ys) if lo is None else lo
    y_hi = max(ys) if hi is None else hi
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5

    def at(x: float, y: float) -> tuple[float, float]:
        px = x0 + left + (x - x_lo) / (x_hi - x_lo) * (w - left - right)
        py = h - bottom - (y - y_lo) / (y_hi - y_lo) * (h - top - bottom)
        return px, py

    draw.rectangle([x0 + left, top, x0 + w - right, h - bottom], outline=AXES)
    draw.text((x0 + left, 6), title, fill="black", font=font)
    for y in (y_lo, y_hi):
        draw.text((x0 + left - 4, at(0, y)[1]), f"{y:.3g}", fill=AXES, font=font, anchor="rm")
    for x in (x_lo, x_hi):
        draw.text((at(x, y_lo)[0], h - bottom + 4), f"{x:g}", fill=AXES, font=font, anchor="ma")
    draw.text((x0 + (left + w - right) / 2, h - 14), "epoch", fill=AXES, font=font, anchor="ma")
    for pts, colour, dots in lines:
        xy = [at(x, y) for x, y in pts if math.isfinite(y)]
        if dots or len(xy) == 1:
            for px, py in xy:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        elif xy:
            draw.line(xy, fill=colour, width=2)
