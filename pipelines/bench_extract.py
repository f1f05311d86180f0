"""Stage-1 extraction benchmark: decoding, the image model, the writer and the whole pipeline,
side by side in one run.

    python pipelines/bench_extract.py                      # CPU (make bench-extract); ~12 minutes
    python3 pipelines/bench_extract.py --device cuda       # GPU mode (make bench-gpu); ~2 minutes
    python pipelines/bench_extract.py --device cpu --quick --no-write   # smoke test, seconds

It generates its own videos (the synthetic set, 320x240 mpeg4) and, for each image model,
times on the same videos, in rounds (the best round of each is kept: on a shared machine the
least disturbed run is the closest to what the code does):

- decode: the run's own decode processes and shared-memory ring, from the first chunk handed
  over to the last (process start-up left out);
- IFM: `IFM.encode` on those crops in fixed batches, cast on the device to float16 as the
  run does (on CUDA: uploaded from pinned memory, synchronised once at the end);
- full: `extract.extract_videos` into a fresh store: end to end, its loop
  (`ExtractSummary.loop_seconds`) and steady (`steady_seconds`: from the model's first batch
  to the last video stored), the figure judged against IFM alone.

The writer alone: the same random float16 tokens written by `extract_stages.Writer`, by the writer
of commit 1aa8d33 (reproduced below: one thread, float32 → float16 on the CPU, zarr slice
assignment, fsync of each shard and four parents), and as raw write + fsync of the same shard
bytes, in alternating rounds. On the CPU every codec of `store.CODECS` is timed on real
tokens; on CUDA the bf16 tokens are compared with fp32 ones (random weights). The CPU tables
go between the bench_extract markers of BENCHMARKS.md, a GPU run's into a section named for
the GPU. Nothing here downloads anything; on a GPU machine without a venv run it with
`python3` and `PYTHONPATH=.`.
"""

from __future__ import annotations

# Spawned decode workers import this file again: keep its top level free of torch.
import argparse
import csv
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bench_extract_writer import (PER_SHARD, WRITER_LENGTHS, WRITER_TARGET_OLD, WRITER_TARGET_RAW, bench_codecs,
                                  bench_writer)
from common import (BENCHMARKS, command_line, describe_machine, filesystem, load_1min, machine_table, num, pct,
                    say, table, write_section)

VIDEO_FRAMES = (16, 32)  # frames per generated video: short, so a small budget spans several
# Frames per model: ViT-B-16 runs about 1 frame/s in fp32 on 2 CPU cores, test-vit
# thousands; on a GPU every stage should last seconds.
DEFAULT_FRAMES = {"cpu": {"test-vit": 2048, "ViT-B-16": 48}, "cuda": {"test-vit": 8192, "ViT-B-16": 8192}}
# ViT-B-16 on 2 CPU cores: small batches, so a few short rounds fit (the best of each is
# kept: the shared machine's load swings the model's speed by 2x from minute to minute).
DEFAULT_BATCH = {("cpu", "ViT-B-16"): 16}
DEFAULT_ROUNDS = {("cpu", "ViT-B-16"): 4}
QUICK_FRAMES = 96
GENERATED = 2048  # frames of video generated; larger sets repeat them under other names
TARGET = {"cpu": 0.9, "cuda": 0.8}  # full extraction as a fraction of the model alone


@dataclass
class Row:
    model: str
    device: str
    precision: str
    videos: int
    frames: int
    workers: int
    batch: int
    decode_fps: float = 0.0
    ifm_fps: float = 0.0
    full_fps: float = 0.0  # end to end, as `extract_videos` reports it
    run_fps: float = 0.0  # the decode -> model -> write loop
    steady_fps: float = float("nan")  # the model's first batch to the last video stored
    bytes_per_frame: float = 0.0
    rounds: int = 0
    ratios: list = field(default_factory=list)  # steady / IFM alone within each round


