"""Stage-1 extraction benchmark: decoding, the image model and the whole pipeline side by side.

    .venv/bin/python pipelines/bench_extract.py            # or `make bench-extract`; a few minutes
    .venv/bin/python pipelines/bench_extract.py --device cuda --workers 12 --frames 8192
    .venv/bin/python pipelines/bench_extract.py --models test-vit --no-write   # quick look

It generates its own videos (the synthetic set, 320x240 mpeg4) and, for each image model on
each device, times in one run on the same videos:

- decode: `video.decode_frames` (decode, resize, centre crop) in as many spawned worker
  processes as the full run uses, the crops shipped back to the parent as in the run;
- ifm: `IFM.encode` on those crops, batched per video exactly as `extract` batches them;
- full: `extract.extract_videos` into a fresh store, end to end (model build, probing and
  process start included) and steady (from the first video written to the last; the only
  hook is a wrapper around `IFMArrays.write_video` that notes when each video is stored).

The three run one after the other in rounds (--repeats, while a model has had less than
--max-seconds), and each number is the best round's: on a shared machine the least
disturbed run is the closest to what the code does. ViT-B-16 runs about 1 frame/s in fp32
on 2 CPU cores, so by default it gets 64 frames and one round there.

Then, for the tokens each model produced, every codec in `store.CODECS`: compression, write
speed and random single-frame reads through plain zarr and through `IFMArrays.read_frames`.
Weights are random (`pretrained="none"`): speed does not depend on them, compression may.
The tables are printed and written into BENCHMARKS.md between the bench_extract markers; the
rest of that file is left alone. Compare ratios within one run: the CPU machine is shared.
"""

from __future__ import annotations

# Spawned decode workers import this file again: keep its top level free of torch.
import argparse
import csv
import datetime
import logging
import math
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
from benchmd import loadavg, package_version, read_lines, write_section

REPO = Path(__file__).resolve().parents[1]
VIDEO_FRAMES = (16, 32)  # frames per generated video: short, so a small budget spans several
# Frames per model when --frames is not given: ViT-B-16 runs about 1 frame/s in fp32 on
# 2 CPU cores, test-vit thousands; on a GPU every step should last seconds.
DEFAULT_FRAMES = {"cpu": {"test-vit": 2048}}
DEFAULT_OTHER = {"cpu": 64, "cuda": 8192}
TARGET = 0.9  # full extraction should reach this fraction of the model's own speed


@dataclass
class Row:
    model: str
    device: str
    precision: str
    videos: int
    frames: int
    decode_fps: float
    ifm_fps: float
    full_fps: float  # end to end, as `extract_videos` reports it
    steady_fps: float  # between the first and the last video written
    bytes_per_frame: float
    rounds: int = 0
    ifm_cores: float = 0.0  # CPU seconds per second: how much of the machine we got
    full_cores: float = 0.0


@dataclass
class CodecRow:
    model: str
    codec: str
    frames: int
    raw_per_frame: int
    stored_per_frame: float
    write_mb_s: float
    zarr_fps: float
    store_fps: float


# -- the video set ---------------------------------------------------------------------------
def make_videos(
    root: Path, frames: int, width: int, height: int, seed: int
) -> list[tuple[Path, int]]:
    """Enough synthetic videos for `frames`, interleaved by class, with their frame counts."""
    from advise_cache.synthetic import generate_synthetic
    from advise_cache.video import probe_video

    per_class = math.ceil(1.2 * frames / (sum(VIDEO_FRAMES) / 2) / 8)  # 8 classes, 20% margin
    generate_synthetic(
        root,
        family="both",
        seed=seed,
        train_per_class=per_class,
        test_per_class=0,
        min_frames=VIDEO_FRAMES[0],
        max_frames=VIDEO_FRAMES[1],
        width=width,
        height=height,
    )
    paths = sorted(root.glob("train/*/*.mp4"), key=lambda p: (p.stem[-3:], p.parent.name))
    return [(p, probe_video(p).frames) for p in paths]


def take(videos: list[tuple[Path, int]], frames: int) -> list[tuple[Path, int]]:
    """The first videos that together hold at least `frames` frames (all, if they hold fewer)."""
    out, total = [], 0
    for video in videos:
        if total >= frames:
            break
        out.append(video)
        total += video[1]
    return out


