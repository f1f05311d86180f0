"""The whole AdViSe story on the built-in synthetic dataset, end to end, on the CPU.

    make demo                      # or: python pipelines/demo.py --out demo

For each family of the synthetic dataset — `appearance` (classes differ in how a frame
looks, like UCF101) and `temporal` (every frame looks alike, only the order differs, like
Diving48) — it generates the videos, extracts `test-vit` tokens into a store, pretrains the
TMM with PRP, fine-tunes it from the PRP checkpoint and from scratch, fine-tunes the
average-pooling baseline, evaluates each on the test split and prints one table:
Acc_ft, ΔAcc (Acc_ft minus the scratch fine-tune) and average pooling. Finished steps are
skipped when it is run again; the same seed gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from advise_cache.evaluate import evaluate
from advise_cache.extract import ExtractConfig, extract_videos
from advise_cache.models import TMMConfig
from advise_cache.sampling import SamplerConfig
from advise_cache.train import TrainConfig, train

# Classification clips: the temporal family is judged as Diving48 is, one frame from each
# of 8 segments spanning the video; the appearance family with a clip at stride 2.
CLIP_MODES = {"appearance": "stride", "temporal": "segment"}


def run_family(family: str, args) -> dict:
    base = args.out / family
    store = args.out / f"{family}.zarr"
    summary = extract_videos(ExtractConfig(
        dataset=f"synthetic-{family}", root=args.out / "data" / family, out=store, model=args.model,
        pretrained=args.pretrained, device=args.device, seed=args.seed, workers=args.workers,
    ))
    if summary.failed:
        raise SystemExit(f"{family}: {len(summary.failed)} videos failed to extract")
    tmm = TMMConfig(hidden=args.hidden, out_dim=args.out_dim)
    common = dict(cache=store, device=args.device, seed=args.seed, resume=True, batch_size=args.batch_size,
                  tmm=tmm, clip_mode=CLIP_MODES[family], lr=args.lr, warmup_epochs=2)
    runs = {
        "prp": TrainConfig(out=base / "prp", task="prp", epochs=args.prp_epochs,
                           sampler=SamplerConfig(clips_per_video=4), **common),
        "ft_prp": TrainConfig(out=base / "ft_prp", task="classify", epochs=args.ft_epochs,
                              init=base / "prp", **common),
        "ft_scratch": TrainConfig(out=base / "ft_scratch", task="classify", epochs=args.ft_epochs, **common),
        "avgpool": TrainConfig(out=base / "avgpool", task="classify", epochs=args.ft_epochs,
                               **{**common, "tmm": replace(tmm, tmm="none")}),
    }
    accs = {}
    for name, cfg in runs.items():
        print(f"[{family}] {name}", flush=True)
        train(cfg)
        if name != "prp":
            accs[name] = evaluate(store, cfg.out, views=args.views, device=args.device,
                                  confusion_png=cfg.out / "confusion-test.png")["top1"]
    return accs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo"))
    p.add_argument("--model", default="test-vit")
    p.add_argument("--pretrained", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--prp-epochs", type=int, default=15)
    p.add_argument("--ft-epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--out-dim", type=int, default=512)
    p.add_argument("--views", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    results = {family: run_family(family, args) for family in ("appearance", "temporal")}
    rows = ["| task | Acc_ft (PRP → fine-tune) | ΔAcc (vs scratch) | average pooling |",
            "| --- | --- | --- | --- |"]
    for family, a in results.items():
        rows.append(f"| synthetic-{family} | {100 * a['ft_prp']:.1f} | {100 * (a['ft_prp'] - a['ft_scratch']):+.1f} "
                    f"| {100 * a['avgpool']:.1f} |")
    table = "\n".join(rows)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(table + "\n")
    print()
    print(table)
    print()
    t, a = results["temporal"], results["appearance"]
    print(f"Top-1 on the test split ({args.views} views; chance 25%). Temporal family: every frame looks "
          f"alike, so average pooling over time gets {100 * t['avgpool']:.0f}% while the TMM gets "
          f"{100 * t['ft_prp']:.0f}% — the paper's Table 5 effect (Diving48: 74% vs 23%). Appearance family: "
          f"pooling gets {100 * a['avgpool']:.0f}% vs {100 * a['ft_prp']:.0f}%; with {args.model} tokens "
          f"{'(random weights) ' if args.model == 'test-vit' else ''}a spatial average keeps "
          f"{'little' if a['avgpool'] < a['ft_prp'] - 0.15 else 'most'} of a small object's look. "
          f"ΔAcc is PRP pretraining's gain over a random TMM on this small dataset.")
    print(f"({time.perf_counter() - t0:.0f} s; runs and stores in {args.out}/)")


if __name__ == "__main__":
    sys.exit(main())
