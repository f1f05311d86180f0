"""The paper's ablations (Figures 3-6, Tables 4-5), every one from ONE store per dataset.

    .venv/bin/python -m pipelines.ablation spatial-res --out runs/ablations   # make ablation-spatial-res
    .venv/bin/python -m pipelines.ablation tmm-depth --cache ucf101.zarr,diving48.zarr \\
        --epochs 200 --ft-epochs 50 --jobs 2
    .venv/bin/python -m pipelines.ablation ifm --cache ucf101.zarr    # each IFM in it, and pairs
    .venv/bin/python -m pipelines.ablation storage --jobs 2   # float16/int8 x stride 1/2 (ablation_storage.py)
    .venv/bin/python -m pipelines.ablation spatial-res --dry-run   # the plan and its measured ETA only

It prints the plan (settings x seeds on each store, what is finished, how many run at once) and
an ETA from the first steps of each training of each distinct model on each store (and an epoch's
end), then a line per finished run with the time left; Ctrl-C ends every worker and exits 130
(ablation_runs.py). Where no GPU is, the default study is CPU-sized (one training seed instead
of three, into OUT/<ablation>-cpu/); --full runs all of it.

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
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# The settings' rules and the report live beside this file; the names tests use are re-exported.
from pipelines.ablation_plan import ABLATIONS, channel_values, describe_store, label_stores, plan, spatial_values  # noqa: F401
from pipelines.ablation_report import CSV_COLUMNS, plot, render, write_csv  # noqa: F401
from pipelines.ablation_runs import GIB_PER_RUN, Run, default_jobs, duration, measure_eta, on_gpu, run_all
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
# Where no GPU is, the default study (synthetic stores, no recipe asked for) is cut to fit a
# 2-core CPU in under 15 minutes; --full (make: FULL=1) runs the whole of it.
CPU_SIZED = "1 training seed instead of 3"


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
def setting_configs(folder: Path) -> tuple[dict, object, object, dict]:
    """The setting in `folder` (its setting.json): the setting, its PRP and fine-tune configs and
    the protocol's remaining arguments."""
    from advise_cache.configs import preset_config

    spec = json.loads((folder / "setting.json").read_text())
    s, r = spec["setting"], spec["recipe"]
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
    return s, prp, ft, {"views": r["views"], "split": r["test_split"], "matched": r.get("matched", True)}


def run_setting(folder: Path) -> dict:
    """The paper's protocol (`advise_cache.protocol.run_protocol`: PRP, the fine-tunes from it and
    from scratch, the compute-matched scratch run, their evaluations) for the setting in `folder`;
    writes and returns its result.json. Every stage resumes, and a finished one is read back."""
    from advise_cache.models import TMMConfig, model_stats
    from advise_cache.protocol import run_protocol
    from advise_cache.sampling import SamplerConfig

    s, prp, ft, protocol = setting_configs(folder)
    t0 = time.perf_counter()
    stats = model_stats(TMMConfig(**s["tmm"]), len(SamplerConfig().rates), clip=tuple(s["clip"]))
    got = run_protocol(folder, prp, ft, **protocol)
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


def estimate_setting(folder: Path) -> dict:
    """Seconds per protocol stage of the setting in `folder`, from the first steps of each training and
    one evaluation in folder/scratch (`advise_cache.protocol.estimate_protocol`)."""
    from advise_cache.protocol import estimate_protocol

    _, prp, ft, protocol = setting_configs(folder)
    return estimate_protocol(folder / "scratch", prp, ft, **protocol)


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


# -- main --------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
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
    add_study_flags(p)
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
    return p