def take_frames(clips: list[np.ndarray], frames: int) -> list[np.ndarray]:
    """The first clips holding at least `frames` frames, as float16 (what the store keeps)."""
    counts = np.cumsum([len(c) for c in clips])
    keep = int(np.searchsorted(counts, frames)) + 1
    return [c.astype(np.float16) for c in clips[:keep]]


def write_manifest(path: Path, videos: list[tuple[Path, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for p, _ in videos:
            w.writerow([str(p), p.parent.name, "train"])
    return path


# -- the three measurements ------------------------------------------------------------------
def time_decode(paths: list[Path], spec, workers: int) -> tuple[float, list[np.ndarray]]:
    """Seconds to decode every video with `workers` processes (0: in this one)."""
    from advise_cache.video import decode_or_reason, init_worker

    names = [str(p) for p in paths]
    if workers <= 0:
        t0 = time.perf_counter()
        out = [decode_or_reason(p, spec, 1) for p in names]
        seconds = time.perf_counter() - t0
    else:
        # The same pool as extract's: spawned, stderr silenced. Start every worker first, so
        # the clock sees decoding, not interpreter start-up (which the full run does pay).
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker) as pool:
            list(pool.map(time.sleep, [0.5] * workers))
            t0 = time.perf_counter()
            out = list(pool.map(decode_or_reason, names, repeat(spec), repeat(1)))
            seconds = time.perf_counter() - t0
    failed = [r for r in out if isinstance(r, str)]
    if failed:
        raise RuntimeError(f"decoding a generated video failed: {failed[0]}")
    return seconds, out


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (decode workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_ifm(
    ifm, clips: list[np.ndarray], batch_size: int
) -> tuple[float, float, list[np.ndarray]]:
    """Seconds and cores used by the model alone on pre-decoded crops, batched per video as
    `extract` does."""
    import torch

    ifm.encode(clips[0][:batch_size])  # first call: allocations, kernel choice, lazy init
    t0, c0 = time.perf_counter(), cpu_seconds()
    tokens = [
        np.concatenate(
            [
                ifm.encode(clip[i : i + batch_size]).to("cpu", torch.float32).numpy()
                for i in range(0, len(clip), batch_size)
            ]
        )
        for clip in clips
    ]
    seconds = time.perf_counter() - t0
    return seconds, (cpu_seconds() - c0) / seconds, tokens


def time_full(cfg) -> tuple[object, float, float]:
    """Run `extract_videos(cfg)`; return its summary, the steady frames/s and the cores used."""
    from advise_cache.extract import extract_videos
    from advise_cache.store import IFMArrays

    stamps: list[tuple[float, int]] = []
    original = IFMArrays.write_video

    def write_video(self, video, tokens):
        written = original(self, video, tokens)
        stamps.append((time.perf_counter(), len(tokens)))
        return written

    IFMArrays.write_video = write_video
    c0 = cpu_seconds()
    try:
        summary = extract_videos(cfg)
    finally:
        IFMArrays.write_video = original
    if summary.failed:
        raise RuntimeError(f"extraction failed on generated videos: {summary.failed[:2]}")
    steady = float("nan")
    if len(stamps) >= 2 and stamps[-1][0] > stamps[0][0]:
        steady = sum(n for _, n in stamps[1:]) / (stamps[-1][0] - stamps[0][0])
    return summary, steady, (cpu_seconds() - c0) / summary.seconds


def bench_model(model: str, device: str, videos, work: Path, args):
    """Rounds of decode, IFM alone and full, interleaved; the best of each is kept, since on a
    shared machine the least disturbed run is the closest to what the code can do."""
    import torch

    from advise_cache.extract import ExtractConfig, ifm_key
    from advise_cache.ifm import create_ifm

    tag = f"{ifm_key(model)}-{device}"
    paths = [p for p, _ in videos]
    frames = sum(n for _, n in videos)
    ifm = create_ifm(model, "none", device, "auto", args.seed)
    cfg = ExtractConfig(
        dataset="manifest",
        root=write_manifest(work / "sets" / tag / "manifest.csv", videos),
        out=work / "stores" / f"{tag}.zarr",
        model=model,
        pretrained="none",
        workers=args.workers,
        device=device,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=False,
    )
    best = Row(model, device, ifm.precision, len(videos), frames, 0.0, 0.0, 0.0, float("nan"), 0.0)
    first_tokens, t0 = None, time.perf_counter()
    for rounds in range(1, args.repeats + 1):
        dec_s, clips = time_decode(paths, ifm.spec, args.workers)
        if sum(len(c) for c in clips) != frames:
            raise RuntimeError(
                f"decoded {sum(len(c) for c in clips)} frames, the probe said {frames}"
            )
        ifm_s, ifm_cores, tokens = time_ifm(ifm, clips, args.batch_size)
        del clips
        if first_tokens is None:  # the codec test needs only `codec_frames` of them
            first_tokens = take_frames(tokens, args.codec_frames)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        shutil.rmtree(cfg.out, ignore_errors=True)
        summary, steady, full_cores = time_full(cfg)
        say(
            f"[{tag}] round {rounds}: {frames} frames; decode {frames / dec_s:.1f}, ifm "
            f"{frames / ifm_s:.1f}, full {summary.frames / summary.seconds:.1f}, "
            f"steady {steady:.1f} frames/s"
        )
        best.decode_fps = max(best.decode_fps, frames / dec_s)
        if frames / ifm_s > best.ifm_fps:
            best.ifm_fps, best.ifm_cores = frames / ifm_s, ifm_cores
        if summary.frames / summary.seconds > best.full_fps:
            best.full_fps, best.full_cores = summary.frames / summary.seconds, full_cores
        if math.isfinite(steady) and (math.isnan(best.steady_fps) or steady > best.steady_fps):
            best.steady_fps = steady
        best.bytes_per_frame = summary.bytes / summary.frames
        best.rounds = rounds
        if time.perf_counter() - t0 > args.max_seconds:
            break
    info = ifm.info()
    del ifm
    shutil.rmtree(cfg.out, ignore_errors=True)
    return best, first_tokens, info


# -- codecs ----------------------------------------------------------------------------------
def bench_codecs(
    model: str, tokens: list[np.ndarray], info: dict, work: Path, frames: int, reads: int, seed: int
) -> list[CodecRow]:
    """Write the same tokens with every codec into a store; time writing and random reads."""
    import zarr

    from advise_cache.extract import ifm_key
    from advise_cache.store import CODECS, create_store, open_store

    clips, total, i = [], 0, 0
    while total < frames:  # cycle the videos: chunks are compressed one frame at a time
        clip = tokens[i % len(tokens)].astype(np.float16, copy=False)
        clips.append(clip)
        total += len(clip)
        i += 1
    n = len(clips)
    table = {
        "name": [f"v{v:05d}" for v in range(n)],
        "path": [""] * n,
        "split": ["train"] * n,
        "label": [0] * n,
        "fps": [25.0] * n,
        "source_frames": [len(c) for c in clips],
        "probe_error": [""] * n,
    }
    rng = np.random.default_rng(seed)
    starts = np.cumsum([0] + [len(c) for c in clips])
    draws = rng.integers(0, total, reads)  # uniform over frames, like a clip sampler
    videos = np.searchsorted(starts, draws, "right") - 1
    picks = [(int(v), int(r - starts[v])) for r, v in zip(draws, videos, strict=True)]
    raw = clips[0][0].nbytes
    key = ifm_key(model)
    rows = []
    for codec in CODECS:
        path = work / "codecs" / f"{key}-{codec}.zarr"
        create_store(path, "bench", str(work), ["bench"], table)
        arrays = open_store(path, mode="a").add_ifm(key, info, 1, 64, codec=codec)
        t0 = time.perf_counter()
        stored = sum(arrays.write_video(v, clip) for v, clip in enumerate(clips))
        write_s = time.perf_counter() - t0

        plain = zarr.open_array(path / "ifm" / key / "tokens", mode="r")
        rows_at = [int(arrays.offset[v]) + r for v, r in picks]
        for row in rows_at[:8]:  # warm: open files, shard indexes
            plain[row]
        t0 = time.perf_counter()
        for row in rows_at:
            plain[row]
        zarr_s = time.perf_counter() - t0

        reader = open_store(path).ifm(key)
        for v, r in picks[:8]:
            reader.read_frames(v, [r])
        t0 = time.perf_counter()
        for v, r in picks:
            reader.read_frames(v, [r])
        store_s = time.perf_counter() - t0
        v, r = picks[0]
        if not np.array_equal(reader.read_frames(v, [r])[0], clips[v][r]):
            raise RuntimeError(f"codec {codec}: a frame read back differs from the one written")
        say(f"[{key}] codec {codec}: {stored / total / 1e3:.1f} kB/frame, write {write_s:.2f} s")
        rows.append(
            CodecRow(
                model,
                codec,
                total,
                raw,
                stored / total,
                total * raw / write_s / 1e6,
                reads / zarr_s,
                reads / store_s,
            )
        )
        shutil.rmtree(path, ignore_errors=True)
    return rows


# -- the machine -----------------------------------------------------------------------------
def describe_machine(work: Path, devices: list[str]) -> dict[str, str]:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in read_lines("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem = next(
        (line.split()[1] for line in read_lines("/proc/meminfo") if line.startswith("MemTotal")), "0"
    )
    gpus = [torch.cuda.get_device_name(d) for d in devices if d.startswith("cuda")]
    versions = ", ".join(
        f"{p} {package_version(p)}" for p in ("zarr", "numcodecs", "decord", "open_clip_torch")
    )
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{cpu}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
        f"{int(mem) / 2**20:.0f} GiB",
        "GPU": ", ".join(sorted(set(gpus))) or "none used",
        "software": f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {versions}",
        "store folder": f"{work} ({_filesystem(work)})",
        "code": _commit(),
        "load average at start": loadavg(),
    }


def _filesystem(path: Path) -> str:
    best, kind = "", "unknown filesystem"
    for line in read_lines("/proc/mounts"):
        parts = line.split()
        if (
            len(parts) > 2
            and str(path.resolve()).startswith(parts[1])
            and len(parts[1]) > len(best)
        ):
            best, kind = parts[1], parts[2]
    return kind


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            # no optional locks: never refresh the index under other people's git commands
            [
                "git",
                "--no-optional-locks",
                "-C",
                str(REPO),
                "status",
                "--porcelain",
                "advise_cache",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes in advise_cache/" if dirty else "")


# -- report ----------------------------------------------------------------------------------
def fmt(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%" if math.isfinite(x) else "n/a"


def table(header: list[str], rows: list[list], left: int = 1) -> list[str]:
    """A markdown table: the first `left` columns aligned left, numbers to the right."""
    rule = ["---" if i < left else "---:" for i in range(len(header))]
    return ["| " + " | ".join(map(str, line)) + " |" for line in (header, rule, *rows)]


def render(machine: dict, rows: list[Row], codec_rows: list[CodecRow], args, command: str) -> str:
    from advise_cache.store import DEFAULT_CODEC

    stages = (
        f"Frames/s of each stage on the same generated videos ({args.width}x{args.height} "
        f"mpeg4, {VIDEO_FRAMES[0]}-{VIDEO_FRAMES[1]} frames each), batch {args.batch_size}, "
        f"{args.workers} decode processes, random weights, codec {DEFAULT_CODEC}, float16 tokens. "
        "Each round runs the three steps one after the other; each column is the best round's, "
        "the least disturbed on a shared machine."
    )
    reading = (
        "End to end is `frames / ExtractSummary.seconds`: it includes building the model, "
        "probing the videos and starting the decode processes, a fixed cost that a real dataset "
        "(UCF101: 2.5 M frames) spreads thin. Steady counts from the first video stored to the "
        f"last; the target is steady ≥ {pct(TARGET)} of IFM alone. Cores used is CPU seconds per "
        "second of this process and its decode workers: below the core count when other work "
        "shared the machine."
    )
    codecs = (
        "Token codecs: the tokens of each model above, written with every codec of "
        "`store.CODECS` through the store (`add_ifm` + `write_video`: one-frame chunks, 64-frame "
        "shards, fsync), then random single frames read back: through plain zarr "
        "(`tokens[row]`), and through `IFMArrays.read_frames`, what training calls (store.py "
        "reads uncompressed shards itself, two `pread`s a frame, and compressed ones through zarr)."
    )
    caveats = (
        "Write MB/s counts raw (uncompressed) token bytes. Reads hit the page cache (the shards "
        "were just written), so they measure the CPU cost per frame, not the disk; on a disk or "
        "network store, stored kB/frame over its bandwidth bounds reads as well. Random weights: "
        "real CLIP weights may compress differently; measure on real tokens before changing the "
        "default."
    )
    stage_rows = [
        [
            r.model,
            f"{r.device} {r.precision}",
            f"{r.videos} / {r.frames}",
            r.rounds,
            fmt(r.decode_fps),
            fmt(r.ifm_fps),
            fmt(r.full_fps),
            fmt(r.steady_fps),
            pct(r.steady_fps / r.ifm_fps),
            pct(r.full_fps / r.ifm_fps),
            f"{r.bytes_per_frame / 1e3:.1f}",
            f"{r.ifm_cores:.1f} / {r.full_cores:.1f}",
        ]
        for r in rows
    ]
    codec_table = [
        [
            c.model,
            c.codec,
            c.frames,
            f"{c.raw_per_frame / 1e3:.1f}",
            f"{c.stored_per_frame / 1e3:.1f}",
            f"{c.raw_per_frame / c.stored_per_frame:.2f}",
            fmt(c.write_mb_s),
            fmt(c.zarr_fps),
            fmt(c.store_fps),
        ]
        for c in codec_rows
    ]
    out = [
        "## Extraction (pipelines/bench_extract.py)",
        "",
        f"Written by `{command}`; rerun it to replace this section.",
        "",
        *table(["machine", ""], [list(kv) for kv in machine.items()], left=2),
        "",
        stages,
        "",
        *table(
            [
                "model",
                "device",
                "videos / frames",
                "rounds",
                f"decode alone ({args.workers} proc.)",
                "IFM alone",
                "full, end to end",
                "full, steady",
                "steady / IFM",
                "end to end / IFM",
                "stored kB/frame",
                "cores used, IFM / full",
            ],
            stage_rows,
            left=3,
        ),
        "",
        reading,
        "",
        *[f"- {line}" for line in diagnose(rows, args.workers)],
        "",
        codecs,
        "",
        *table(
            [
                "tokens",
                "codec",
                "frames",
                "raw kB/frame",
                "stored kB/frame",
                "ratio",
                "write MB/s",
                "read frames/s, zarr `a[i]`",
                "read frames/s, `read_frames`",
            ],
            codec_table,
            left=2,
        ),
        "",
        caveats,
        "",
        *[f"- {line}" for line in codec_notes(codec_rows, DEFAULT_CODEC)],
    ]
    return "\n".join(out) + "\n"


def bound(r: Row, workers: int) -> float:
    """The best steady / IFM-alone ratio the stages allow. On a GPU decoding runs beside the
    model, so only a slower decoder bounds the run. On the CPU they share the cores: a frame
    costs the model's core-seconds plus decoding's (its processes on min(workers, cores)
    cores, or in line with the model when workers is 0)."""
    if r.device != "cpu":
        return min(1.0, r.decode_fps / r.ifm_fps)
    cores = len(os.sched_getaffinity(0))
    share = 1.0 if workers <= 0 else min(workers, cores) / cores
    return 1 / (1 + share * r.ifm_fps / r.decode_fps)


def diagnose(rows: list[Row], workers: int) -> list[str]:
    lines = []
    for r in rows:
        ratio, best = r.steady_fps / r.ifm_fps, bound(r, workers)
        text = f"{r.model} on {r.device}: steady {pct(ratio)} of IFM alone"
        if not math.isfinite(ratio):
            lines.append(f"{text}: too few videos for a steady rate; give more --frames.")
            continue
        text += ", meets the target." if ratio >= TARGET else ", misses the target."
        if r.device == "cpu":
            text += (
                " On the CPU decoding cannot hide behind the model, it takes its share of the "
                f"same cores: with decoding alone at {fmt(r.decode_fps)} frames/s and the model "
                f"at {fmt(r.ifm_fps)}, the run can reach at most {pct(best)}"
            )
        else:
            text += (
                f" Decoding alone gives {fmt(r.decode_fps)} frames/s for the model's "
                f"{fmt(r.ifm_fps)}: the run can reach at most {pct(best)}"
            )
        text += f", and reached {pct(ratio / best)} of that."
        if ratio < TARGET and best >= TARGET:
            text += (
                " The stages would allow the target: the loss is contention. IFM alone had "
                f"{r.ifm_cores:.1f} cores' worth of CPU time, the full run {r.full_cores:.1f}, "
                "with decode processes, the writer thread and the model's threads (and any "
                f"other load on the machine) on {len(os.sched_getaffinity(0))} cores; the "
                "model's threads meet at every operation, so one of them losing its core "
                "stalls the others."
            )
        elif ratio < TARGET:
            text += (
                " Decoding bounds it: only more cores for decoding, or cheaper decoding "
                "(smaller source videos, a faster resize), lift it."
            )
        lines.append(text)
    return lines


def codec_notes(rows: list[CodecRow], default: str) -> list[str]:
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        mine = {r.codec: r for r in rows if r.model == model}
        base = mine.get("none")
        if base is None:
            continue
        parts = [
            f"{c} saves {pct(1 - r.stored_per_frame / base.stored_per_frame)} of the bytes and "
            f"reads through `read_frames` at {r.store_fps / base.store_fps:.2f}x the speed of none"
            for c, r in mine.items()
            if c != "none"
        ]
        lines.append(f"{model} tokens: " + "; ".join(parts) + f" (default: {default}).")
    return lines


def default_frames(model: str, device: str) -> int:
    kind = "cpu" if device == "cpu" else "cuda"
    return DEFAULT_FRAMES.get(kind, {}).get(model, DEFAULT_OTHER[kind])


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- main ------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="test-vit,ViT-B-16", help="comma-separated image models")
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cpu,cuda; auto: cpu, and cuda when present"
    )
    p.add_argument(
        "--frames",
        type=int,
        help="frames per model and device (default: test-vit "
        f"{DEFAULT_FRAMES['cpu']['test-vit']} and others {DEFAULT_OTHER['cpu']} on the CPU, "
        f"{DEFAULT_OTHER['cuda']} on CUDA)",
    )
    p.add_argument("--workers", type=int, help="decode processes (default: ExtractConfig's)")
    p.add_argument("--batch-size", type=int, help="frames per forward (default: ExtractConfig's)")
    p.add_argument(
        "--repeats", type=int, default=3, help="rounds per model at most; the best is kept"
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=60,
        help="start no further round of a model after this many seconds on it",
    )
    p.add_argument("--width", type=int, default=320, help="width of the generated videos")
    p.add_argument("--height", type=int, default=240, help="height of the generated videos")
    p.add_argument(
        "--codec-frames", type=int, default=512, help="frames per codec test (tokens cycled)"
    )
    p.add_argument(
        "--codec-reads", type=int, default=400, help="random frame reads per codec and reader"
    )
    p.add_argument("--workdir", type=Path, help="keep videos here (default: a temporary folder)")
    p.add_argument(
        "--out", type=Path, default=REPO / "BENCHMARKS.md", help="the markdown file to update"
    )
    p.add_argument("--no-write", action="store_true", help="print the tables only")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = " ".join(
        ["python", "pipelines/bench_extract.py", *(sys.argv[1:] if argv is None else argv)]
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # open_clip warns on the root logger about random weights; this is known and recorded.
    logging.basicConfig(level=logging.ERROR)
    import torch

    from advise_cache.extract import ExtractConfig

    defaults = ExtractConfig(dataset="", root=Path(), out=Path())
    args.workers = defaults.workers if args.workers is None else args.workers
    args.batch_size = defaults.batch_size if args.batch_size is None else args.batch_size
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [d.strip() for d in args.device.split(",") if d.strip()]
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    plan = [(m, d, args.frames or default_frames(m, d)) for d in devices for m in models]

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_extract-"))
    try:
        t0 = time.perf_counter()
        videos = make_videos(
            work / "videos", max(n for _, _, n in plan), args.width, args.height, args.seed
        )
        say(
            f"{len(videos)} videos, {sum(n for _, n in videos)} frames ready "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        machine = describe_machine(work, devices)
        rows, codec_rows, done = [], [], set()
        for model, device, frames in plan:
            row, tokens, info = bench_model(model, device, take(videos, frames), work, args)
            rows.append(row)
            if model not in done:  # codecs do not depend on the device that made the tokens
                done.add(model)
                codec_rows += bench_codecs(
                    model, tokens, info, work, args.codec_frames, args.codec_reads, args.seed
                )
        machine["load average at end"] = loadavg()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = render(machine, rows, codec_rows, args, command)
    print(text)
    if not args.no_write:
        write_section(args.out, "bench_extract", text)
        say(f"wrote the bench_extract section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