# -- the video set ---------------------------------------------------------------------------
def make_videos(root: Path, frames: int, width: int, height: int, seed: int) -> list[tuple[Path, int]]:
    """Videos holding at least `frames` frames, interleaved by class, with their frame counts.
    At most GENERATED frames are generated; the rest are hard links to them under other names
    (decoding costs the same; generating is slow)."""
    from advise_cache.synthetic import generate_synthetic
    from advise_cache.video import probe_video

    per_class = math.ceil(1.2 * min(frames, GENERATED) / (sum(VIDEO_FRAMES) / 2) / 8)  # 8 classes, 20% margin
    generate_synthetic(root, family="both", seed=seed, train_per_class=per_class, test_per_class=0,
                       min_frames=VIDEO_FRAMES[0], max_frames=VIDEO_FRAMES[1], width=width, height=height)
    paths = sorted(root.glob("train/*/*.mp4"), key=lambda p: (p.stem[-3:], p.parent.name))
    base = [(p, probe_video(p).frames) for p in paths]
    videos, total, copy = list(base), sum(n for _, n in base), 1
    while total < frames:
        for p, n in base:
            link = root / f"copy{copy}" / p.parent.name / p.name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, link)
            videos.append((link, n))
            total += n
        copy += 1
    return videos


def take(videos: list[tuple[Path, int]], frames: int) -> list[tuple[Path, int]]:
    """The first videos that together hold at least `frames` frames (all, if they hold fewer)."""
    out, total = [], 0
    for video in videos:
        if total >= frames:
            break
        out.append(video)
        total += video[1]
    return out


