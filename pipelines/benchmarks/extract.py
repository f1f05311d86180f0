"""Stage-1 extraction benchmark: decoding, the image model, the writer and the whole pipeline,
side by side on the same generated videos (320x240 mpeg4), in rounds, the best round of each kept.

    python -m pipelines.benchmarks.extract                      # CPU (make bench-extract); ~12 minutes
    python3 -m pipelines.benchmarks.extract --device cuda       # GPU mode (make bench-gpu); ~2 minutes
    python -m pipelines.benchmarks.extract --device cpu --quick --no-write   # smoke test, seconds

Per image model: the decode processes, `IFM.encode` alone, and `extract.extract_videos` into a
fresh store; the writer with and without frame checksums and raw write + fsync
(benchmarks/extract_writer.py); on the CPU every codec of `store.CODECS`, on CUDA bf16 tokens
against fp32 ones. On a GPU machine without a venv run it with `python3` and `PYTHONPATH=.`.
"""

from __future__ import annotations

# Spawned decode workers import this file again: keep its top level free of torch.
import math
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

if not __package__:  # run as `python pipelines/NAME.py`: import the checkout's packages, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from pipelines.benchmarks.extract_measures import (
    HEIGHT,
    VIDEO_FRAMES,
    WIDTH,
    make_videos,
    stored_tokens,
    take,
    time_decode,
    time_ifm,
    token_error,
    write_manifest,
)
from pipelines.benchmarks.store_writes import bench_codecs, bench_writer, codec_table, writer_table
from pipelines.common import describe_machine, filesystem, fill_in, num, parser, pct, quiet, say
from pipelines.sections import Section, publish, section, table

# Frames per model: ViT-B-16 runs about 1 frame/s in fp32 on 2 CPU cores, test-vit
# thousands; on a GPU every stage should last seconds.
DEFAULT_FRAMES = {"cpu": {"test-vit": 2048, "ViT-B-16": 48}, "cuda": {"test-vit": 8192, "ViT-B-16": 8192}}
# ViT-B-16 on 2 CPU cores: small batches, so a few short rounds fit (the best of each is
# kept: the shared machine's load swings the model's speed by 2x from minute to minute).
DEFAULT_BATCH = {("cpu", "ViT-B-16"): 16}
DEFAULT_ROUNDS = {("cpu", "ViT-B-16"): 4}
# --quick: a smoke run of every stage, seconds on the CPU
QUICK = {"models": "test-vit", "frames": 96, "repeats": 1, "workers": 1, "writer_frames": 128, "codec_frames": 24}
FULL = {"writer_frames": 1536, "codec_frames": 512}
MAX_SECONDS = 400  # start no further round of a model after this
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


