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
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Annotated

import typer

from .errors import AdviseCacheError

try:  # the configs bring torch (a few seconds): a Ctrl-C meanwhile ends quietly, as later
    from .extract import ExtractConfig
    from .models import TMMConfig
    from .sampling import SamplerConfig
    from .train_config import TrainConfig
except KeyboardInterrupt:
    sys.stderr.write("interrupted\n")
    raise SystemExit(130) from None

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="AdViSe as a feature cache: extract frozen image-model tokens once, train from them.",
)
log = logging.getLogger("advise_cache")

# Every flag's default is its config field's default: the configs are the one source of truth.
EXTRACT = ExtractConfig(dataset="", root=Path(), out=Path())
TRAIN = TrainConfig(cache=Path(), out=Path())
SAMPLER: SamplerConfig = TRAIN.sampler
TMM: TMMConfig = TRAIN.tmm


def _same_name_fields(config_type, flags: dict) -> dict:
    """The flags that are fields of `config_type` under the same name, passed through as given."""
    return {f.name: flags[f.name] for f in fields(config_type) if f.name in flags}


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


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    """advise_cache's warnings (missing videos, failed decodes) reach stderr by default;
    other libraries only at ERROR (open_clip and huggingface_hub are chatty about missing
    weights). --verbose shows everything from DEBUG. Safe to call again."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    ours = logging.DEBUG if verbose else logging.WARNING
    others = logging.DEBUG if verbose else logging.ERROR
    handler.filters.clear()
    handler.addFilter(lambda r: r.levelno >= (ours if r.name.split(".")[0] == "advise_cache" else others))
    root.setLevel(min(ours, others))
    logging.getLogger("huggingface_hub").setLevel(others)  # it has a stderr handler of its own


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False):
    _setup_logging(verbose)


@app.command()
@user_errors
def extract(
    dataset: Annotated[
        str,
        typer.Argument(
            help="ucf101, hmdb51, diving48, ssv2, kinetics400, folder, manifest, synthetic[-appearance|-temporal]"
        ),
    ],
    root: Annotated[
        Path | None,
        typer.Option(
            help="Dataset root, as downloaded (layouts: docs/DATASETS.md; for synthetic, where to generate it). Default: $ADVISE_DATA/DATASET, or data/DATASET when ADVISE_DATA is unset."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="The Zarr store to create or continue. Default: DATASET.zarr in the current folder."),
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
    seed: Annotated[int, typer.Option(help="Seed of random-init models.")] = EXTRACT.seed,
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

    cfg = ExtractConfig(
        **{
            **_same_name_fields(ExtractConfig, flags),
            "root": root or default_root(dataset),
            "out": out or Path(f"{dataset.lower()}.zarr"),
            "codec": codec or EXTRACT.codec,
            "shard": parse_shard(shard),
        }
    )
    if dry_run:
        plan = plan_extraction(cfg)
        typer.echo(json.dumps(asdict(plan), indent=2, default=str) if json_out else "\n".join(plan.lines()))
        return
    summary = extract_videos(cfg)
    if json_out:
        typer.echo(json.dumps(asdict(summary), indent=2))
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
    from .store import open_store
    from .summary import summarize, summary_lines

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
    for line in summary_lines(s):
        typer.echo(line)


@app.command()
@user_errors
def verify(
    store: Annotated[Path, typer.Argument(help="A store made by `extract`.")],
    deep: Annotated[
        bool, typer.Option("--deep", help="Also compare every video's tokens with the checksum written at extraction.")
    ] = False,
):
    """Check completeness, offsets, shapes and NaN/Inf; exit 1 on any problem."""
    from tqdm import tqdm

    from .integrity import quant_notes
    from .integrity import verify as verify_store
    from .store import open_store

    opened = open_store(store)
    problems = verify_store(opened, progress=lambda it: tqdm(it, desc="verify", unit="video"), deep=deep)
    for note in quant_notes(opened):  # told, not counted: a lossy store is not a damaged one
        typer.echo(f"note: {note}")
    for p in problems:
        typer.echo(p)
    typer.echo(f"{len(problems)} problem(s)" if problems else "ok")
    raise typer.Exit(1 if problems else 0)


# -- stage 2 -------------------------------------------------------------------------------
def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise AdviseCacheError(f"{what}: expected comma-separated integers, got {text!r}") from None


def _tmm_config(
    tmm: str,
    blocks: int,
    hidden: int,
    out_dim: int,
    temporal_kernel: int,
    spatial_pool: int,
    channel_pool: int,
    head: str,
    preset: str,
):
    kw = dict(
        tmm=tmm,
        blocks=blocks,
        hidden=hidden,
        out_dim=out_dim,
        spatial_pool=spatial_pool or None,
        channel_pool=channel_pool or None,
    )
    if preset == "paper":
        return TMMConfig.paper(**kw)
    if preset != "ours":
        raise AdviseCacheError(f"--preset must be ours or paper, got {preset!r}")
    return replace(TMM, **kw, temporal_kernel=temporal_kernel, head=head)


Tmm = Annotated[str, typer.Option(help="r3d (ResNet3D bottleneck blocks) or none (average pooling baseline).")]
Blocks = Annotated[int, typer.Option(help="Bottleneck blocks in the TMM.")]
Hidden = Annotated[int, typer.Option(help="Bottleneck width.")]
OutDim = Annotated[int, typer.Option(help="Block output width.")]
TKernel = Annotated[int, typer.Option(help="Temporal kernel of each block's first conv.")]
SPool = Annotated[int, typer.Option(help="SFU: pool the h x w grid to S x S (0 keeps it).")]
CPool = Annotated[int, typer.Option(help="SFU: pool the channels to C (0 keeps them).")]
Head = Annotated[str, typer.Option(help="mlp (2 FC layers, hidden 1024) or linear.")]
Preset = Annotated[str, typer.Option(help="ours, or paper (1x1x1 first conv, linear head: the paper's tables).")]


def default_run_dir(cache: Path, task: str, scratch: bool = False, tmm: str = "r3d") -> Path:
    """Where a run goes without --out: runs/<store name>-prp, -ft or -scratch, plus -avg for
    the average-pooling baseline, so the README's stage-2 commands do not collide."""
    kind = "prp" if task == "prp" else "scratch" if scratch else "ft"
    return Path("runs") / f"{Path(cache).stem}-{kind}{'-avg' if tmm == 'none' else ''}"


