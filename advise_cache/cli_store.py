"""The store's commands, `extract`, `info` and `verify` (cli.py registers them).

Each parses flags into an `ExtractConfig` or a store path, calls one library function and
prints; the libraries are imported when a command runs, so `--help` stays instant.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import typer

from .config_files import extract_config_from, given_flags
from .configs import ExtractConfig, fields_from
from .errors import AdviseCacheError

EXTRACT = ExtractConfig(dataset="", root=Path(), out=Path())  # every flag's default


def extract(
    ctx: typer.Context,
    dataset: Annotated[
        str | None,
        typer.Argument(
            help="ucf101, hmdb51, diving48, ssv2, kinetics400, folder, manifest, synthetic[-appearance|-temporal]"
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Settings from a YAML or JSON file; flags given beside it override it."),
    ] = None,
    print_config: Annotated[
        bool, typer.Option(help="Print the resolved settings as JSON (a valid --config) and exit.")
    ] = False,
    root: Annotated[
        Path | None,
        typer.Option(
            help="Dataset root, as downloaded (layouts: docs/DATASETS.md; for synthetic, where to generate it). Default: $ADVISE_DATA/DATASET, or data/DATASET when ADVISE_DATA is unset."
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            help="The Zarr store to create or continue: a path, or an s3://, gs://, az://, file:// URL. Default: DATASET.zarr in the current folder."
        ),
    ] = None,
    split: Annotated[
        int, typer.Option(help="Official split number (1-3) where the dataset has several.")
    ] = EXTRACT.split,
    annotations: Annotated[
        Path | None, typer.Option(help="Folder of the split/label files when they are not under --root.")
    ] = EXTRACT.annotations,
    holdout: Annotated[
        bool,
        typer.Option(
            help="Also extract the unlabelled test set (Kinetics test.csv, SSv2 test.json) as split 'holdout'."
        ),
    ] = EXTRACT.holdout,
    model: Annotated[
        str, typer.Option(help="Image model: ViT-B-16, ViT-L-14, MAE-B-16, DINOv2-B-14, timm/<name>, test-vit.")
    ] = EXTRACT.model,
    pretrained: Annotated[
        str, typer.Option(help="Weights: a tag (hub cache), a checkpoint file, 'none' (random), or 'auto'.")
    ] = EXTRACT.pretrained,
    name: Annotated[
        str | None, typer.Option(help="Key of this model in the store (default: from --model).")
    ] = EXTRACT.name,
    frame_stride: Annotated[int, typer.Option(help="Keep every N-th frame.")] = EXTRACT.frame_stride,
    batch_size: Annotated[
        int | None, typer.Option(help="Frames per model forward, across videos (default: 256 on CUDA, 64 on CPU).")
    ] = EXTRACT.batch_size,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Decode processes (0: decode in the main process; default: the usable cores less 2 on CUDA, less 1 on CPU)."
        ),
    ] = EXTRACT.workers,
    writers: Annotated[int, typer.Option(help="Threads writing shards.")] = EXTRACT.writers,
    decoder: Annotated[
        str,
        typer.Option(help="decord, or torchcodec (pip install 'advise-cache[torchcodec]' and FFmpeg's libraries)."),
    ] = EXTRACT.decoder,
    resize: Annotated[
        str,
        typer.Option(
            help="Where frames are resized to the model's input: tensor (antialiased F.interpolate on the model's device) or pil (in the decode processes: open_clip's own preprocessing, byte for byte)."
        ),
    ] = EXTRACT.resize,
    device: Annotated[
        str,
        typer.Option(
            help="auto, cpu, cuda, cuda:1, ... Several GPUs: torchrun --nproc_per_node N -m advise_cache.cli extract ..."
        ),
    ] = EXTRACT.device,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16.")
    ] = EXTRACT.precision,
    dtype: Annotated[
        str,
        typer.Option(
            help="Stored token dtype: float16, float32, or int8 (one float16 scale per token, about half of float16's bytes; error recorded per video)."
        ),
    ] = EXTRACT.dtype,
    codec: Annotated[
        str | None,
        typer.Option(help="Compression: none, lz4, zstd (default: the store's default, none; see BENCHMARKS.md)."),
    ] = None,
    frames_per_shard: Annotated[int, typer.Option(help="Frames per shard file.")] = EXTRACT.frames_per_shard,
    shard: Annotated[
        str,
        typer.Option(
            help="K/N: this process extracts every N-th video from the K-th (0-based); under torchrun, each rank takes its part of that."
        ),
    ] = "/".join(map(str, EXTRACT.shard)),
    seed: Annotated[
        int, typer.Option(help="Seed of random-init models and of the augmented views' draws.")
    ] = EXTRACT.seed,
    aug_views: Annotated[
        int,
        typer.Option(
            help="Store N augmented views of every frame besides the centre crop: the released code's `simple` augmentation (resize 320x256, random 224 crop, colour jitter p 0.8), one draw per video and view; training draws a view per clip."
        ),
    ] = EXTRACT.aug_views,
    crops: Annotated[
        int,
        typer.Option(
            help="Store evaluation crops: 3 (short side 256, left/centre/right or top/centre/bottom 224 crops, for `evaluate --crops 3`), 1 (the centre one) or 0."
        ),
    ] = EXTRACT.crops,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Probe the videos and print the store's size (per frame, in all, for each --frame-stride/--dtype) and the free space where it goes; write nothing.",
        ),
    ] = False,
):
    """Decode every video, run the frozen image model once per frame, store the patch tokens.

    Dataset layouts (as downloaded, mmaction2's, torchvision's): docs/DATASETS.md.
    A run that the disk cannot hold stops before writing anything (see --dry-run).
    """
    flags = dict(locals())
    from .datasets import default_root
    from .extract import extract_videos, parse_shard, plan_extraction
    from .storage import store_location

    cfg = ExtractConfig(
        **{
            **fields_from(ExtractConfig, flags),
            "dataset": dataset or "",
            "out": store_location(out, "--out") if out else None,  # before anything else
            "codec": codec or EXTRACT.codec,
            "shard": parse_shard(shard),
        }
    )
    if config is not None:  # the file, then the flags given on top
        cfg = extract_config_from(config, cfg, given_flags(ctx))
    if not cfg.dataset:
        raise AdviseCacheError("Missing argument 'DATASET' (or give `dataset:` in a --config file)")
    cfg = replace(cfg, root=cfg.root or default_root(cfg.dataset), out=cfg.out or Path(f"{cfg.dataset.lower()}.zarr"))
    if print_config:
        typer.echo(json.dumps(asdict(cfg), indent=2, default=str))
        return
    if dry_run:
        plan = plan_extraction(cfg)
        typer.echo(json.dumps(asdict(plan), indent=2, default=str) if json_out else "\n".join(plan.lines()))
        return
    summary = extract_videos(cfg)
    if summary.rank:  # another rank of a torchrun job: rank 0 reports for every part
        return
    if json_out:
        typer.echo(json.dumps(asdict(summary), indent=2))
    else:
        typer.echo("\n".join(summary.lines()))
    raise typer.Exit(summary.exit_code)


def info(
    store: Annotated[str, typer.Argument(help="A store made by `extract`: a path or a URL.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Summarise a store: videos, image models, frames, bytes, failures."""
    from .storage import store_location
    from .store import open_store
    from .summary import summarize, summary_lines

    s = summarize(open_store(store_location(store)))
    if json_out:
        first = next(iter(s["ifms"].values()), {})
        flat = {
            "videos": s["videos"],
            "done": first.get("done", 0),
            "failed": first.get("failed", []),
            "frames": first.get("frames", 0),
            "model": first.get("model"),
            "grid": first.get("grid"),
            "dim": first.get("dim"),
            "dtype": first.get("dtype"),
            "bytes": first.get("bytes", 0),
        }
        typer.echo(json.dumps({**flat, **s}, indent=2))
        return
    for line in summary_lines(s):
        typer.echo(line)


def verify(
    store: Annotated[str, typer.Argument(help="A store made by `extract`: a path or a URL.")],
    deep: Annotated[
        bool, typer.Option("--deep", help="Also compare every video's tokens with the checksum written at extraction.")
    ] = False,
):
    """Check completeness, offsets, shapes, every frame's checksum and NaN/Inf; exit 1 on any problem."""
    from tqdm import tqdm

    from .integrity import checksum_notes, failed_notes, quant_notes
    from .integrity import verify as verify_store
    from .storage import store_location
    from .store import open_store

    opened = open_store(store_location(store))
    problems = verify_store(opened, progress=lambda it: tqdm(it, desc="verify", unit="video"), deep=deep)
    for note in checksum_notes(opened) + failed_notes(opened) + quant_notes(opened):  # told, not counted
        typer.echo(f"note: {note}")
    for p in problems:
        typer.echo(p)
    typer.echo(f"{len(problems)} problem(s)" if problems else "ok")
    raise typer.Exit(1 if problems else 0)