def bench_model(model: str, device: str, videos, work: Path, args) -> tuple[Row, list[np.ndarray], object]:
    """Rounds of decode, IFM alone and full, one after the other; the best of each is kept. Full:
    `extract_videos` end to end, its loop and its steady part (the model's first batch to the last
    video stored), both timed by the library."""
    import torch

    from advise_cache.extract import ExtractConfig, default_workers, extract_videos, ifm_key
    from advise_cache.ifm import create_ifm

    tag = f"{ifm_key(model)}-{device}"
    frames = sum(n for _, n in videos)
    ifm = create_ifm(model, "none", device, "auto", args.seed)
    workers = default_workers(ifm.device) if args.workers is None else args.workers
    cuda = ifm.device.type == "cuda"
    batch = args.batch_size or DEFAULT_BATCH.get((ifm.device.type, model), 256 if cuda else 64)
    manifest = write_manifest(work / "sets" / tag / "manifest.csv", videos)
    cfg = ExtractConfig(
        dataset="manifest",
        root=manifest,
        out=work / "stores" / f"{tag}.zarr",
        model=model,
        pretrained="none",
        workers=workers,
        writers=args.writers,
        device=device,
        batch_size=batch,
        seed=args.seed,
        progress=False,
    )
    best = Row(model, device, ifm.precision, len(videos), frames, workers, batch)
    clips, t0 = None, time.perf_counter()
    repeats = args.repeats or DEFAULT_ROUNDS.get((ifm.device.type, model), 3)
    for rounds in range(1, repeats + 1):
        decode_fps, clips = time_decode(videos, ifm.spec, workers)
        ifm_fps = time_ifm(ifm, clips, batch)
        if cuda:
            torch.cuda.empty_cache()
        shutil.rmtree(cfg.out, ignore_errors=True)
        summary = extract_videos(cfg)
        if summary.failed:
            raise RuntimeError(f"extraction failed on generated videos: {summary.failed[:2]}")
        full_fps, run_fps = summary.frames / summary.seconds, summary.frames / summary.loop_seconds
        steady = summary.frames / summary.steady_seconds if summary.steady_seconds else float("nan")
        say(
            f"[{tag}] round {rounds}: {frames} frames; decode {decode_fps:.1f}, ifm {ifm_fps:.1f}, full "
            f"{full_fps:.1f}, run {run_fps:.1f}, steady {steady:.1f} frames/s"
        )
        best.ratios.append(steady / ifm_fps)
        best.decode_fps = max(best.decode_fps, decode_fps)
        best.ifm_fps = max(best.ifm_fps, ifm_fps)
        best.full_fps = max(best.full_fps, full_fps)
        best.run_fps = max(best.run_fps, run_fps)
        if math.isfinite(steady) and not steady <= best.steady_fps:
            best.steady_fps = steady
        best.bytes_per_frame, best.rounds = summary.bytes / summary.frames, rounds
        if time.perf_counter() - t0 > MAX_SECONDS:
            break
    shutil.rmtree(cfg.out, ignore_errors=True)
    return best, clips, ifm


