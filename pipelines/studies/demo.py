"""The whole AdViSe story on the built-in synthetic dataset, end to end, on the CPU.

    make demo                      # or: python -m pipelines.studies.demo --out demo --seed 0 --seeds 3

Three synthetic families (advise_cache/synthetic.py): `appearance` (classes differ in how a
frame looks, a large coloured shape, like UCF101), `temporal` (every frame looks alike, only
the order differs, like Diving48) and `motion` (a small disc moving at one of four speeds,
1:2:4:8 like PRP's playback rates). For each data draw (`--data-seeds`: the videos generated
anew) and family it generates the videos and extracts `test-vit` tokens into a store once; then,
for each of two TMMs (the project's default, and the released code's: temporal kernel 1, 4 blocks,
a BN-MLP head; both at a quarter of their real widths) and each training seed, it runs the
paper's protocol (advise_cache/protocol.py) and measures

- a linear probe (logistic regression on the frozen TMM's pooled features, fitted on the
  train split, scored on the test split) from the PRP-pretrained TMM and from a random TMM
  of the same seed: what pretraining taught the TMM, with nothing else trained;
- Acc_ft (fine-tuning from the PRP checkpoint), ΔAcc (minus the same fine-tuning from a random
  TMM) and ΔAcc against a fine-tune from a random TMM as long as PRP and the fine-tune together
  (compute-matched), and the average-pooling baseline (`tmm none`, the same for both TMMs).

The two TMMs share the demo's recipe (learning rate, epochs, clips): the columns differ in the
model only. It prints a table per data draw with the mean and the spread (sample standard
deviation) over training seeds. Finished runs are skipped when it is run again; the same seeds
give the same numbers. These families are a sanity check of the implementation, not evidence
about real videos.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

if not __package__:  # run as `python pipelines/NAME.py`: import the checkout's packages, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from pipelines.common import mean_sd, pm, quiet, synthetic_store
from pipelines.sections import body_markdown, table

FAMILIES = ("appearance", "temporal", "motion")
# Classification clips: the temporal family is judged as Diving48 is, one frame from each
# of 8 segments spanning the video; the others with a clip at stride 2 (motion needs
# neighbouring frames to see a speed).
CLIP_MODES = {"appearance": "stride", "temporal": "segment", "motion": "stride"}
PROBE_VIEWS = (4, 2)  # clips per video whose features are averaged: train, test
VARIANTS = {"default": "ours", "released": "released"}  # the TMM of each row: a preset's
COLUMNS = ("ft_prp", "delta", "delta_matched", "probe_prp", "probe_random", "avgpool")
HEADER = (  # of COLUMNS in the table
    "Acc_ft (PRP → fine-tune)",
    "ΔAcc (vs scratch)",
    "ΔAcc (vs matched scratch)",
    "linear probe, PRP TMM",
    "linear probe, random TMM",
    "average pooling",
)


# -- the linear probe ------------------------------------------------------------------------
def tmm_features(model, store, split: str, views: int, mode: str, frames: int = 8, stride: int = 2):
    """Per video of `split`: the frozen model's pooled features, averaged over `views` clips,
    and the labels."""
    import torch

    from advise_cache.evaluate import video_outputs
    from advise_cache.loader import TokenSource
    from advise_cache.store import open_store

    st = open_store(store)
    source = TokenSource(st, None)
    videos, _ = source.videos(split)
    x = video_outputs(model.eval(), source, videos, views, frames, stride, mode, torch.device("cpu"), what="features")
    return x, st.videos.label[videos].astype(np.int64)


def fit_probe(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, l2: float = 1e-2
) -> float:
    """Test accuracy of an L2-regularised multinomial logistic regression on standardised
    features (full-batch L-BFGS: deterministic, well under a second here)."""
    import torch
    import torch.nn.functional as F

    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xtr = torch.tensor((x_train - mean) / std, dtype=torch.float64)
    xte = torch.tensor((x_test - mean) / std, dtype=torch.float64)
    ytr = torch.tensor(y_train, dtype=torch.long)
    classes = int(max(y_train.max(), y_test.max())) + 1
    weight = torch.zeros(xtr.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ weight + bias, ytr) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ weight + bias).argmax(1).numpy() == y_test).mean())


def probe_accuracy(model, store, mode: str) -> float:
    """Linear-probe test accuracy of a frozen model's pooled TMM features on a store."""
    xtr, ytr = tmm_features(model, store, "train", PROBE_VIEWS[0], mode)
    xte, yte = tmm_features(model, store, "test", PROBE_VIEWS[1], mode)
    return fit_probe(xtr, ytr, xte, yte)