def add_study_flags(p: argparse.ArgumentParser) -> None:
    """Where the study runs, how many runs at once, how much of it."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument(
        "--jobs",
        type=int,
        help="runs at once, a worker process each (default: one per GPU on a GPU, else one per usable core, "
        f"at most one per {GIB_PER_RUN} GiB of available memory)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="the full study where no GPU is here (default there: CPU-sized, " + CPU_SIZED + ")",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and its ETA (a short measured run) only")


def parse_args(argv) -> argparse.Namespace:
    args = parser().parse_args(argv)
    args.ifm = tuple(k for k in args.ifm.split(",") if k)
    args.argv = list(argv)  # the command, as reports name it
    if args.seeds is not None and args.seeds < 1 or args.seed < 0 or args.jobs is not None and args.jobs < 1:
        raise SystemExit(f"need --seeds >= 1, --seed >= 0 and --jobs >= 1, got {args.seeds}, {args.seed}, {args.jobs}")
    # CPU-sized: the synthetic recipe, asked for by nothing, on a machine without a GPU.
    args.cpu_sized = not (args.recipe or args.cache or args.full or args.seeds) and not on_gpu(args.device)
    args.seeds = 1 if args.cpu_sized else args.seeds
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
    try:
        return study(args)
    except KeyboardInterrupt:  # before the runs started (study answers for those)
        print(f"\ninterrupted; run the same command again to continue: {command(args)}", flush=True)
        return 130


def study(args) -> int:
    """Plan the study, print the plan and its ETA, run what is not finished, write the report."""
    stores, infos, settings, notes = plan_study(args)
    out = study_folder(args)
    check_recipe(out, args.recipe, write=not args.dry_run)
    for n in notes:
        print(f"note: {n}")
    todo = [s for s in settings if not (out / s.folder / "result.json").exists()]
    jobs = print_plan(args, infos, settings, todo, out)
    try:
        runs = estimate_runs(args, todo, jobs)
        if args.dry_run:
            return 0
        for run, s in zip(runs, todo):
            write_spec(run.folder, s, args)
        t0 = time.perf_counter()
        failed = run_all(runs, jobs, gpus(args))
    except KeyboardInterrupt:
        finished = sum((out / s.folder / "result.json").exists() for s in settings)
        print(
            f"\ninterrupted: {finished} of {len(settings)} runs finished, kept in {out}; "
            f"run the same command again to resume: {command(args)}",
            flush=True,
        )
        return 130
    if runs:
        print(f"{len(runs)} runs in {duration(time.perf_counter() - t0)}", flush=True)
    return report(args, out, stores, settings, notes) or (1 if failed else 0)


def study_folder(args) -> Path:
    """OUT/<name>, or OUT/<name>-cpu for the CPU-sized default (another recipe: never mixed)."""
    return args.out / (f"{args.name}-cpu" if args.cpu_sized else args.name)


def command(args) -> str:
    """This study's command line, as the interrupted line names it."""
    python = os.path.relpath(sys.executable)
    python = sys.executable if python.startswith("..") else python
    return shlex.join([python, "-m", "pipelines.ablation", *args.argv])


def gpus(args) -> int:
    import torch

    return torch.cuda.device_count() if on_gpu(args.device) else 0


def plan_study(args) -> tuple[list[Path], list, list, list[str]]:
    """The stores (the synthetic ones built on first use), their descriptions, the settings (a
    run each: setting x seed x store) and the notes on what did not fit."""
    variants = STORAGE if args.name == "storage" else ONE_STORE
    stores = (
        synthetic_stores(args.data, args.name == "ifm", variants)
        if not args.cache
        else [Path(p) for p in args.cache.split(",") if p]
    )
    infos = [describe_store(p) for p in stores]  # storage: a dataset's stores are its settings
    infos = infos if args.name == "storage" else label_stores(infos)
    settings, notes = [], []
    for info in infos:
        s, n = plan(args.name, info, args)
        settings, notes = settings + s, notes + n
    if args.settings:
        wanted = {v.strip() for v in args.settings.split(",")}
        settings = [s for s in settings if s.label in wanted]
    return stores, infos, settings, notes


def print_plan(args, infos, settings, todo, out: Path) -> int:
    """Print what the study runs, how many at once (returned) and the CPU-sized cut."""
    jobs, rule = (args.jobs, "--jobs") if args.jobs else default_jobs(args.device)
    labels = len({(s.dataset, s.label) for s in settings}) // max(1, len(infos))
    trainings = sum(1 if s.tmm["tmm"] == "none" else 3 + args.recipe.matched for s in settings)
    print(
        f"plan: {args.name}, {labels} setting(s) x {len(args.recipe.seeds)} seed(s) on each of {len(infos)} "
        f"store(s) = {len(settings)} runs, {trainings} trainings (PRP, its fine-tune, a fine-tune from scratch"
        f"{', one as long as both' if args.recipe.matched else ''}), each fine-tune evaluated; results in {out}",
        flush=True,
    )
    if args.cpu_sized:
        print(f"CPU-sized default (no GPU here): {CPU_SIZED}; the full study: FULL=1 (make) or --full", flush=True)
    print(
        f"{args.name}: {len(settings)} runs on {len(infos)} store(s); {len(settings) - len(todo)} already finished, "
        f"{len(todo)} to run, {min(jobs, len(todo)) or jobs} at a time ({rule})",
        flush=True,
    )
    return jobs


