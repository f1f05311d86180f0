"""The paper's ablations (Figures 3-6, Tables 4-5), every one from ONE store per dataset.

    .venv/bin/python -m pipelines.studies.ablation spatial-res --out runs/ablations   # make ablation-spatial-res
    .venv/bin/python -m pipelines.studies.ablation tmm-depth --cache ucf101.zarr,diving48.zarr \\
        --epochs 200 --ft-epochs 50 --jobs 2
    .venv/bin/python -m pipelines.studies.ablation ifm --cache ucf101.zarr    # each IFM in it, and pairs
    .venv/bin/python -m pipelines.studies.ablation storage --jobs 2   # float16/int8 x stride 1/2 (ablation_storage.py)
    .venv/bin/python -m pipelines.studies.ablation spatial-res --dry-run   # the plan and its measured ETA only

It prints the plan (settings x seeds on each store, what is finished, how many run at once) and
an ETA from the first steps of each training of each distinct model on each store (and an epoch's
end), then a line per finished run with the time left; Ctrl-C ends every worker and exits 130
(ablation_runs.py). Where no GPU is, the default study is CPU-sized (one training seed instead
of three, into OUT/<ablation>-cpu/); --full runs all of it.

Each setting (ablation_plan.py) runs, in a worker process (ablation_setting.py), the paper's
protocol (advise_cache/protocol.py) in
OUT/<ablation>/<dataset>/[seed<k>/]<setting>/: prp/ (PRP pretraining), ft/ (fine-tuned from it:
Acc_ft), scratch/ (from a random TMM: ΔAcc = Acc_ft - Acc_scratch) and scratch-matched/ (from a
random TMM for PRP's and the fine-tune's steps together), then result.json; trainings resume, a
finished setting is skipped, and OUT/<ablation>/recipe.json refuses a second recipe. results.csv,
.md and .png (ablation_report.py) hold every finished setting. Without --cache the synthetic
stores are built under --data.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

if not __package__:  # run as `python pipelines/NAME.py`: import the checkout's packages, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from pipelines.common import REPO
from pipelines.studies.ablation_plan import ABLATIONS, plan_study
from pipelines.studies.ablation_report import report
from pipelines.studies.ablation_runs import (
    GIB_PER_RUN,
    default_jobs,
    duration,
    estimate_runs,
    on_gpu,
    run_all,
)
from pipelines.studies.ablation_setting import (
    CPU_SIZED,
    RECIPES,
    Recipe,
    check_recipe,
    setup_logging,
    write_spec,
)
from pipelines.studies.ablation_storage import report as storage_report


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
        runs = estimate_runs(args, todo, jobs, study_folder(args), gpus(args))
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
    extend = storage_report if args.name == "storage" else None
    return report(args, out, stores, settings, notes, extend) or (1 if failed else 0)


def study_folder(args) -> Path:
    """OUT/<name>, or OUT/<name>-cpu for the CPU-sized default (another recipe: never mixed)."""
    return args.out / (f"{args.name}-cpu" if args.cpu_sized else args.name)


def command(args) -> str:
    """This study's command line, as the interrupted line names it."""
    python = os.path.relpath(sys.executable)
    python = sys.executable if python.startswith("..") else python
    return shlex.join([python, "-m", "pipelines.studies.ablation", *args.argv])


def gpus(args) -> int:
    import torch

    return torch.cuda.device_count() if on_gpu(args.device) else 0


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


if __name__ == "__main__":
    sys.exit(main())
