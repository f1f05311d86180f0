"""The `advise-cache` command line: parses flags, builds a config, calls one function, prints.

    advise-cache extract synthetic --root data/synthetic --out synthetic.zarr --model test-vit
    advise-cache info synthetic.zarr
    advise-cache verify synthetic.zarr

Exit status: 0 success; 2 a user error (one line on stderr: bad path, flag, layout, store);
3 extraction finished but some videos failed (listed in the summary); 1 verify found problems.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import AdviseCacheError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="AdViSe as a feature cache: extract frozen image-model tokens once, train from them.")
log = logging.getLogger("advise_cache")


def user_errors(fn):
    """Turn an AdviseCacheError into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AdviseCacheError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; run the same command again to continue", err=True)
            raise typer.Exit(130) from None

    return wrapper


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # open_clip and huggingface_hub are chatty about missing weights
        for name in ("root", "huggingface_hub", "timm"):
            logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger().handlers[0].addFilter(lambda r: r.name.startswith("advise_cache"))


@app.command()
@user_errors
def extract(
    dataset: Annotated[str, typer.Argument(help="ucf101, hmdb51, diving48, ssv2, kinetics400, folder, manifest, synthetic[-appearance|-temporal]")],
    root: Annotated[Path, typer.Option(help="Dataset root (the official layout; for synthetic, where to generate it).")],
    out: Annotated[Path, typer.Option(help="The Zarr store to create or continue.")],
    split: Annotated[int, typer.Option(help="Official split number (1-3) where the dataset has several.")] = 1,
    model: Annotated[str, typer.Option(help="Image model: ViT-B-16, ViT-L-14, MAE-B-16, DINOv2-B-14, timm/<name>, test-vit.")] = "ViT-B-16",
    pretrained: Annotated[str, typer.Option(help="Weights: a tag (hub cache), a checkpoint file, 'none' (random), or 'auto'.")] = "auto",
    name: Annotated[Optional[str], typer.Option(help="Key of this model in the store (default: from --model).")] = None,
    frame_stride: Annotated[int, typer.Option(help="Keep every N-th frame.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Frames per model forward.")] = 64,
    workers: Annotated[int, typer.Option(help="Decode processes (0: decode in the main process).")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16.")] = "auto",
    dtype: Annotated[str, typer.Option(help="Stored token dtype: float16 or float32.")] = "float16",
    codec: Annotated[str, typer.Option(help="Compression: none, lz4, zstd (see BENCHMARKS.md).")] = "none",
    frames_per_shard: Annotated[int, typer.Option(help="Frames per shard file.")] = 64,
    shard: Annotated[str, typer.Option(help="K/N: this process extracts every N-th video from the K-th (0-based).")] = "0/1",
    seed: Annotated[int, typer.Option(help="Seed of random-init models.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Decode every video, run the frozen image model once per frame, store the patch tokens."""
    from .extract import ExtractConfig, extract_videos, parse_shard, summary_dict

    cfg = ExtractConfig(
        dataset=dataset, root=root, out=out, split=split, model=model, pretrained=pretrained,
        name=name, frame_stride=frame_stride, batch_size=batch_size, workers=workers,
        device=device, precision=precision, dtype=dtype, codec=codec,
        frames_per_shard=frames_per_shard, shard=parse_shard(shard), seed=seed,
    )
    summary = extract_videos(cfg)
    if json_out:
        typer.echo(json.dumps(summary_dict(summary), indent=2))
    else:
        typer.echo("\n".join(summary.lines()))
    raise typer.Exit(summary.exit_code)


@app.command()
@user_errors
def info(
    store: Annotated[Path, typer.Argument(help="A store made by `extract`.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Summarise a store: videos, image models, frames, bytes, failures."""
    from .store import open_store, summarize

    s = summarize(open_store(store))
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
    typer.echo(f"{s['path']}: dataset {s['dataset']}, {s['videos']} videos "
               f"({', '.join(f'{k} {v}' for k, v in s['splits'].items())}), {s['classes']} classes")
    for key, m in s["ifms"].items():
        per = m["bytes"] / m["frames"] / 1e3 if m["frames"] else 0
        typer.echo(f"  {key}: {m['model']} ({m['pretrained']}) grid {m['grid'][0]}x{m['grid'][1]} dim {m['dim']} "
                   f"{m['dtype']} stride {m['frame_stride']} codec {m['codec']}")
        typer.echo(f"    {m['done']} done, {m['pending']} pending, {len(m['failed'])} failed; "
                   f"{m['frames']} frames, {m['bytes'] / 1e6:.1f} MB ({per:.1f} kB/frame)")
        for f in m["failed"]:
            typer.echo(f"    failed {f['name']}: {f['reason']}")
    if not s["ifms"]:
        typer.echo("  no image model extracted yet")


@app.command()
@user_errors
def verify(store: Annotated[Path, typer.Argument(help="A store made by `extract`.")]):
    """Check completeness, offsets, shapes and NaN/Inf; exit 1 on any problem."""
    from tqdm import tqdm

    from .store import open_store, verify as verify_store

    problems = verify_store(open_store(store), progress=lambda it: tqdm(it, desc="verify", unit="video"))
    for p in problems:
        typer.echo(p)
    typer.echo(f"{len(problems)} problem(s)" if problems else "ok")
    raise typer.Exit(1 if problems else 0)


if __name__ == "__main__":
    app()