def _train_command(task: str):
    def command(
        cache: Annotated[Path, typer.Option(help="The store to train from.")],
        out: Annotated[
            Path | None,
            typer.Option(
                help="Run folder: config, metrics.jsonl, checkpoint. Default: runs/STORE-prp (train); runs/STORE-ft, or runs/STORE-scratch with --scratch (finetune); -avg added with --tmm none."
            ),
        ] = None,
        init: Annotated[
            Path | None, typer.Option(help="Start the TMM from this checkpoint (e.g. PRP-pretrained).")
        ] = TRAIN.init,
        scratch: Annotated[bool, typer.Option(help="Start from a random TMM (the baseline of ΔAcc).")] = False,
        linear_probe: Annotated[bool, typer.Option(help="Freeze the TMM; train only the head.")] = TRAIN.linear_probe,
        ifm: Annotated[str, typer.Option(help="IFM key(s) in the store, comma-separated to concatenate.")] = ",".join(
            TRAIN.ifm
        ),
        split: Annotated[str, typer.Option(help="Split to train on.")] = TRAIN.split,
        epochs: Annotated[int, typer.Option(help="Epochs (the paper: 800 on UCF101 for PRP).")] = TRAIN.epochs,
        max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = TRAIN.max_steps,
        batch_size: Annotated[int, typer.Option(help="Clips per step per process.")] = TRAIN.batch_size,
        lr: Annotated[float, typer.Option(help="Learning rate at batch 32 (scaled linearly).")] = TRAIN.lr,
        warmup_epochs: Annotated[
            float, typer.Option(help="Warm-up epochs (capped at a fifth of the run).")
        ] = TRAIN.warmup_epochs,
        weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = TRAIN.weight_decay,
        label_smoothing: Annotated[float, typer.Option(help="Label smoothing.")] = TRAIN.label_smoothing,
        frames: Annotated[int, typer.Option(help="Frames per clip.")] = SAMPLER.frames,
        stride: Annotated[
            int,
            typer.Option(
                help="Base stride between clip frames, in stored frames (a store made with --frame-stride 2 holds every 2nd frame)."
            ),
        ] = SAMPLER.stride,
        source_stride: Annotated[
            int | None,
            typer.Option(
                help="Base stride in frames of the videos, in place of --stride: divided by the store's frame stride, refused when the store does not hold those frames (the paper's recipe: 2)."
            ),
        ] = TRAIN.source_stride,
        rates: Annotated[str, typer.Option(help="PRP playback rates; negative plays backwards.")] = ",".join(
            map(str, SAMPLER.rates)
        ),
        jitter: Annotated[float, typer.Option(help="PRP speed jitter (uniform in +-jitter).")] = SAMPLER.jitter,
        clips_per_video: Annotated[int, typer.Option(help="PRP clips per video per epoch.")] = SAMPLER.clips_per_video,
        clip_mode: Annotated[str, typer.Option(help="Classification clips: stride or segment.")] = TRAIN.clip_mode,
        tmm: Tmm = TMM.tmm,
        blocks: Blocks = TMM.blocks,
        hidden: Hidden = TMM.hidden,
        out_dim: OutDim = TMM.out_dim,
        temporal_kernel: TKernel = TMM.temporal_kernel,
        spatial_pool: SPool = TMM.spatial_pool or 0,
        channel_pool: CPool = TMM.channel_pool or 0,
        head: Head = TMM.head,
        preset: Preset = "ours",
        preload: Annotated[
            str,
            typer.Option(
                help="Hold the videos this process samples resident: none, ram "
                "(pinned on CUDA) or gpu (on the device, when they fit)."
            ),
        ] = TRAIN.preload,
        save_every: Annotated[int, typer.Option(help="Epochs between checkpoints.")] = TRAIN.save_every,
        resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")] = TRAIN.resume,
        override: Annotated[
            bool, typer.Option(help="With --resume: accept changed optimisation flags.")
        ] = TRAIN.override,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = TRAIN.device,
        precision: Annotated[
            str, typer.Option(help="auto (bf16 on CUDA), fp32, bf16, fp16 (CUDA, with loss scaling).")
        ] = TRAIN.precision,
        seed: Annotated[int, typer.Option(help="Seed of sampling and initialisation.")] = TRAIN.seed,
        loader_threads: Annotated[
            int, typer.Option(help="Threads reading clips from the store.")
        ] = TRAIN.loader_threads,
        log_every: Annotated[
            int, typer.Option(help="Steps between metric lines; the host waits for the GPU only then.")
        ] = TRAIN.log_every,
        compile: Annotated[bool, typer.Option(help="torch.compile the model.")] = TRAIN.compile,
    ):
        flags = dict(locals())
        from .train import train

        if task == "classify" and init is None and not scratch and not resume:
            raise AdviseCacheError("finetune needs --init CHECKPOINT (pretrained TMM) or --scratch (random TMM)")
        if init is not None and scratch:
            raise AdviseCacheError("give --init or --scratch, not both")
        if out is None:
            out = default_run_dir(cache, task, scratch, tmm)
            typer.echo(f"run folder: {out}")
        sampler = SamplerConfig(**{**_same_name_fields(SamplerConfig, flags), "rates": _ints(rates, "--rates")})
        cfg = TrainConfig(
            **{
                **_same_name_fields(TrainConfig, flags),
                "out": out,
                "task": task,
                "ifm": tuple(k for k in ifm.split(",") if k),
                "sampler": sampler,
                "tmm": _tmm_config(
                    tmm, blocks, hidden, out_dim, temporal_kernel, spatial_pool, channel_pool, head, preset
                ),
            }
        )
        try:
            final = train(cfg)
        except KeyboardInterrupt:
            typer.echo(
                f"interrupted; add --resume to the same command to continue {out} from its last checkpoint", err=True
            )
            raise typer.Exit(130) from None
        if final:
            typer.echo(
                f"{out}: epoch {final['epoch']} step {final['step']}: loss {final['loss']:.4f} "
                f"acc {final['acc']:.3f}, {final['clips_per_s']:.1f} clips/s, "
                f"waiting for data {100 * final['data_wait_frac']:.1f}% of the time"
            )

    return user_errors(command)