def random_model(tmm, in_dim: int, seed: int):
    """The TMM a run of this seed starts from (train() seeds torch the same way)."""
    import torch

    from advise_cache.models import create_model

    torch.manual_seed(seed)
    return create_model(replace(tmm, in_dim=in_dim), 4)


# -- one family --------------------------------------------------------------------------------
def variant_tmm(variant: str, divisor: int):
    """The row's TMM: its preset's (default: ours; released: the released code's), every width
    divided by `divisor` (4: hidden 64, output 256 / 128, head 256 for test-vit's 64-dim tokens)."""
    from advise_cache.configs import PRESETS

    base = PRESETS[VARIANTS[variant]].tmm
    return replace(
        base, hidden=base.hidden // divisor, out_dim=base.out_dim // divisor, head_hidden=base.head_hidden // divisor
    )


def build_store(family: str, data_seed: int, args) -> Path:
    import torch

    torch.set_num_threads(1)  # one process per core, as in run_task
    where = args.out / f"data{data_seed}"
    out = where / f"{family}.zarr"
    fields = dict(model=args.model, pretrained=args.pretrained, seed=0, data_seed=data_seed)
    return synthetic_store(where / "videos" / family, out, family, **fields)


def run_task(family: str, data_seed: int, variant: str, seed: int, args) -> dict:
    """One row's seed: the protocol (PRP, fine-tunes, evaluations) and the two probes; or, for
    variant "avgpool", the average-pooling baseline. Skipped when its result.json exists."""
    import torch

    torch.set_num_threads(1)  # one process per core: much faster than two threads fighting
    from advise_cache.configs import preset_config
    from advise_cache.protocol import run_protocol
    from advise_cache.store import open_store
    from advise_cache.trained import load_model

    base = args.out / f"data{data_seed}" / family / variant / f"seed{seed}"
    if (done := base / "result.json").exists():
        return json.loads(done.read_text())
    store = args.out / f"data{data_seed}" / f"{family}.zarr"
    mode = CLIP_MODES[family]
    tmm = (
        variant_tmm("default", args.width_divisor) if variant == "avgpool" else variant_tmm(variant, args.width_divisor)
    )
    tmm = replace(tmm, tmm="none") if variant == "avgpool" else tmm
    common = dict(cache=store, device="cpu", seed=seed, clip_mode=mode, lr=args.lr, warmup_epochs=2)
    common.update(preload="ram", loader_threads=1, progress=False)
    prp = preset_config(
        "ours", tmm=asdict(tmm), sampler={"clips_per_video": args.prp_clips}, task="prp", out=base,
        epochs=args.prp_epochs, batch_size=16, **common,
    )  # fmt: skip
    ft = preset_config(
        "ours", tmm=asdict(tmm), task="classify", out=base, epochs=args.ft_epochs, batch_size=8, **common
    )
    got = run_protocol(base, prp, ft, views=args.views)
    if variant == "avgpool":
        result = {"avgpool": got.acc_scratch}
    else:
        in_dim = open_store(store).ifm().dim
        pretrained, _, _ = load_model(base / "prp", open_store(store), torch.device("cpu"))
        result = {
            "ft_prp": got.acc_ft,
            "ft_scratch": got.acc_scratch,
            "ft_matched": got.stages["scratch-matched"].top1,
            "delta": got.delta,
            "delta_matched": got.delta_matched,
            "probe_prp": probe_accuracy(pretrained, store, mode),
            "probe_random": probe_accuracy(random_model(tmm, in_dim, seed), store, mode),
            "prp_train_acc": got.stages["prp"].train_acc,
            "steps": {name: stage.steps for name, stage in got.stages.items()},
        }
    done.write_text(json.dumps(result, indent=2))
    shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in result.items() if k in COLUMNS)
    print(f"[data {data_seed} | {family} | {variant} | seed {seed}] {shown}", flush=True)
    return result