def write_manifest(path: Path, videos: list[tuple[Path, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows([str(p), p.parent.name, "train"] for p, _ in videos)
    return path


# -- the measurements ------------------------------------------------------------------------
def time_decode(videos: list[tuple[Path, int]], spec, workers: int) -> tuple[float, list[np.ndarray]]:
    """Frames/s of the run's decode processes (or in line, for 0), counted from the first
    chunk handed over, and the crops of every video (copied out of the ring)."""
    from advise_cache.extract_stages import InlineDecoder, PoolDecoder

    tasks = [(v, str(p), spec, 1, n) for v, (p, n) in enumerate(videos)]
    clips = [np.empty((n, spec.size, spec.size, 3), np.uint8) for _, n in videos]
    decoder = InlineDecoder(tasks) if workers <= 0 else PoolDecoder(tasks, workers, spec.size)
    remaining, t0, counted = len(tasks), None, 0
    try:
        while remaining:
            event = decoder.next()
            if event[0] == "frames":
                _, v, start, crops, slot = event
                clips[v][start : start + len(crops)] = crops
                decoder.release(slot)
                if t0 is None:
                    t0 = time.perf_counter()  # the first chunk is the start-up's
                else:
                    counted += len(crops)
            elif event[0] == "failed":
                raise RuntimeError(f"decoding a generated video failed: {event[2]}")
            else:
                remaining -= 1
        seconds = time.perf_counter() - t0
    finally:
        decoder.close()
    return counted / seconds, clips


def time_ifm(ifm, clips: list[np.ndarray], batch: int) -> float:
    """Frames/s of the model alone on the decoded crops in fixed batches across videos,
    tokens cast to float16 on the device; on CUDA from pinned memory, one sync at the end."""
    import torch

    crops = torch.from_numpy(np.concatenate(clips))
    cuda = ifm.device.type == "cuda"
    if cuda:
        crops = crops.pin_memory()
    batches = [crops[i : i + batch] for i in range(0, len(crops), batch)]
    ifm.encode(batches[0], dtype=torch.float16)  # first call: allocations, kernel choice
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        ifm.encode(b, dtype=torch.float16)
    if cuda:
        torch.cuda.synchronize()
    return len(crops) / (time.perf_counter() - t0)


def time_full(cfg) -> tuple[object, float, float]:
    """Run `extract_videos(cfg)`; return its summary, the loop's frames/s and the steady
    frames/s: from the model's first batch to the last video stored (both timed by the library)."""
    from advise_cache import extract

    summary = extract.extract_videos(cfg)
    if summary.failed:
        raise RuntimeError(f"extraction failed on generated videos: {summary.failed[:2]}")
    steady = summary.frames / summary.steady_seconds if summary.steady_seconds else float("nan")
    return summary, summary.frames / summary.loop_seconds, steady


def bench_model(model: str, device: str, videos, work: Path, args) -> tuple[Row, list[np.ndarray], dict, object]:
    """Rounds of decode, IFM alone and full, one after the other; the best of each is kept."""
    import torch

    from advise_cache.extract import ExtractConfig, default_workers, ifm_key
    from advise_cache.ifm import create_ifm

    tag = f"{ifm_key(model)}-{device}"
    frames = sum(n for _, n in videos)
    ifm = create_ifm(model, "none", device, "auto", args.seed)
    workers = default_workers(ifm.device) if args.workers is None else args.workers
    batch = args.batch_size or DEFAULT_BATCH.get((ifm.device.type, model)) or (256 if ifm.device.type == "cuda" else 64)
    cfg = ExtractConfig(dataset="manifest", root=write_manifest(work / "sets" / tag / "manifest.csv", videos),
                        out=work / "stores" / f"{tag}.zarr", model=model, pretrained="none", workers=workers,
                        writers=args.writers, device=device, batch_size=batch, seed=args.seed, progress=False)
    best = Row(model, device, ifm.precision, len(videos), frames, workers, batch)
    clips, t0 = None, time.perf_counter()
    repeats = args.repeats or DEFAULT_ROUNDS.get((ifm.device.type, model), 3)
    for rounds in range(1, repeats + 1):
        decode_fps, clips = time_decode(videos, ifm.spec, workers)
        ifm_fps = time_ifm(ifm, clips, batch)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        shutil.rmtree(cfg.out, ignore_errors=True)
        summary, run_fps, steady = time_full(cfg)
        full_fps = summary.frames / summary.seconds
        say(f"[{tag}] round {rounds}: {frames} frames; decode {decode_fps:.1f}, ifm {ifm_fps:.1f}, full "
            f"{full_fps:.1f}, run {run_fps:.1f}, steady {steady:.1f} frames/s")
        best.ratios.append(steady / ifm_fps)
        best.decode_fps = max(best.decode_fps, decode_fps)
        best.ifm_fps = max(best.ifm_fps, ifm_fps)
        best.full_fps = max(best.full_fps, full_fps)
        best.run_fps = max(best.run_fps, run_fps)
        if math.isfinite(steady) and not steady <= best.steady_fps:
            best.steady_fps = steady
        best.bytes_per_frame, best.rounds = summary.bytes / summary.frames, rounds
        if time.perf_counter() - t0 > args.max_seconds:
            break
    shutil.rmtree(cfg.out, ignore_errors=True)
    return best, clips, ifm.info(), ifm


def token_error(model: str, ifm_fp32, clips: list[np.ndarray], frames: int, seed: int) -> list:
    """bf16 autocast tokens against fp32 tokens of the same model and crops: a table row."""
    import torch

    from advise_cache.ifm import create_ifm

    keep = int(np.searchsorted(np.cumsum([len(c) for c in clips]), frames)) + 1
    x = np.concatenate(clips[:keep])[:frames]
    bf16 = create_ifm(model, "none", str(ifm_fp32.device), "bf16", seed)
    if bf16.weights_sha256 != ifm_fp32.weights_sha256:
        raise RuntimeError("the bf16 and fp32 models do not have the same weights")
    a = torch.cat([ifm_fp32.encode(x[i : i + 64]).double().cpu() for i in range(0, len(x), 64)]).flatten(0, 2)
    b = torch.cat([bf16.encode(x[i : i + 64]).double().cpu() for i in range(0, len(x), 64)]).flatten(0, 2)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)  # per token
    return [model, len(x), f"{float((a - b).norm() / a.norm()):.2e}", f"{float(cos.mean()):.6f}",
            f"{float(cos.min()):.6f}", f"{float((a - b).abs().max()):.3g}"]


# -- report ----------------------------------------------------------------------------------
def render(machine: dict, rows, writer_rows, codec_rows, errors, args, command: str, title: str) -> str:
    from advise_cache.store import DEFAULT_CODEC

    out = [f"## {title} (pipelines/bench_extract.py)", "", f"Written by `{command}`; rerun it to replace this section.",
           "", *machine_table(machine), "",
           f"Frames/s of each stage on the same generated videos ({args.width}x{args.height} mpeg4, "
           f"{VIDEO_FRAMES[0]}-{VIDEO_FRAMES[1]} frames each), random weights, codec {DEFAULT_CODEC}, float16 "
           f"tokens, {args.writers} writer threads. Each round runs the stages one after the other; each column "
           "is the best round's, the least disturbed on a shared machine.", "",
           *table(["model", "device", "videos / frames", "batch", "decode processes", "rounds", "decode alone",
                   "IFM alone", "full, end to end", "full, loop", "full, steady", "steady / IFM", "stored kB/frame"],
                  [[r.model, f"{r.device} {r.precision}", f"{r.videos} / {r.frames}", r.batch, r.workers, r.rounds,
                    num(r.decode_fps), num(r.ifm_fps), num(r.full_fps), num(r.run_fps), num(r.steady_fps),
                    pct(r.steady_fps / r.ifm_fps), f"{r.bytes_per_frame / 1e3:.1f}"] for r in rows], left=3), "",
           "Decode alone counts from the first chunk the decode processes hand over. End to end is "
           "`frames / ExtractSummary.seconds` (model build, probing and process start-up included); loop is "
           "`loop_seconds`, the decode -> model -> write loop; steady is `steady_seconds`, from the model's first "
           "batch to the last video stored: the figure the targets are judged on.", ""]
    for r in rows:
        target = TARGET["cpu" if r.device == "cpu" else "cuda"]
        out.append(f"- {r.model} on {r.device}: steady at {pct(r.steady_fps / r.ifm_fps)} of the model alone "
                   f"(target {pct(target)}); within each round {', '.join(pct(x) for x in r.ratios)}.")
    if writer_rows:
        out += ["", f"The writer alone, frames/s: the same random float16 tokens (videos of {WRITER_LENGTHS[0]}-"
                f"{WRITER_LENGTHS[1]} frames, {PER_SHARD}-frame shards, each made durable before its video is marked "
                "done) written by `extract_stages.Writer`, by the writer of commit 1aa8d33 (one thread, fed float32 as the "
                "old model loop did), and as raw shard-sized files with write + fsync. Rounds alternate the three.", "",
                *table(["tokens", "videos / shards / frames", "MB", "rounds", f"new writer ({writer_rows[0].threads} "
                        "threads)", "writer of 1aa8d33", "raw write + fsync (same threads)", "raw, 1 thread",
                        "new / old", "new / raw", "new, MB/s"],
                       [[w.model, f"{w.videos} / {w.shards} / {w.frames}", f"{w.mb:.0f}", w.rounds, num(w.fps["new"]),
                         num(w.fps["old"]), num(w.fps["raw"]), num(w.fps["raw1"]), f"{w.fps['new'] / w.fps['old']:.1f}x",
                         pct(w.fps["new"] / w.fps["raw"]), num(w.fps["new"] * w.mb / w.frames)] for w in writer_rows]),
                "", f"Targets: new / old >= {WRITER_TARGET_OLD:.0f}x, new / raw >= {pct(WRITER_TARGET_RAW)}."]
    if errors:
        out += ["", "bf16 against fp32 tokens (the same random weights and crops; autocast bf16 as `extract` runs on "
                "CUDA): relative L2 error over all tokens, cosine similarity per token.", "",
                *table(["model", "frames", "relative L2 error", "cosine, mean", "cosine, min", "max abs diff"], errors)]
    if codec_rows:
        out += ["", "Token codecs: the tokens of each model above, written with every codec of `store.CODECS` "
                f"through the store (one-frame chunks, {PER_SHARD}-frame shards, fsync), then random single frames "
                "read back through plain zarr (`tokens[row]`) and through `IFMArrays.read_frames`, what training "
                "calls. Write MB/s counts raw token bytes; reads hit the page cache. Random weights: real CLIP "
                f"weights may compress differently. Default: {DEFAULT_CODEC}.", "",
                *table(["tokens", "codec", "frames", "raw kB/frame", "stored kB/frame", "ratio", "bytes saved",
                        "write MB/s", "read frames/s, zarr `a[i]`", "read frames/s, `read_frames`",
                        "`read_frames` vs the first codec"], codec_rows, left=2)]
    return "\n".join(out) + "\n"


# -- main ------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (this machine's table) or cuda / cuda:K (a GPU's own section)")
    p.add_argument("--models", help="comma-separated image models (default: test-vit,ViT-B-16 on the CPU, "
                                    "ViT-B-16 on CUDA; --quick: test-vit)")
    p.add_argument("--frames", type=int, help="frames per model (default: test-vit 2048 and ViT-B-16 48 on the "
                                              "CPU, 8192 on CUDA; --quick: 96)")
    p.add_argument("--workers", type=int, help="decode processes (default: extract's)")
    p.add_argument("--batch-size", type=int, help="frames per forward (default: 256 on CUDA, 64 on CPU)")
    p.add_argument("--writers", type=int, default=4, help="writer threads")
    p.add_argument("--writer-frames", type=int, default=1536, help="frames in the writer test")
    p.add_argument("--repeats", type=int, help="rounds per model at most, the best kept (default: 3; ViT-B-16 on "
                                               "the CPU 4)")
    p.add_argument("--max-seconds", type=float, default=400, help="start no further round of a model after this")
    p.add_argument("--width", type=int, default=320, help="width of the generated videos")
    p.add_argument("--height", type=int, default=240, help="height of the generated videos")
    p.add_argument("--codec-frames", type=int, help="frames per codec test (default: 512 on the CPU; 0: none)")
    p.add_argument("--codec-reads", type=int, default=400, help="random frame reads per codec and reader")
    p.add_argument("--error-frames", type=int, default=256, help="frames in the bf16 vs fp32 comparison (CUDA)")
    p.add_argument("--quick", action="store_true", help="a smoke run: test-vit, few frames, one round, no codecs")
    p.add_argument("--workdir", type=Path, help="keep videos here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=BENCHMARKS, help="the markdown file to update")
    p.add_argument("--no-write", action="store_true", help="print the tables only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.quick:
        args.models = args.models or "test-vit"
        args.frames = args.frames or QUICK_FRAMES
        args.repeats, args.error_frames = 1, min(args.error_frames, 32)
        args.codec_frames = args.codec_frames or 0
        args.writer_frames = min(args.writer_frames, 256)
        args.workers = 1 if args.workers is None else args.workers
    args.models = args.models or ("ViT-B-16" if cuda else "test-vit,ViT-B-16")
    args.codec_frames = 0 if cuda else 512 if args.codec_frames is None else args.codec_frames
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: never wait on a hub
    import logging

    import torch

    logging.basicConfig(level=logging.ERROR)  # open_clip warns about random weights: known, recorded
    device, cuda = args.device, args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    plan = [(m, args.frames or DEFAULT_FRAMES["cuda" if cuda else "cpu"].get(m, 64))
            for m in (m.strip() for m in args.models.split(",")) if m]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_extract-"))
    t_start = time.perf_counter()
    try:
        videos = make_videos(work / "videos", max(n for _, n in plan), args.width, args.height, args.seed)
        say(f"{len(videos)} videos, {sum(n for _, n in videos)} frames ready in {time.perf_counter() - t_start:.0f} s")
        machine = describe_machine(device, packages=("zarr", "numcodecs", "decord", "open_clip_torch"))
        machine["store folder"] = f"{work} ({filesystem(work)})"
        rows, writer_rows, codec_rows, errors = [], [], [], []
        for model, frames in plan:
            row, clips, info, ifm = bench_model(model, device, take(videos, frames), work, args)
            rows.append(row)
            if (cuda or args.quick) and args.error_frames:  # quick: the same code on the CPU
                fp32 = ifm if ifm.precision == "fp32" else create_fp32(model, ifm, args.seed)
                errors.append(token_error(model, fp32, clips, args.error_frames, args.seed))
            if args.writer_frames:
                writer_rows.append(bench_writer(model, (*info["grid"], info["dim"]), work, args.writer_frames,
                                                args.writers, args.repeats or 3, args.seed))
            if args.codec_frames:  # tokens of the first videos' crops, float16 as stored
                tokens, total = [], 0
                for clip in clips:
                    if total >= min(args.codec_frames, 128):  # the codec test cycles them
                        break
                    tokens.append(np.concatenate([ifm.encode(clip[i : i + 64], dtype=torch.float16).cpu().numpy()
                                                  for i in range(0, len(clip), 64)]))
                    total += len(clip)
                codec_rows += bench_codecs(model, tokens, work, args.codec_frames, args.codec_reads, args.seed)
            del ifm, clips
        machine["load average (1 min) at end"] = load_1min()
        machine["benchmark wall time"] = f"{time.perf_counter() - t_start:.0f} s"
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    # The CPU table, or a section per GPU model.
    name, title = "bench_extract", "Extraction"
    if cuda:
        name, title = "bench_extract-" + re.sub(r"[^a-z0-9]+", "-", machine["GPU"].lower()).strip("-"), \
            f"Extraction on {machine['GPU']}"
    text = render(machine, rows, writer_rows, codec_rows, errors, args, command_line("bench_extract.py", argv), title)
    print(text)
    if not args.no_write:
        write_section(args.out, name, text)
    return 0


def create_fp32(model: str, ifm, seed: int):
    """The run's model in fp32 (on CUDA it runs bf16 autocast by default)."""
    from advise_cache.ifm import create_ifm

    return create_ifm(model, "none", str(ifm.device), "fp32", seed)


if __name__ == "__main__":
    sys.exit(main())
