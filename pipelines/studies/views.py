"""What stored views buy (issue 21): Acc_ft with 0, 2 and 4 augmented views, seeds, bytes, and
10 x 3 against 4 x 1 evaluation, on the synthetic `shifted` family.

    .venv/bin/python -m pipelines.studies.views              # `make study-views`, ~15 min on 2 cores
    .venv/bin/python -m pipelines.studies.views --quick --no-write   # a look (and the smoke test)

The shifted family's shapes sit at the centre of the train videos and a fifth of the width aside
in the test videos (advise_cache/synthetic.py): the class survives a crop, its place does not, so
random crops have a reason to help. One store holds the centre crop, 4 augmented views and the 3
evaluation crops of every frame (`extract --aug-views 4 --crops 3`, test-vit); a run with N views
trains with `--views-train N` (the centre crop and the first N augmented views: the draws a store
extracted with `--aug-views N` holds, since a view's draw depends on its number alone). Each seed
runs the protocol (advise_cache/protocol.py: PRP, the fine-tune from it) for every N, evaluated
with 4 clips of the centre crop (4 x 1) and with 10 clips x the 3 stored crops (10 x 3). Bytes:
the store's token shard bytes per view (every view the same shape) times the views each N needs.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

if not __package__:  # run as `python pipelines/NAME.py`: import the checkout's packages, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from pipelines.common import REPO, describe_machine, mean_sd, parse_sized, parser, pm, say
from pipelines.sections import Section, publish, section, table

VIEWS = (0, 2, 4)
SIZES = {
    "cpu": {"train_per_class": 10, "test_per_class": 6, "seeds": 3, "epochs": 6, "ft_epochs": 10},
    "quick": {"train_per_class": 2, "test_per_class": 1, "seeds": 1, "epochs": 1, "ft_epochs": 1},
}
FRAMES = (16, 24)  # video lengths drawn in this range


def make_store(work: Path, sizes: dict) -> Path:
    """The shifted videos and their store with every view the study reads (made once)."""
    from advise_cache.store import DONE, open_store
    from advise_cache.synthetic import generate_synthetic
    from pipelines.common import extract_cpu

    videos = work / "videos"
    out = work / "shifted.zarr"
    if (out / "zarr.json").is_file() and (open_store(out).ifm().status() == DONE).all():
        return out
    generate_synthetic(
        videos,
        "shifted",
        0,
        train_per_class=sizes["train_per_class"],
        test_per_class=sizes["test_per_class"],
        min_frames=FRAMES[0],
        max_frames=FRAMES[1],
    )
    say(f"extracting {out} with 4 augmented views and 3 crops (once)")
    t0 = time.perf_counter()
    extract_cpu(videos, out, "synthetic-shifted", model="test-vit", pretrained="none", aug_views=max(VIEWS), crops=3)
    seconds = time.perf_counter() - t0
    (work / "extract.json").write_text(json.dumps({"seconds": seconds}))
    say(f"extracted in {seconds:.0f} s")
    return out


def configs(store: Path, folder: Path, views: int, seed: int, args):
    """PRP and fine-tune configs of one run: the project's defaults, a small TMM, test-vit tokens."""
    from advise_cache.configs import TMMConfig, TrainConfig

    base = TrainConfig(
        cache=store,
        out=folder,
        device=args.device,
        seed=seed,
        progress=False,
        loader_threads=2,
        tmm=TMMConfig(hidden=64, out_dim=128, head_hidden=128),
        batch_size=16,
        lr=2e-3,
        views_train="centre" if views == 0 else str(views),
        preload="ram",
    )
    prp = replace(base, task="prp", epochs=args.epochs)
    return prp, replace(base, task="classify", epochs=args.ft_epochs, batch_size=8)