def render(results: dict, seeds: list[int]) -> str:
    """One table per data draw: a row per family and TMM, mean ± sample sd over `seeds`.
    `results[data_seed][family][variant]` is the list of per-seed results ("avgpool" among them)."""

    def cell(per_seed: list[dict], key: str) -> str:  # percentages averaged (scale 1), as README's table was
        m, sd = mean_sd([100 * r[key] for r in per_seed])
        return pm(m, sd if len(seeds) > 1 else None, signed=key.startswith("delta"), scale=1)

    out = []
    for data_seed, families in results.items():
        rows = [
            [
                f"synthetic-{family}",
                variant,
                *(cell(runs[variant] if k != "avgpool" else runs["avgpool"], k) for k in COLUMNS),
            ]
            for family, runs in families.items()
            for variant in VARIANTS
            if variant in runs
        ]
        out += [
            f"Data draw {data_seed} (videos generated with seed {data_seed}):",
            "",
            table(["family", "TMM", *HEADER], rows, left=2),
            "",
        ]
    return body_markdown(out)


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo"))
    p.add_argument("--model", default="test-vit")
    p.add_argument("--pretrained", default="auto")
    p.add_argument("--device", default="cpu", help="the demo runs on the CPU (cpu or auto)")
    p.add_argument("--seed", type=int, default=0, help="the first training seed")
    p.add_argument("--seeds", type=int, default=3, help="how many training seeds: the tables show mean and spread")
    p.add_argument("--data-seeds", default="0,1", help="data draws: the videos generated with each seed, a table each")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--variants", default=",".join(VARIANTS), help="the TMMs: default, released")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at once, a process each")
    p.add_argument("--prp-epochs", type=int, default=20)
    p.add_argument("--prp-clips", type=int, default=8, help="PRP clips per video per epoch")
    p.add_argument("--ft-epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=2e-3, help="at batch 32, scaled linearly (both TMMs)")
    p.add_argument("--width-divisor", type=int, default=4, help="every TMM width divided by this")
    p.add_argument("--views", type=int, default=2)
    args = p.parse_args(argv)
    args.seeds = list(range(args.seed, args.seed + args.seeds))
    args.data_seeds = [int(d) for d in args.data_seeds.split(",") if d.strip()]
    args.families = [f for f in args.families.split(",") if f]
    args.variants = [v for v in args.variants.split(",") if v]
    if bad := [f for f in args.families if f not in FAMILIES] + [v for v in args.variants if v not in VARIANTS]:
        raise SystemExit(f"unknown families or variants {bad} (choose from {', '.join(FAMILIES + tuple(VARIANTS))})")
    if args.seed < 0 or not args.seeds or args.jobs < 1 or not args.data_seeds or min(args.data_seeds) < 0:
        raise SystemExit("need --seed >= 0, --seeds >= 1, --jobs >= 1 and data seeds >= 0")
    if args.device not in ("cpu", "auto"):
        raise SystemExit("the demo runs on the CPU: --device cpu")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet()
    t0 = time.perf_counter()
    print(f"videos and stores: {', '.join(args.families)} (data draws {args.data_seeds})", flush=True)
    stores = [(f, d) for d in args.data_seeds for f in args.families]
    variants = [*args.variants, "avgpool"]
    tasks = [(f, d, v, s) for d in args.data_seeds for f in args.families for v in variants for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        list(pool.map(build_store, *zip(*stores), [args] * len(stores)))
        outs = list(pool.map(run_task, *zip(*tasks), [args] * len(tasks)))
    results: dict = {}
    for (family, data_seed, variant, _), r in zip(tasks, outs):
        results.setdefault(data_seed, {}).setdefault(family, {}).setdefault(variant, []).append(r)
    text = render(results, args.seeds)
    (args.out / "results.json").write_text(json.dumps({"seeds": args.seeds, "results": results}, indent=2))
    (args.out / "results.md").write_text(text + "\n")
    print(f"\n{text}\n")
    print(
        f"Top-1 on the test split in %, mean ± sample standard deviation over training seeds {args.seeds} "
        "(chance 25). ΔAcc = Acc_ft − the same fine-tuning from a random TMM; matched: from a random TMM "
        "for PRP's and the fine-tune's steps together. Linear probes: logistic regression on the frozen "
        "TMM's pooled features. A sanity check of the implementation on synthetic videos, not evidence "
        "about real ones."
    )
    print(f"({time.perf_counter() - t0:.0f} s; runs and stores in {args.out}/)")


if __name__ == "__main__":
    sys.exit(main())