# -- report ----------------------------------------------------------------------------------
def render(machine: dict, rows, writer_rows, codec_rows, errors, args, argv, name: str, title: str) -> Section:
    from advise_cache.store import DEFAULT_CODEC

    out = [
        f"Frames/s of each stage on the same generated videos ({WIDTH}x{HEIGHT} mpeg4, {VIDEO_FRAMES[0]}-"
        f"{VIDEO_FRAMES[1]} frames each), random weights, codec {DEFAULT_CODEC}, float16 tokens, "
        f"{args.writers} writer threads; each column the best round's. Decode alone counts from the first "
        "chunk handed over; end to end is `ExtractSummary.seconds`, loop `loop_seconds`, steady "
        "`steady_seconds` (the model's first batch to the last video stored).",
        "",
        table(
            [
                "model",
                "device",
                "videos / frames",
                "batch",
                "decode processes",
                "rounds",
                "decode alone",
                "IFM alone",
                "full, end to end",
                "full, loop",
                "full, steady",
                "steady / IFM",
                "stored kB/frame",
            ],
            [
                [
                    r.model,
                    f"{r.device} {r.precision}",
                    f"{r.videos} / {r.frames}",
                    r.batch,
                    r.workers,
                    r.rounds,
                    num(r.decode_fps),
                    num(r.ifm_fps),
                    num(r.full_fps),
                    num(r.run_fps),
                    num(r.steady_fps),
                    pct(r.steady_fps / r.ifm_fps),
                    f"{r.bytes_per_frame / 1e3:.1f}",
                ]
                for r in rows
            ],
            left=3,
        ),
        "",
    ]
    for r in rows:
        target = TARGET["cpu" if r.device == "cpu" else "cuda"]
        out.append(
            f"- {r.model} on {r.device}: steady at {pct(r.steady_fps / r.ifm_fps)} of the model alone "
            f"(target {pct(target)}); within each round {', '.join(pct(x) for x in r.ratios)}."
        )
    out += writer_table(writer_rows)
    if errors:
        out += [
            "",
            "bf16 (autocast, as `extract` runs on CUDA) against fp32 tokens of the same weights and "
            "crops: relative L2 error over all tokens, cosine similarity per token.",
            "",
            table(["model", "frames", "relative L2 error", "cosine, mean", "cosine, min", "max abs diff"], errors),
        ]
    out += codec_table(codec_rows)
    return section(name, title, __name__, argv, machine, out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument(
        "--models", help="comma-separated image models (default: test-vit,ViT-B-16 on the CPU, ViT-B-16 on CUDA)"
    )
    p.add_argument("--frames", type=int, help="frames per model (default: DEFAULT_FRAMES)")
    p.add_argument("--workers", type=int, help="decode processes (default: extract's)")
    p.add_argument("--batch-size", type=int, help="frames per forward (default: 256 on CUDA, 64 on CPU)")
    p.add_argument("--writers", type=int, default=4, help="writer threads")
    p.add_argument("--writer-frames", type=int, help="frames in the writer test (default: 1536; 0: none)")
    p.add_argument("--repeats", type=int, help="rounds per model at most (default: 3; ViT-B-16 on the CPU 4)")
    p.add_argument("--codec-frames", type=int, help="frames per codec test, CPU only (default: 512; 0: none)")
    p.add_argument("--quick", action="store_true", help="a smoke run: test-vit, few frames, one round")
    args = p.parse_args(argv)
    fill_in(args, QUICK if args.quick else FULL)
    device, cuda = args.device, args.device.startswith("cuda")
    args.models = args.models or ("ViT-B-16" if cuda else "test-vit,ViT-B-16")
    codec_frames = 0 if cuda else args.codec_frames
    error_frames = 32 if args.quick else 256  # bf16 vs fp32 (CUDA; quick: the same code on the CPU)
    codec_reads = 10 if args.quick else 400  # random frame reads per codec and reader
    quiet()
    import torch

    from advise_cache.ifm import create_ifm

    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    plan = [
        (m, args.frames or DEFAULT_FRAMES["cuda" if cuda else "cpu"].get(m, 64))
        for m in (m.strip() for m in args.models.split(","))
        if m
    ]
    work = Path(tempfile.mkdtemp(prefix="bench_extract-"))
    t_start = time.perf_counter()
    try:
        videos = make_videos(work / "videos", max(n for _, n in plan), args.seed)
        say(f"{len(videos)} videos, {sum(n for _, n in videos)} frames ready in {time.perf_counter() - t_start:.0f} s")
        machine = describe_machine(device, packages=("zarr", "numcodecs", "decord", "open_clip_torch"))
        machine["store folder"] = f"{work} ({filesystem(work)})"
        rows, writer_rows, codec_rows, errors = [], [], [], []
        for model, frames in plan:
            row, clips, ifm = bench_model(model, device, take(videos, frames), work, args)
            rows.append(row)
            if cuda or args.quick:
                fp32 = ifm if ifm.precision == "fp32" else create_ifm(model, "none", str(ifm.device), "fp32", args.seed)
                errors.append(token_error(model, fp32, clips, error_frames, args.seed))
            if args.writer_frames:
                writer_rows.append(
                    bench_writer(
                        model,
                        (*ifm.grid, ifm.dim),
                        work,
                        args.writer_frames,
                        args.writers,
                        args.repeats or 3,
                        args.seed,
                    )
                )
            if codec_frames:  # up to 128 frames of tokens: the codec test cycles them
                tokens = stored_tokens(ifm, clips, min(codec_frames, 128))
                codec_rows += bench_codecs(model, tokens, work, codec_frames, codec_reads, args.seed)
            del ifm, clips
        machine["benchmark wall time"] = f"{time.perf_counter() - t_start:.0f} s"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    name, title = "bench_extract", "Extraction"
    if cuda:  # a section per GPU model
        name += "-" + re.sub(r"[^a-z0-9]+", "-", machine["GPU"].lower()).strip("-")
        title += f" on {machine['GPU']}"
    return publish(render(machine, rows, writer_rows, codec_rows, errors, args, argv, name, title), args)


if __name__ == "__main__":
    sys.exit(main())
