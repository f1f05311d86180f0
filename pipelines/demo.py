"""The whole AdViSe story on the built-in synthetic dataset, end to end, on the CPU.

    make demo                      # or: python pipelines/demo.py --out demo --seed 0 --seeds 3

Three synthetic families (advise_cache/synthetic.py): `appearance` (classes differ in how a
frame looks, a large coloured shape, like UCF101), `temporal` (every frame looks alike, only
the order differs, like Diving48) and `motion` (a small disc moving at one of four speeds,
1:2:4:8 like PRP's playback rates). For each family it generates the videos and extracts `test-vit` tokens into
a store once; then, for each seed, it pretrains the TMM with PRP and measures

- a linear probe (logistic regression on the frozen TMM's pooled features, fitted on the
  train split, scored on the test split) from the PRP-pretrained TMM and from a random TMM
  of the same seed: what pretraining taught the TMM, with nothing else trained;
- Acc_ft (fine-tuning from the PRP checkpoint) and ΔAcc (minus the same fine-tuning from a
  random TMM), and the average-pooling baseline (`tmm none`), each with a short schedule
  on the family's train split.

It prints one table with the mean and the spread (sample standard deviation) over seeds.
Finished runs are skipped when it is run again; the same seeds give the same numbers.
These families are a sanity check of the implementation, not evidence about real videos.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import mean_sd, pm, quiet, synthetic_store, table

FAMILIES = ("appearance", "temporal", "motion")
# Classification clips: the temporal family is judged as Diving48 is, one frame from each
# of 8 segments spanning the video; the others with a clip at stride 2 (motion needs
# neighbouring frames to see a speed).
CLIP_MODES = {"appearance": "stride", "temporal": "segment", "motion": "stride"}
PROBE_VIEWS = (4, 2)  # clips per video whose features are averaged: train, test
COLUMNS = ("ft_prp", "delta", "probe_prp", "probe_random", "avgpool")
HEADER = (  # of COLUMNS in the table
    "Acc_ft (PRP → fine-tune)",
    "ΔAcc (vs scratch)",
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
def build_store(family: str, args) -> Path:
    import torch

    torch.set_num_threads(1)  # one process per core, as in run_seed
    videos, out = args.out / "data" / family, args.out / f"{family}.zarr"
    return synthetic_store(videos, out, family, model=args.model, pretrained=args.pretrained, seed=0)


def run_seed(family: str, seed: int, args) -> dict:
    """PRP, the two probes, the three fine-tunes of one family and seed (skipped when done)."""
    import torch

    torch.set_num_threads(1)  # one process per core: much faster than two threads fighting
    from advise_cache.checkpoint import load_model
    from advise_cache.evaluate import evaluate
    from advise_cache.models import TMMConfig
    from advise_cache.sampling import SamplerConfig
    from advise_cache.store import open_store
    from advise_cache.train import TrainConfig, train

    base = args.out / family / f"seed{seed}"
    done = base / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    store = args.out / f"{family}.zarr"
    mode = CLIP_MODES[family]
    tmm = TMMConfig(hidden=args.hidden, out_dim=args.out_dim, head_hidden=args.out_dim)
    common = dict(
        cache=store,
        device="cpu",
        seed=seed,
        resume=True,
        tmm=tmm,
        clip_mode=mode,
        lr=args.lr,
        warmup_epochs=2,
        preload="ram",
        loader_threads=1,
        progress=False,
    )
    prp = TrainConfig(
        out=base / "prp",
        task="prp",
        epochs=args.prp_epochs,
        batch_size=16,
        sampler=SamplerConfig(clips_per_video=args.prp_clips),
        **common,
    )
    train(prp)
    in_dim = open_store(store).ifm().dim
    pretrained, _, _ = load_model(prp.out, open_store(store), torch.device("cpu"))
    result = {
        "probe_prp": probe_accuracy(pretrained, store, mode),
        "probe_random": probe_accuracy(random_model(tmm, in_dim, seed), store, mode),
        "prp_train_acc": json.loads((prp.out / "checkpoint.json").read_text())["metrics"]["acc"],
    }
    fts = {"ft_prp": dict(init=prp.out), "ft_scratch": {}, "avgpool": dict(tmm=replace(tmm, tmm="none"))}
    for name, extra in fts.items():
        cfg = TrainConfig(out=base / name, task="classify", epochs=args.ft_epochs, batch_size=8, **{**common, **extra})
        train(cfg)
        result[name] = evaluate(store, cfg.out, views=args.views, device="cpu")["top1"]
    result["delta"] = result["ft_prp"] - result["ft_scratch"]
    done.write_text(json.dumps(result, indent=2))
    print(f"[{family} seed {seed}] " + ", ".join(f"{k} {100 * result[k]:.1f}" for k in COLUMNS), flush=True)
    return result


def render(results: dict, seeds: list[int]) -> str:
    def cell(per_seed: list[dict], key: str) -> str:  # percentages averaged (scale 1), as README's table was
        m, sd = mean_sd([100 * r[key] for r in per_seed])
        return pm(m, sd if len(seeds) > 1 else None, signed=key == "delta", scale=1)

    rows = [[f"synthetic-{family}", *(cell(per_seed, k) for k in COLUMNS)] for family, per_seed in results.items()]
    return "\n".join(table(["family", *HEADER], rows))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo"))
    p.add_argument("--model", default="test-vit")
    p.add_argument("--pretrained", default="auto")
    p.add_argument("--device", default="cpu", help="the demo runs on the CPU (cpu or auto)")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="how many seeds (seed, seed + 1, ...): the table shows mean and spread over them",
    )
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="(family, seed) runs at once, one process and one thread each",
    )
    p.add_argument("--prp-epochs", type=int, default=20)
    p.add_argument("--prp-clips", type=int, default=8, help="PRP clips per video per epoch")
    p.add_argument("--ft-epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--out-dim", type=int, default=256)
    p.add_argument("--views", type=int, default=2)
    args = p.parse_args(argv)
    seeds = list(range(args.seed, args.seed + args.seeds))
    families = [f for f in args.families.split(",") if f]
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise SystemExit(f"unknown families {bad} (choose from {', '.join(FAMILIES)})")
    if args.seed < 0 or args.seeds < 1 or args.jobs < 1:
        raise SystemExit(f"need --seed >= 0, --seeds >= 1 and --jobs >= 1, got {args.seed}, {args.seeds}, {args.jobs}")
    if args.device not in ("cpu", "auto"):
        raise SystemExit("the demo runs on the CPU: --device cpu")
    quiet()
    t0 = time.perf_counter()
    print(f"videos and stores: {', '.join(families)}", flush=True)
    tasks = [(f, s) for f in families for s in seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        list(pool.map(build_store, families, [args] * len(families)))
        outs = list(pool.map(run_seed, *zip(*tasks), [args] * len(tasks)))
    results = {f: [r for (g, _), r in zip(tasks, outs) if g == f] for f in families}
    text = render(results, seeds)
    (args.out / "results.json").write_text(json.dumps({"seeds": seeds, "results": results}, indent=2))
    (args.out / "results.md").write_text(text + "\n")
    print()
    print(text)
    print()
    print(
        f"Top-1 on the test split in %, mean ± sample standard deviation over seeds {seeds} (chance 25). "
        "ΔAcc = Acc_ft − the same fine-tuning from a random TMM. Linear probes: logistic regression "
        "on the frozen TMM's pooled features. A sanity check of the implementation on synthetic "
        "videos, not evidence about real ones."
    )
    print(f"({time.perf_counter() - t0:.0f} s; runs and stores in {args.out}/)")


if __name__ == "__main__":
    sys.exit(main())
