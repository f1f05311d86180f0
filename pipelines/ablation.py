"""The paper's ablations (Figures 3-6, Tables 4-5), every one from ONE store per dataset.

    .venv/bin/python -m pipelines.ablation spatial-res --out runs/ablations   # make ablation-spatial-res
    .venv/bin/python -m pipelines.ablation tmm-depth --cache ucf101.zarr,diving48.zarr \\
        --epochs 200 --ft-epochs 50 --jobs 2
    .venv/bin/python -m pipelines.ablation ifm --cache ucf101.zarr    # each IFM in it, and pairs
    .venv/bin/python -m pipelines.ablation storage --jobs 2   # float16/int8 x stride 1/2 (ablation_storage.py)

Each setting (ablation_plan.py) runs the paper's protocol (advise_cache/protocol.py) in
OUT/<ablation>/<dataset>/[seed<k>/]<setting>/: prp/ (PRP pretraining), ft/ (fine-tuned from it:
Acc_ft), scratch/ (from a random TMM: ΔAcc = Acc_ft - Acc_scratch) and scratch-matched/ (from a
random TMM for PRP's and the fine-tune's steps together), then result.json; trainings resume, a
finished setting is skipped, and
OUT/<ablation>/recipe.json refuses a second recipe. results.csv, .md and .png (ablation_report.py)
hold every finished setting. Without --cache the synthetic stores are built under --data.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import itertools
import json
import logging
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# The settings' rules and the report live beside this file; the names tests use are re-exported.
from pipelines.ablation_plan import ABLATIONS, channel_values, describe_store, label_stores, plan, spatial_values  # noqa: F401
from pipelines.ablation_report import CSV_COLUMNS, plot, render, write_csv  # noqa: F401
from pipelines.common import REPO, SYNTHETIC, quiet, synthetic_store

SECOND_IFM = ("test-vit-seed1", 1)  # key and seed of the stand-in second IFM
# Stores extracted from each family's videos: (name suffix, token dtype, frame stride).
ONE_STORE = (("", "float16", 1),)
STORAGE = ONE_STORE + (("-int8", "int8", 1), ("-s2", "float16", 2), ("-int8-s2", "int8", 2))


@dataclass(frozen=True)
class Recipe:
    """Everything that changes a setting's result, except the setting itself."""

    epochs: int = 20
    ft_epochs: int = 20
    batch_size: int = 32
    ft_batch_size: int = 32
    lr: float = 1e-3  # at batch 32, scaled linearly (the trainer's)
    max_steps: int | None = None
    views: int = 4
    seeds: tuple[int, ...] = (0,)
    train_split: str = "train"
    test_split: str = "test"
    base_tmm: dict = field(default_factory=lambda: {"blocks": 1, "hidden": 256, "out_dim": 1024, "preset": "ours"})
    prp_clips: int = 4  # PRP clips per video per epoch
    matched: bool = True  # also the compute-matched scratch run (as many steps as PRP + fine-tune)


# Named recipes. "synthetic": the demo's PRP recipe (long enough for PRP to learn on the tiny
# stores), a narrower base TMM (a step of hidden 256 / out 1024 costs ~3x one of 64 / 256 on
# 4 x 4 grids; tmm-width and tmm-depth still vary it) and three seeds, so that differences can
# be told from the seed spread. "full": the trainer's recipe, for real stores.
RECIPES = {
    "synthetic": Recipe(
        batch_size=16,
        ft_batch_size=8,
        lr=2e-3,
        seeds=(0, 1, 2),
        prp_clips=8,
        base_tmm={"blocks": 1, "hidden": 64, "out_dim": 256, "preset": "ours"},
    ),
    "full": Recipe(),
}