def write_spec(folder: Path, s, args) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"setting": asdict(s), "recipe": asdict(args.recipe), "device": args.device, "preload": args.preload}
    write_json(folder / "setting.json", spec)


def estimate_runs(args, todo: list, jobs: int) -> list[Run]:
    """A Run per setting to do, with its ETA measured: the first steps of each training and one
    evaluation of each distinct model on each store (seeds share it), in scratch folders;
    prints the whole study's ETA."""
    kinds = [(s.store, s.ifm, json.dumps(s.tmm, sort_keys=True), s.source_stride) for s in todo]
    probes = {k: todo[kinds.index(k)] for k in dict.fromkeys(kinds)}  # the first setting of each kind
    with tempfile.TemporaryDirectory(prefix="ablation-eta-") as scratch:
        folders = {k: Path(scratch) / str(i) for i, k in enumerate(probes)}
        for k, s in probes.items():
            write_spec(folders[k], s, args)
        if probes:
            print(f"measuring the ETA: the first steps of each training of {len(probes)} setting(s)", flush=True)
        measured = measure_eta(list(folders.values()), jobs, gpus(args)) if probes else {}
    runs = []
    for s, k in zip(todo, kinds):
        got = measured.get(folders[k], {})
        label = f"{s.dataset} {s.label}" + (f" seed {s.seed}" if s.seeds > 1 else "")
        runs.append(Run(study_folder(args) / s.folder, label, sum(got.values())))
    print_eta(runs, jobs, len(measured) < len(probes))
    return runs


def print_eta(runs: list[Run], jobs: int, partial: bool) -> None:
    """The study's ETA: the measured runs' estimates, `jobs` at a time."""
    each = sorted(r.estimate for r in runs if r.estimate > 0)
    if runs and not each:
        print("ETA: unknown (its measured run failed, the error is above)", flush=True)
    if not each:
        return
    at_once = min(jobs, len(runs))
    print(
        f"ETA: {'at least' if partial else 'about'} {duration(sum(each) / at_once)} for {len(runs)} runs, "
        f"{at_once} at a time ({duration(each[0])} to {duration(each[-1])} a run, from the first steps and an "
        f"epoch's end timed){'; unknown for those whose measured run failed' if partial else ''}",
        flush=True,
    )


def report(args, out: Path, stores: list[Path], settings: list, notes: list[str]) -> int:
    """results.csv, .md and .png of every finished run; 1 where none has finished."""
    done = [(s, out / s.folder / "result.json") for s in settings]
    rows = [json.loads(path.read_text()) for _, path in done if path.exists()]
    missing = [f"{s.dataset} {s.label}" for s, path in done if not path.exists()]
    text = render(args.name, rows, args.recipe, notes, missing)
    if args.name == "storage" and rows:
        from pipelines.ablation_storage import report as storage_report

        text = storage_report(text, stores, rows, args)
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
    return 0 if rows else 1


def check_recipe(out: Path, recipe: Recipe, write: bool = True) -> None:
    """Results in one folder come from one recipe: refuse to mix."""
    path, mine = out / "recipe.json", json.loads(json.dumps(asdict(recipe)))
    if path.exists():
        # Folders from before the compute-matched run existed ran without it: --no-matched continues them.
        if (theirs := {"matched": False, **json.loads(path.read_text())}) != mine:
            diff = ", ".join(f"{k} {theirs.get(k)!r} -> {v!r}" for k, v in mine.items() if theirs.get(k) != v)
            raise SystemExit(f"{out} holds results of another recipe ({diff}); pass another --out or remove it")
        return
    if write:
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, mine)


def setup_logging() -> None:
    """The library's warnings and no other's; this script prints its own progress."""
    quiet()
    logging.getLogger("advise_cache").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
