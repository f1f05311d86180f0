"""The commands on a store's tokens: `train`, `finetune`, `stats`, `evaluate`, `visualize`,
`embed` (cli.py registers them).

Each parses flags into a config (every default is the config field's), calls one library
function and prints; the libraries are imported when a command runs, so `--help` stays
instant.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from .config_files import given_flags, overlay, train_config_from
from .configs import PRESETS, TMMConfig, TrainConfig, config_to_dict, fields_from, preset_config
from .errors import AdviseCacheError
from .sampling import SamplerConfig
from .storage import store_location

TRAIN = TrainConfig(cache=Path(), out=Path())  # every flag's default
SAMPLER: SamplerConfig = TRAIN.sampler
TMM: TMMConfig = TRAIN.tmm


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise AdviseCacheError(f"{what}: expected comma-separated integers, got {text!r}") from None


def _tmm_fields(tmm: str, spatial_pool: int, channel_pool: int, **given) -> dict:
    """The TMM fields a command was given (None: the preset's), SFU's 0 meaning "keep"."""
    return dict(given, tmm=tmm, spatial_pool=spatial_pool or None, channel_pool=channel_pool or None)


def _preset_note(name: str) -> str:
    """Help text: each preset's value of a field (`tmm.x`, `sampler.x`, or a TrainConfig field)."""
    where, _, key = name.rpartition(".")

    def value(p) -> object:
        if where == "tmm":
            return getattr(p.tmm, key)
        return (
            p.sampler.get(key, getattr(SAMPLER, key)) if where == "sampler" else p.train.get(key, getattr(TRAIN, key))
        )

    return " Default: the --preset's (" + ", ".join(f"{n} {value(p)}" for n, p in PRESETS.items()) + ")."


Tmm = Annotated[str, typer.Option(help="r3d (ResNet3D bottleneck blocks) or none (average pooling baseline).")]
Blocks = Annotated[int | None, typer.Option(help="Bottleneck blocks in the TMM." + _preset_note("tmm.blocks"))]
Hidden = Annotated[int | None, typer.Option(help="Bottleneck width." + _preset_note("tmm.hidden"))]
OutDim = Annotated[int | None, typer.Option(help="Block output width." + _preset_note("tmm.out_dim"))]
TKernel = Annotated[
    int | None,
    typer.Option(help="Temporal kernel of each block's first conv." + _preset_note("tmm.temporal_kernel")),
]
SPool = Annotated[int, typer.Option(help="SFU: pool the h x w grid to S x S (0 keeps it).")]
CPool = Annotated[int, typer.Option(help="SFU: pool the channels to C (0 keeps them).")]
Head = Annotated[
    str | None,
    typer.Option(
        help="mlp (Linear, ReLU, Linear), bn-mlp (Linear without bias, BatchNorm, ReLU, Linear: the released "
        "code's) or linear." + _preset_note("tmm.head")
    ),
]
HeadHidden = Annotated[int | None, typer.Option(help="Hidden width of an MLP head." + _preset_note("tmm.head_hidden"))]
WeightInit = Annotated[
    str | None,
    typer.Option(help="he (Kaiming-normal convs) or torch (PyTorch's defaults)." + _preset_note("tmm.weight_init")),
]
Preset = Annotated[
    str,
    typer.Option(
        help="ours (the project's defaults), paper (the TMM the paper's Tables 2-3 count) or released (the "
        "released code's model and recipe, docs/FIDELITY.md); the flags given override it."
    ),
]


def default_run_dir(cache: Path, task: str, scratch: bool = False, tmm: str = "r3d") -> Path:
    """Where a run goes without --out: runs/<store name>-prp, -ft or -scratch, plus -avg for
    the average-pooling baseline, so the README's stage-2 commands do not collide."""
    kind = "prp" if task == "prp" else "scratch" if scratch else "ft"
    return Path("runs") / f"{store_location(cache).stem}-{kind}{'-avg' if tmm == 'none' else ''}"


def train_command(task: str):
    """The `train` (task prp) or `finetune` (task classify) command."""

    def command(
        ctx: typer.Context,
        cache: Annotated[
            str | None,
            typer.Option(help="The store to train from: a path, or s3://, gs://, az://, file:// URL."),
        ] = None,
        config: Annotated[
            Path | None,
            typer.Option(
                help="Settings from a YAML or JSON file (a run folder's config.json replays that run); "
                "flags given beside it override it."
            ),
        ] = None,
        print_config: Annotated[
            bool, typer.Option(help="Print the resolved settings as JSON (a valid --config) and exit.")
        ] = False,
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
        lr: Annotated[float, typer.Option(help="Base learning rate, scaled with the batch by --lr-rule.")] = TRAIN.lr,
        lr_rule: Annotated[
            str | None,
            typer.Option(
                help="per-clip: lr x clips / 32 (the project's); code: lr x videos / 64, a video being "
                "--clips-per-video clips (the released code's utils/solver.py)." + _preset_note("lr_rule")
            ),
        ] = None,
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
        clips_per_video: Annotated[
            int, typer.Option(help="PRP clips per video per epoch (and --clip-mode jitter's).")
        ] = SAMPLER.clips_per_video,
        clip_start: Annotated[
            str | None,
            typer.Option(
                help="Where a PRP clip starts: any frame (wrapping past the end), or code: in [0, n - frames x "
                "stride], videos shorter than that left out (the released code's)." + _preset_note("sampler.clip_start")
            ),
        ] = None,
        clip_order: Annotated[
            str | None,
            typer.Option(
                help="shuffled (each clip on its own) or by-video (a video's clips in one batch, as the released "
                "code's)." + _preset_note("sampler.clip_order")
            ),
        ] = None,
        clip_mode: Annotated[
            str | None,
            typer.Option(
                help="Fine-tuning clips: stride, segment, or jitter (the released code's: rate-1 PRP clips, "
                "--clips-per-video per video)." + _preset_note("clip_mode")
            ),
        ] = None,
        tmm: Tmm = TMM.tmm,
        blocks: Blocks = None,
        hidden: Hidden = None,
        out_dim: OutDim = None,
        temporal_kernel: TKernel = None,
        spatial_pool: SPool = TMM.spatial_pool or 0,
        channel_pool: CPool = TMM.channel_pool or 0,
        head: Head = None,
        head_hidden: HeadHidden = None,
        weight_init: WeightInit = None,
        preset: Preset = "ours",
        sync_bn: Annotated[
            bool | None,
            typer.Option(help="Under torchrun, BatchNorm over every rank's batch (CUDA)." + _preset_note("sync_bn")),
        ] = None,
        preload: Annotated[
            str,
            typer.Option(
                help="Hold the videos this process samples resident: none, ram or gpu (on the device, when they fit)."
            ),
        ] = TRAIN.preload,
        save_every: Annotated[int, typer.Option(help="Epochs between checkpoints.")] = TRAIN.save_every,
        resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")] = TRAIN.resume,
        override: Annotated[
            bool, typer.Option(help="With --resume: accept changed optimisation flags.")
        ] = TRAIN.override,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = TRAIN.device,
        precision: Annotated[
            str | None,
            typer.Option(
                help="auto (bf16 on CUDA), fp32, bf16, fp16 (CUDA, with loss scaling)." + _preset_note("precision")
            ),
        ] = None,
        seed: Annotated[int, typer.Option(help="Seed of sampling and initialisation.")] = TRAIN.seed,
        loader_threads: Annotated[
            int,
            typer.Option(
                help="Threads reading clips from the store (0: on CUDA this process's share of the cores, "
                "4 to 16; 4 on the CPU)."
            ),
        ] = TRAIN.loader_threads,
        log_every: Annotated[
            int, typer.Option(help="Steps between metric lines; the host waits for the GPU only then.")
        ] = TRAIN.log_every,
        compile: Annotated[bool, typer.Option(help="torch.compile the model.")] = TRAIN.compile,
        local_cache: Annotated[
            Path | None,
            typer.Option(help="With a store in a bucket: keep its shards in this folder (shared by a node's ranks)."),
        ] = TRAIN.local_cache,
        local_cache_gb: Annotated[
            float | None, typer.Option(help="Bound of --local-cache in GB (default: 90% of its disk's free space).")
        ] = TRAIN.local_cache_gb,
        tensorboard: Annotated[
            bool, typer.Option(help="Also write TensorBoard event files into RUN/tensorboard (needs tensorboard).")
        ] = TRAIN.tensorboard,
        skip_damaged: Annotated[
            bool,
            typer.Option(help="A video with a frame failing its checksum is named and left out, not an error."),
        ] = TRAIN.skip_damaged,
        views_train: Annotated[
            str,
            typer.Option(
                help="A store with augmented views (extract --aug-views): each clip draws one view, the same for "
                "its frames, from all (the centre crop and the augmented views), augmented, centre, or N (the centre "
                "crop and the first N augmented views)."
            ),
        ] = TRAIN.views_train,
    ):
        flags = dict(locals())
        given = given_flags(ctx) | ({"init"} if scratch else set())

        if init is not None and scratch:
            raise AdviseCacheError("give --init or --scratch, not both")
        cfg = preset_config(
            preset,
            tmm=_tmm_fields(**fields_from(TMMConfig, flags)),
            sampler={**fields_from(SamplerConfig, flags), "rates": _ints(rates, "--rates")},
            **{
                **fields_from(TrainConfig, {k: v for k, v in flags.items() if k not in ("tmm", "sampler", "preset")}),
                "cache": None if cache is None else store_location(cache, "--cache"),
                "task": task,
                "ifm": tuple(k for k in ifm.split(",") if k),
            },
        )
        if config is not None:  # the file, then the flags given on top
            cfg = overlay(train_config_from(config, task, preset if "preset" in given else None), cfg, given)
        if cfg.cache is None:
            raise AdviseCacheError("--cache STORE is missing (or give it in a --config file)")
        if cfg.out is None:
            cfg = replace(cfg, out=default_run_dir(cfg.cache, task, scratch, cfg.tmm.tmm))
            if not print_config:
                typer.echo(f"run folder: {cfg.out}")
        out = cfg.out
        if config is None and task == "classify" and init is None and not scratch:
            # Without either, only a run already under way knows where its TMM came from (a
            # config file says it: no init is a run from scratch).
            if not resume:
                raise AdviseCacheError("finetune needs --init CHECKPOINT (pretrained TMM) or --scratch (random TMM)")
            if not (out / "checkpoint.pt").is_file():
                raise AdviseCacheError(
                    f"--resume: {out} holds no run to continue; start it with --init CHECKPOINT or --scratch"
                )
        if print_config:
            typer.echo(json.dumps(config_to_dict(cfg), indent=2))
            return
        from .train import train

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

    return command


def stats(
    cache: Annotated[
        str | None, typer.Option(help="Take the clip's grid and dim from this store (path or URL).")
    ] = None,
    clip: Annotated[str, typer.Option(help="T,h,w,D of one clip (without --cache).")] = "8,14,14,768",
    classes: Annotated[int, typer.Option(help="Head outputs (4 PRP rates).")] = len(SAMPLER.rates),
    tmm: Tmm = TMM.tmm,
    blocks: Blocks = None,
    hidden: Hidden = None,
    out_dim: OutDim = None,
    temporal_kernel: TKernel = None,
    spatial_pool: SPool = TMM.spatial_pool or 0,
    channel_pool: CPool = TMM.channel_pool or 0,
    head: Head = None,
    head_hidden: HeadHidden = None,
    weight_init: WeightInit = None,
    preset: Preset = "ours",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Trainable parameters and forward cost of the TMM for one clip: multiply-accumulates (the
    paper's "FLOPs"; `macs` in --json) and FLOPs (two per MAC; `flops` in --json)."""
    flags = dict(locals())
    from .models import model_stats

    dims = _ints(clip, "--clip") if cache is None else (SAMPLER.frames, *_store_grid_dim(cache))
    if len(dims) != 4:
        raise AdviseCacheError(f"--clip: expected T,h,w,D (four integers), got {clip!r}")
    t, h, w, d = dims
    cfg = preset_config(
        preset, tmm={**_tmm_fields(**fields_from(TMMConfig, flags)), "in_dim": d}, cache=Path(), out=Path()
    )
    s = model_stats(cfg.tmm, classes, clip=(t, h, w, d))
    if json_out:
        typer.echo(json.dumps({**s, "clip": [t, h, w, d], "preset": preset}))
    else:
        typer.echo(
            f"clip {t}x{h}x{w}x{d} ({preset}): {s['params'] / 1e6:.2f} M trainable parameters, "
            f"{s['macs'] / 1e9:.2f} G multiply-accumulates forward"
        )


def _store_grid_dim(cache: str) -> tuple[int, int, int]:
    from .loader import TokenSource
    from .store import open_store

    source = TokenSource(open_store(store_location(cache, "--cache")))
    return (*source.grid, source.dim)


def evaluate(
    cache: Annotated[str, typer.Option(help="The store to evaluate on (path or URL).")],
    checkpoint: Annotated[Path, typer.Option(help="A fine-tuned checkpoint (file or run folder).")],
    views: Annotated[int, typer.Option(help="Clips per video; their logits are averaged.")] = 4,
    crops: Annotated[
        int | None,
        typer.Option(
            help="Also average over the store's evaluation crops: 3 (left/centre/right, as the released code's "
            "10 x 3 with --views 10) or 1 (the centre one); the store must be extracted with --crops 3. "
            "Default: the centre crop of every frame."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    clip_mode: Annotated[
        str | None,
        typer.Option(help="stride or segment (default: as trained; a jitter model is tested on stride clips)."),
    ] = None,
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
    png = confusion or run_dir
    if png.is_dir():
        png = png / f"confusion-{split}.png"
    r = run(
        store_location(cache, "--cache"),
        checkpoint,
        views,
        split,
        device,
        clip_mode,
        png,
        progress=lambda xs: tqdm(xs, desc="evaluate", unit="batch", disable=json_out),
        crops=crops,
    )
    if json_out:
        typer.echo(json.dumps({k: v for k, v in r.items() if k != "confusion"}, indent=2))
        return
    typer.echo(
        f"{r['videos']} videos of {r['split']}, {r['views']} views"
        + (f" x {r['crops']} crops" if r["crops"] else "")
        + ": top-1 {100 * r['top1']:.2f}%  "
        f"top-5 {100 * r['top5']:.2f}%"
    )
    for c, acc in r["per_class"].items():
        typer.echo(f"  {c}: {100 * acc:.1f}%")
    typer.echo(f"confusion matrix: {r['confusion_png']}")


def visualize(
    cache: Annotated[str, typer.Option(help="The store the checkpoints' features come from (path or URL).")],
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

    acts = run(store_location(cache, "--cache"), [checkpoint, *(compare or [])], video, out, frames, video_root, device)
    typer.echo(
        f"{out}: {len(acts.rows)} rows ({', '.join(r.label.splitlines()[0] for r in acts.rows)}) "
        f"x {len(acts.frames)} frames of {video}"
    )


def embed(
    cache: Annotated[str, typer.Option(help="The store to embed (path or URL).")],
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint (file or run folder), PRP or fine-tuned.")],
    out: Annotated[Path, typer.Option(help="The .npz to write: embeddings, names, labels, classes, meta.")],
    views: Annotated[int, typer.Option(help="Clips per video; their pooled features are averaged.")] = 4,
    split: Annotated[str, typer.Option(help="Split to embed, or all.")] = "test",
    clip_mode: Annotated[
        str | None,
        typer.Option(help="stride or segment (default: as trained; a jitter model is tested on stride clips)."),
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw a 2-D t-SNE coloured by class (PNG).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
):
    """One embedding per video (pooled TMM output averaged over views), optionally a t-SNE plot."""
    from tqdm import tqdm

    from .embed import embed as run
    from .embed import plot_embeddings, save_embeddings

    for path, what in ((out, "--out"), (plot, "--plot")):
        if path is not None and path.is_dir():
            raise AdviseCacheError(
                f"{what} {path} is a folder; give the file to write (e.g. {path / 'embeddings.npz'})"
            )
    emb = run(
        store_location(cache, "--cache"),
        checkpoint,
        views,
        split,
        device,
        clip_mode,
        progress=lambda xs: tqdm(xs, desc="embed", unit="batch"),
    )
    save_embeddings(out, emb)
    typer.echo(f"{out}: {emb.embeddings.shape[0]} videos x {emb.embeddings.shape[1]} dims")
    if plot is not None:
        plot_embeddings(emb, plot)
        typer.echo(f"t-SNE plot: {plot}")