app.command("train", help="Pretrain the TMM with Playback Rate Perception, straight from the store.")(
    _train_command("prp")
)
app.command("finetune", help="Train the TMM and a new head on the store's labels (from --init or --scratch).")(
    _train_command("classify")
)


@app.command()
@user_errors
def stats(
    cache: Annotated[Path | None, typer.Option(help="Take the clip's grid and dim from this store.")] = None,
    clip: Annotated[str, typer.Option(help="T,h,w,D of one clip (without --cache).")] = "8,14,14,768",
    classes: Annotated[int, typer.Option(help="Head outputs (4 PRP rates).")] = len(SAMPLER.rates),
    tmm: Tmm = TMM.tmm,
    blocks: Blocks = TMM.blocks,
    hidden: Hidden = TMM.hidden,
    out_dim: OutDim = TMM.out_dim,
    temporal_kernel: TKernel = TMM.temporal_kernel,
    spatial_pool: SPool = TMM.spatial_pool or 0,
    channel_pool: CPool = TMM.channel_pool or 0,
    head: Head = TMM.head,
    preset: Preset = "ours",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Trainable parameters and forward cost of the TMM for one clip: multiply-accumulates (the
    paper's "FLOPs"; `macs` in --json) and FLOPs (two per MAC; `flops` in --json)."""
    from .models import model_stats

    dims = _ints(clip, "--clip") if cache is None else (SAMPLER.frames, *_store_grid_dim(cache))
    if len(dims) != 4:
        raise AdviseCacheError(f"--clip: expected T,h,w,D (four integers), got {clip!r}")
    t, h, w, d = dims
    cfg = _tmm_config(tmm, blocks, hidden, out_dim, temporal_kernel, spatial_pool, channel_pool, head, preset)
    cfg = replace(cfg, in_dim=d)
    s = model_stats(cfg, classes, clip=(t, h, w, d))
    if json_out:
        typer.echo(json.dumps({**s, "clip": [t, h, w, d], "preset": preset}))
    else:
        typer.echo(
            f"clip {t}x{h}x{w}x{d} ({preset}): {s['params'] / 1e6:.2f} M trainable parameters, "
            f"{s['macs'] / 1e9:.2f} G multiply-accumulates forward"
        )


def _store_grid_dim(cache: Path) -> tuple[int, int, int]:
    from .loader import TokenSource
    from .store import open_store

    source = TokenSource(open_store(cache))
    return (*source.grid, source.dim)


@app.command()
@user_errors
def evaluate(
    cache: Annotated[Path, typer.Option(help="The store to evaluate on.")],
    checkpoint: Annotated[Path, typer.Option(help="A fine-tuned checkpoint (file or run folder).")],
    views: Annotated[int, typer.Option(help="Clips per video; their logits are averaged.")] = 4,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    clip_mode: Annotated[str | None, typer.Option(help="stride or segment (default: as trained).")] = None,
    confusion: Annotated[
        Path | None, typer.Option(help="Confusion-matrix PNG (default: beside the checkpoint).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Multi-view top-1/top-5, per-class accuracy and a confusion matrix."""
    from tqdm import tqdm

    from .evaluate import evaluate as run

    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    png = confusion or run_dir / f"confusion-{split}.png"
    r = run(
        cache,
        checkpoint,
        views,
        split,
        device,
        clip_mode,
        png,
        progress=lambda xs: tqdm(xs, desc="evaluate", unit="batch", disable=json_out),
    )
    if json_out:
        typer.echo(json.dumps({k: v for k, v in r.items() if k != "confusion"}, indent=2))
        return
    typer.echo(
        f"{r['videos']} videos of {r['split']}, {r['views']} views: top-1 {100 * r['top1']:.2f}%  "
        f"top-5 {100 * r['top5']:.2f}%"
    )
    for c, acc in r["per_class"].items():
        typer.echo(f"  {c}: {100 * acc:.1f}%")
    typer.echo(f"confusion matrix: {r['confusion_png']}")


@app.command()
@user_errors
def visualize(
    cache: Annotated[Path, typer.Option(help="The store the checkpoints' features come from.")],
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint (file or run folder): the first model row.")],
    video: Annotated[str, typer.Option(help="Name of the video in the store (as `info` lists them).")],
    out: Annotated[Path, typer.Option(help="The figure to write (PNG).")],
    compare: Annotated[list[Path] | None, typer.Option(help="More checkpoints, a row each (repeatable).")] = None,
    video_root: Annotated[
        Path | None, typer.Option(help="Where the dataset root is now, if it moved since extraction.")
    ] = None,
    frames: Annotated[int, typer.Option(help="Frames of the clip (columns).")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
):
    """Activation maps (channel-wise L2 norm of the TMM's feature maps) over a video's frames."""
    from .visualize import visualize as run

    acts = run(cache, [checkpoint, *(compare or [])], video, out, frames, video_root, device)
    typer.echo(
        f"{out}: {len(acts.rows)} rows ({', '.join(r.label.splitlines()[0] for r in acts.rows)}) "
        f"x {len(acts.frames)} frames of {video}"
    )


@app.command()
@user_errors
def embed(
    cache: Annotated[Path, typer.Option(help="The store to embed.")],
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint (file or run folder), PRP or fine-tuned.")],
    out: Annotated[Path, typer.Option(help="The .npz to write: embeddings, names, labels, classes, meta.")],
    views: Annotated[int, typer.Option(help="Clips per video; their pooled features are averaged.")] = 4,
    split: Annotated[str, typer.Option(help="Split to embed, or all.")] = "test",
    clip_mode: Annotated[str | None, typer.Option(help="stride or segment (default: as trained).")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw a 2-D t-SNE coloured by class (PNG).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
):
    """One embedding per video (pooled TMM output averaged over views), optionally a t-SNE plot."""
    from tqdm import tqdm

    from .embed import embed as run
    from .embed import plot_embeddings, save_embeddings

    emb = run(
        cache, checkpoint, views, split, device, clip_mode, progress=lambda xs: tqdm(xs, desc="embed", unit="batch")
    )
    save_embeddings(out, emb)
    typer.echo(f"{out}: {emb.embeddings.shape[0]} videos x {emb.embeddings.shape[1]} dims")
    if plot is not None:
        plot_embeddings(emb, plot)
        typer.echo(f"t-SNE plot: {plot}")


if __name__ == "__main__":
    app()