def run_one(store: Path, folder: Path, views: int, seed: int, args) -> dict:
    """The protocol for N views and one seed, then the 10 x 3 evaluation of its fine-tune."""
    from advise_cache.evaluate import evaluate
    from advise_cache.protocol import run_protocol

    path = folder / "study.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    prp, ft = configs(store, folder, views, seed, args)
    got = run_protocol(folder, prp, ft, views=4, matched=False)
    ten = evaluate(store, folder / "ft", views=10, crops=3, device=args.device)
    row = {
        "views": views,
        "seed": seed,
        "acc_ft_4x1": got.acc_ft,
        "acc_ft_10x3": ten["top1"],
        "acc_scratch_4x1": got.acc_scratch,
        "seconds": time.perf_counter() - t0,
    }
    path.write_text(json.dumps(row, indent=1))
    say(
        f"views {views} seed {seed}: Acc_ft {100 * row['acc_ft_4x1']:.1f}% (4x1), {100 * row['acc_ft_10x3']:.1f}% "
        f"(10x3); scratch {100 * row['acc_scratch_4x1']:.1f}% ({row['seconds']:.0f} s)"
    )
    return row


def view_bytes(store: Path) -> int:
    """Token shard bytes of one view: the store's over its views (every view the same rows)."""
    from advise_cache.store import open_store

    a = open_store(store).ifm()
    return a.stored_bytes() // len(a.views)


def render(facts, args, argv, rows: list[dict], per_view: int, store: Path) -> Section:
    from advise_cache.store import open_store

    table_rows = []
    for n in VIEWS:
        mine = [r for r in rows if r["views"] == n]

        def stat(key: str, mine=mine) -> str:
            return pm(*mean_sd([r[key] for r in mine]))

        table_rows.append(
            [
                str(n),
                f"{(1 + n) * per_view / 1e6:.2f} ({1 + n}x)",
                stat("acc_ft_4x1"),
                stat("acc_ft_10x3"),
                stat("acc_scratch_4x1"),
                ", ".join(f"{100 * r['acc_ft_4x1']:.1f}" for r in mine),
            ]
        )
    videos = open_store(store).videos
    n_train, n_test = int((videos.split == "train").sum()), int((videos.split == "test").sum())
    lines = [
        f"test-vit (random init) tokens of {n_train} train and {n_test} test videos of the shifted family "
        f"({FRAMES[0]}-{FRAMES[1]} frames); the protocol per run (PRP {args.epochs} epochs, fine-tune "
        f"{args.ft_epochs} epochs from it; the project's defaults, a TMM of hidden 64), seeds "
        f"{', '.join(map(str, range(args.seeds)))}: mean ± sd over the seeds. N views: each training clip "
        "draws one of the centre crop and N augmented views (`--views-train N`). Bytes: the token shard "
        "bytes the training views take (the 3 evaluation crops add 3x the first column's per view). "
        f"Time: {_minutes(rows, store)}.",
        "",
        table(
            [
                "augmented views",
                "bytes, MB (x no views)",
                "Acc_ft 4 x 1 (%)",
                "Acc_ft 10 x 3 (%)",
                "Acc_scratch 4 x 1 (%)",
                "Acc_ft 4 x 1 per seed",
            ],
            table_rows,
        ),
    ]
    title = "Augmented views: what they buy (synthetic shifted family)"
    return section("study_views", title, __name__, argv, facts, lines)


def _minutes(rows: list[dict], store: Path) -> str:
    """The study's wall time: the extraction (once) and every run with its evaluations."""
    record = store.parent / "extract.json"
    extract = json.loads(record.read_text())["seconds"] if record.exists() else 0.0
    runs = sum(r["seconds"] for r in rows)
    return f"{(extract + runs) / 60:.1f} min ({extract:.0f} s extracting, {runs:.0f} s training and evaluating)"


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--work", type=Path, default=REPO / "data" / "study_views", help="videos, store and runs")
    args = parse_sized(p, argv, SIZES, "tiny sizes, one seed")
    work = args.work / ("quick" if args.quick else "cpu")
    store = make_store(work, {k: getattr(args, k) for k in SIZES["cpu"]})
    rows = [run_one(store, work / f"views{n}-seed{s}", n, s, args) for s in range(args.seeds) for n in VIEWS]
    facts = describe_machine(args.device, packages=("zarr",))
    return publish(render(facts, args, argv, rows, view_bytes(store), store), args)


if __name__ == "__main__":
    raise SystemExit(main())