# -- stores ------------------------------------------------------------------------------------
def synthetic_stores(data: Path, second_ifm: bool, variants=ONE_STORE) -> list[Path]:
    """The synthetic stores under `data` (the demo's videos), each family's `variants`, built on
    first use (a lock keeps concurrent ablations from extracting the same store twice)."""
    from advise_cache.store import DONE, open_store

    data.mkdir(parents=True, exist_ok=True)
    stores = []
    with open(data / ".ablation-stores.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for family, (suffix, dtype, stride) in itertools.product(SYNTHETIC, variants):
            out = data / f"synthetic-{family}{suffix}.zarr"
            for key, seed in [("test-vit", 0)] + ([SECOND_IFM] if second_ifm else []):
                if (
                    (out / "zarr.json").exists()
                    and key in (s := open_store(out)).ifm_keys()
                    and (s.ifm(key).status() == DONE).all()
                ):
                    continue
                print(f"building {out} ({key}): extracting tokens, once", flush=True)
                synthetic_store(
                    data / f"synthetic-{family}",
                    out,
                    family,
                    model="test-vit",
                    pretrained="none",
                    name=key,
                    seed=seed,
                    dtype=dtype,
                    frame_stride=stride,
                )
            stores.append(out)
    return stores


# -- one setting -------------------------------------------------------------------------------
def run_setting(folder: Path) -> dict:
    """The paper's protocol (`advise_cache.protocol.run_protocol`: PRP, the fine-tunes from it and
    from scratch, the compute-matched scratch run, their evaluations) for the setting in `folder`;
    writes and returns its result.json. Every stage resumes, and a finished one is read back."""
    from advise_cache.configs import preset_config
    from advise_cache.models import TMMConfig, model_stats
    from advise_cache.protocol import run_protocol
    from advise_cache.sampling import SamplerConfig

    spec = json.loads((folder / "setting.json").read_text())
    s, r = spec["setting"], spec["recipe"]
    t0 = time.perf_counter()
    stats = model_stats(TMMConfig(**s["tmm"]), len(SamplerConfig().rates), clip=tuple(s["clip"]))
    common = {
        "cache": Path(s["store"]),
        "ifm": tuple(s["ifm"]),
        "split": r["train_split"],
        "lr": r["lr"],
        "max_steps": r["max_steps"],
        "preload": "ram" if spec["preload"] else "none",
        "device": spec["device"],
        "seed": s["seed"],
        "progress": False,
        "loader_threads": 1 if spec["preload"] else 4,
        "source_stride": s.get("source_stride"),
    }
    preset = r["base_tmm"].get("preset", "ours")
    prp = preset_config(
        preset,
        tmm=s["tmm"],
        sampler={"clips_per_video": r["prp_clips"]},
        **common,
        out=folder / "prp",
        task="prp",
        epochs=r["epochs"],
        batch_size=r["batch_size"],
    )
    ft = preset_config(
        preset,
        tmm=s["tmm"],
        **common,
        out=folder / "ft",
        task="classify",
        epochs=r["ft_epochs"],
        batch_size=r["ft_batch_size"],
    )
    got = run_protocol(folder, prp, ft, views=r["views"], split=r["test_split"], matched=r.get("matched", True))
    result = result_row(s, stats, got, time.perf_counter() - t0)
    write_json(folder / "result.json", result)
    seed = f" | seed {s['seed']}" if s["seeds"] > 1 else ""
    delta = "" if result["delta_acc"] is None else f", ΔAcc {100 * result['delta_acc']:+.1f}"
    if result["delta_matched"] is not None:
        delta += f", vs matched scratch {100 * result['delta_matched']:+.1f}"
    print(
        f"[{s['dataset']} | {s['ablation']} {s['label']}{seed}] done: Acc_ft {100 * result['acc_ft']:.1f}%{delta} "
        f"({result['seconds']:.0f} s)",
        flush=True,
    )
    return result


def result_row(s: dict, stats: dict, got, seconds: float) -> dict:
    """A setting's result.json: the setting, its model's size and cost, the protocol's accuracies
    (a TMM with nothing to pretrain: Acc_ft is its fine-tune from scratch)."""
    prp, scratch, matched = got.stages.get("prp"), got.stages["scratch"], got.stages.get("scratch-matched")
    first = got.stages.get("ft", scratch)
    return {
        "ablation": s["ablation"],
        "dataset": s["dataset"],
        "setting": s["label"],
        "seed": s["seed"],
        "x": s["x"],
        "store": s["store"],
        "ifm": "+".join(s["ifm"]),
        "source_stride": s.get("source_stride"),
        **{k: s["tmm"][k] for k in ("tmm", "blocks", "hidden", "out_dim", "spatial_pool", "channel_pool")},
        "clip": "x".join(map(str, s["clip"])),
        "params": stats["params"],
        "macs": stats["macs"],
        "prp_acc": prp.train_acc if prp else None,
        "prp_steps": prp.steps if prp else 0,
        "acc_ft": first.top1,
        "top5_ft": first.top5,
        "acc_scratch": scratch.top1,
        "delta_acc": got.delta,
        "ft_steps": first.steps,
        "acc_matched": matched.top1 if matched else None,
        "delta_matched": got.delta_matched,
        "matched_steps": matched.steps if matched else None,
        "test_videos": first.videos,
        "seconds": round(seconds, 1),
        "note": s["note"],
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def _worker_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    setup_logging()


def run_settings(folders: list[Path], jobs: int) -> list[Path]:
    """Run the settings in `folders`, `jobs` at a time in a process pool (a broken setting costs
    no other); the folders that failed."""
    failed, jobs = [], max(1, jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_threads, initargs=(threads,)
    ) as pool:
        futures = {pool.submit(run_setting, folder): folder for folder in folders}
        for future in as_completed(futures):
            if (error := future.exception()) is not None:
                print(f"FAILED {futures[future]}:", *traceback.format_exception(error), flush=True)
                failed.append(futures[future])
    return failed


# -- main --------------------------------------------------------------------------------------
def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=ABLATIONS)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "ablations", help="writes into OUT/<name>/")
    p.add_argument("--cache", help="comma-separated stores, one per dataset (default: the synthetic ones)")
    p.add_argument("--data", type=Path, default=REPO / "data", help="where the synthetic stores live")
    p.add_argument(
        "--ifm",
        default="",
        help="IFM key(s): a,b concatenates them for the SFU/TMM ablations; "
        "for temporal and ifm, the keys to compare (default: all)",
    )
    p.add_argument("--settings", default="", help="run only these settings (comma-separated labels)")
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        help="named recipe (default: synthetic without --cache, else full); the flags below override its fields",
    )
    for flag, kind, what in (
        ("epochs", int, "PRP epochs"),
        ("ft-epochs", int, "fine-tuning epochs"),
        ("batch-size", int, "PRP batch"),
        ("ft-batch-size", int, "fine-tuning batch"),
        ("max-steps", int, "stop every training after this many steps"),
        ("lr", float, "learning rate at batch 32, scaled linearly"),
        ("prp-clips", int, "PRP clips per video per epoch"),
        ("views", int, "test clips per video"),
        ("blocks", int, "base TMM blocks"),
        ("hidden", int, "base TMM hidden width"),
        ("seeds", int, "how many seeds"),
        ("out-dim", int, "base TMM block output width"),
    ):
        p.add_argument(f"--{flag}", type=kind, help=what)
    p.add_argument(
        "--preset",
        choices=("ours", "paper", "released"),
        help="base TMM and recipe: ours, paper (`TMMConfig.paper`) or released (the released code's; "
        "its blocks, hidden and out-dim unless given)",
    )
    p.add_argument(
        "--matched",
        action=argparse.BooleanOptionalAction,
        help="also fine-tune from scratch for PRP's and the fine-tune's steps together (default: on)",
    )
    p.add_argument(
        "--preload",
        action=argparse.BooleanOptionalAction,
        help="hold each store's split in RAM (default: on for the synthetic stores)",
    )
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--jobs", type=int, default=1, help="settings run at once (a process pool)")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument(
        "--benchmarks",
        default=str(REPO / "BENCHMARKS.md"),
        help="storage: the file whose section gets the table ('' for none)",
    )
    p.add_argument(
        "--vit-per-class",
        type=int,
        default=1,
        help="storage: short videos per motion class "
        "through a random ViT-B-16, for its int8 error and loader rate (0: none)",
    )
    args = p.parse_args(argv)
    args.ifm = tuple(k for k in args.ifm.split(",") if k)
    args.argv = list(argv)  # the command, as reports name it
    if args.seeds is not None and args.seeds < 1 or args.seed < 0:
        raise SystemExit(f"need --seeds >= 1 and --seed >= 0, got {args.seeds} and {args.seed}")
    args.recipe = resolve_recipe(args)
    args.seeds = args.recipe.seeds
    args.preload = not args.cache if args.preload is None else args.preload
    return args


def resolve_recipe(args) -> Recipe:
    """The named recipe (synthetic without --cache, else full) with the flags given on top; a
    --preset brings its own TMM widths unless --blocks, --hidden or --out-dim are given."""
    recipe = RECIPES[args.recipe or ("full" if args.cache else "synthetic")]
    keys = ("epochs", "ft_epochs", "batch_size", "ft_batch_size", "max_steps", "lr", "prp_clips", "views", "matched")
    given = {k: v for k, v in vars(args).items() if v is not None and k in keys}
    tmm = {k: v for k, v in vars(args).items() if v is not None and k in ("blocks", "hidden", "out_dim")}
    base = recipe.base_tmm
    if args.preset:
        from advise_cache.configs import PRESETS

        shape = PRESETS[args.preset].tmm
        base = {"blocks": shape.blocks, "hidden": shape.hidden, "out_dim": shape.out_dim, "preset": args.preset}
    seeds = tuple(range(args.seed, args.seed + (args.seeds or len(recipe.seeds))))
    split = {"train_split": args.train_split, "test_split": args.test_split}
    return replace(recipe, **given, **split, seeds=seeds, base_tmm={**base, **tmm})


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    setup_logging()
    variants = STORAGE if args.name == "storage" else ONE_STORE
    stores = (
        synthetic_stores(args.data, args.name == "ifm", variants)
        if not args.cache
        else [Path(p) for p in args.cache.split(",") if p]
    )
    infos = [describe_store(p) for p in stores]  # storage: a dataset's stores are its settings
    infos = infos if args.name == "storage" else label_stores(infos)
    out = args.out / args.name
    check_recipe(out, args.recipe)
    settings, notes = [], []
    for info in infos:
        s, n = plan(args.name, info, args)
        settings, notes = settings + s, notes + n
    if args.settings:
        wanted = {v.strip() for v in args.settings.split(",")}
        settings = [s for s in settings if s.label in wanted]
    for n in notes:
        print(f"note: {n}")
    todo = []
    for s in settings:
        folder = out / s.folder
        if not (folder / "result.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            write_json(
                folder / "setting.json",
                {"setting": asdict(s), "recipe": asdict(args.recipe), "device": args.device, "preload": args.preload},
            )
            todo.append(folder)
    print(
        f"{args.name}: {len(settings)} settings on {len(infos)} store(s); {len(settings) - len(todo)} "
        f"already finished, {len(todo)} to run",
        flush=True,
    )
    failed = run_settings(todo, args.jobs)
    done = [(s, out / s.folder / "result.json") for s in settings]
    rows = [json.loads(path.read_text()) for _, path in done if path.exists()]
    missing = [f"{s.dataset} {s.label}" for s, path in done if not path.exists()]
    text = render(args.name, rows, args.recipe, notes, missing)
    if args.name == "storage" and rows:
        from pipelines.ablation_storage import report

        text = report(text, stores, rows, args)
    if rows:
        write_csv(out / "results.csv", rows)
        (out / "results.md").write_text(text)
        plot(out / "results.png", args.name, rows)
    print(f"\n{text}")
    print(
        f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'}"
        if rows
        else "nothing finished: no results written"
    )
    return 1 if failed or not rows else 0


def check_recipe(out: Path, recipe: Recipe) -> None:
    """Results in one folder come from one recipe: refuse to mix."""
    path, mine = out / "recipe.json", json.loads(json.dumps(asdict(recipe)))
    if path.exists():
        # Folders from before the compute-matched run existed ran without it: --no-matched continues them.
        if (theirs := {"matched": False, **json.loads(path.read_text())}) != mine:
            diff = ", ".join(f"{k} {theirs.get(k)!r} -> {v!r}" for k, v in mine.items() if theirs.get(k) != v)
            raise SystemExit(f"{out} holds results of another recipe ({diff}); pass another --out or remove it")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, mine)


def setup_logging() -> None:
    """The library's warnings and no other's; this script prints its own progress."""
    quiet()
    logging.getLogger("advise_cache").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
