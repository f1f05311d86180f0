"""The paper's ablations (Figures 3-6, Tables 4-5), every one from ONE store per dataset.

    .venv/bin/python pipelines/ablation.py spatial-res --out runs/ablations   # make ablation-spatial-res
    .venv/bin/python pipelines/ablation.py tmm-depth --cache ucf101.zarr,diving48.zarr \\
        --epochs 200 --ft-epochs 50 --jobs 2
    .venv/bin/python pipelines/ablation.py ifm --cache ucf101.zarr    # each IFM in it, and pairs

Ablations and their settings (the paper's, on 8 x 14 x 14 x 768 ViT-B/16 tokens):

    spatial-res   SFU spatial pool 14, 9, 5, 3, 1                      (Figure 3)
    channel-dim   SFU channel pool 768, 192, 48, 12, 3                 (Figure 4)
    tmm-depth     TMM blocks 1, 2, 4, 6, 8                             (Figure 5)
    tmm-width     TMM hidden width 64, 256, 512, 1024, 2048            (Figure 6)
    temporal      TMM vs average pooling (`tmm none`), per IFM         (Table 5)
    ifm           each IFM of the store, and every pair concatenated   (Table 4)

For each store and each setting it runs, through the library (`advise_cache.train.train`,
`advise_cache.evaluate.evaluate`, `advise_cache.models.model_stats`), in a folder of its own
OUT/<ablation>/<dataset>/<setting>/:

    prp/         PRP pretraining of the TMM on the train split
    ft/          fine-tuning from prp/; its multi-view top-1 on the test split is Acc_ft
    scratch/     the same fine-tuning from a random TMM: ΔAcc = Acc_ft - Acc_scratch
    result.json  params and FLOPs (`model_stats`, 4-way PRP head, one clip) and accuracies

A setting with a result.json is finished and skipped; a killed one continues: each training
is started with `resume=True`, so it goes on from its last checkpoint, and a finished stage
(done.json) or evaluation (eval.json) is not repeated. OUT/<ablation>/recipe.json holds the
recipe (epochs, batches, base TMM, ...); rerunning into it with another recipe is refused.
At the end OUT/<ablation>/results.csv, results.md (printed) and results.png (Acc_ft and ΔAcc
against the setting, a line per dataset) hold every finished setting of this invocation.

Settings that do not fit a store are skipped with a note and replaced by their analogues:
- spatial-res on an h x w grid (G = min(h, w)): the paper's 14 is ViT-B/16's full grid, so
  the first point is the store's full grid (no pooling), then the paper's pools 9, 5, 3, 1
  that are smaller than G, filled up to five points with the largest unused integers
  below G. A 4 x 4 grid gives 4, 3, 2, 1; 16 x 16 gives 16, 9, 5, 3, 1; 14 x 14 the paper's.
- channel-dim on D-dim tokens: the paper's points are D/4^k for k = 0..4 with D = 768, so a
  store of another dim gets round(D/4^k) (at least 1, duplicates dropped). 64 gives 64,
  16, 4, 1; 1024 gives 1024, 256, 64, 16, 4.
- tmm-depth and tmm-width fit every store. ifm pairs need the same grid and frame stride.
- temporal with `tmm none` has nothing to pretrain (no TMM weights transfer), so only the
  fine-tune from scratch runs: its accuracy is Acc_ft and ΔAcc is left empty.

Without --cache the three synthetic stores (datasets synthetic-appearance, synthetic-temporal
and synthetic-motion, the demo's sizes, `test-vit` tokens: 4 x 4 x 64) are built once under
--data and reused by every ablation; the ifm ablation adds a second IFM to them,
`test-vit-seed1` (test-vit with another random init: a stand-in, since no pretrained model
can be downloaded here). Synthetic defaults then apply (see --help): the demo's PRP recipe
(20 epochs of 8 clips per video at lr 2e-3, long enough for PRP to learn on these stores), a
narrower base TMM of hidden 64 and out 256 for the 64-dim tokens, and three seeds, so that
differences can be told from the seed spread. Each setting of each seed then takes 40-80 s
on one core of a shared 2-core CPU: `--settings 4,1` (the two ends of spatial-res) runs 18
of them. With --jobs N, N settings run at once, each in a subprocess of this script
(`--run-setting FOLDER`, output in FOLDER/log.txt) with cores/N torch threads.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import fcntl
import itertools
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER = {
    "spatial-res": (14, 9, 5, 3, 1),
    "channel-dim": (768, 192, 48, 12, 3),
    "tmm-depth": (1, 2, 4, 6, 8),
    "tmm-width": (64, 256, 512, 1024, 2048),
}
SOURCE = {"spatial-res": "Figure 3", "channel-dim": "Figure 4", "tmm-depth": "Figure 5",
          "tmm-width": "Figure 6", "temporal": "Table 5", "ifm": "Table 4"}
AXIS = {"spatial-res": "spatial pool S (S x S grid into the TMM)",
        "channel-dim": "channel pool C (channels into the TMM)",
        "tmm-depth": "TMM blocks", "tmm-width": "TMM hidden width",
        "temporal": "temporal module", "ifm": "image model(s)"}
LOG_X = {"channel-dim", "tmm-width"}
DESCENDING = {"spatial-res", "channel-dim"}
ABLATIONS = tuple(SOURCE)
SYNTHETIC = ("synthetic-appearance", "synthetic-temporal", "synthetic-motion")
# Videos per class (train, test) of the synthetic stores: the demo's sizes (pipelines/demo.py).
SYNTHETIC_SIZES = {"synthetic-appearance": (12, 6), "synthetic-temporal": (12, 6),
                   "synthetic-motion": (12, 12)}
SECOND_IFM = ("test-vit-seed1", 1)  # key and seed of the stand-in second IFM
# Recipe defaults: quick ones for the synthetic stores (48 train videos of 4 x 4 x 64 tokens
# each), the trainer's own otherwise. On 2 CPU cores a step of the standard TMM (hidden 256,
# out 1024) costs about 3x one of hidden 64, out 256 on such tiny grids, so the quick base
# TMM is that narrower one (tmm-width and tmm-depth still vary it), and spatial-res on both
# stores takes minutes.
QUICK = {"epochs": 20, "ft_epochs": 20, "batch_size": 16, "ft_batch_size": 8, "hidden": 64,
         "out_dim": 256, "preload": True, "prp_clips": 8, "lr": 2e-3, "seeds": 3}
FULL = {"epochs": 20, "ft_epochs": 20, "batch_size": 32, "ft_batch_size": 32, "hidden": 256,
        "out_dim": 1024, "preload": False, "prp_clips": 4, "lr": 1e-3, "seeds": 1}
CSV_COLUMNS = ("ablation", "dataset", "setting", "seed", "x", "store", "ifm", "tmm", "blocks", "hidden",
               "out_dim", "spatial_pool", "channel_pool", "clip", "params", "flops", "prp_acc",
               "prp_steps", "acc_ft", "top5_ft", "acc_scratch", "delta_acc", "ft_steps", "test_videos",
               "seconds", "note")


# -- what to run -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreInfo:
    path: str
    dataset: str  # the line's label in the plot
    keys: tuple[str, ...]  # IFM keys in the store
    grids: dict  # key -> (h, w)
    dims: dict  # key -> D
    strides: dict  # key -> frame stride at extraction
    frames: int  # frames per clip (the sampler's)

    def check(self, keys: tuple[str, ...]) -> None:
        """Refuse keys the store lacks, or that cannot be concatenated."""
        missing = [k for k in keys if k not in self.keys]
        if missing:
            raise SystemExit(f"{self.path} has no IFM {', '.join(missing)}; "
                             f"it holds {', '.join(self.keys)}")
        if len({self.grids[k] for k in keys}) > 1 or len({self.strides[k] for k in keys}) > 1:
            raise SystemExit(f"{self.path}: {'+'.join(keys)} cannot be concatenated (grids "
                             f"{[self.grids[k] for k in keys]}, frame strides "
                             f"{[self.strides[k] for k in keys]})")


@dataclass(frozen=True)
class Setting:
    ablation: str
    dataset: str
    store: str
    label: str  # the setting as tables show it
    x: float | None  # position on the plot's x axis; None: categorical
    ifm: tuple[str, ...]
    tmm: dict  # TMMConfig fields, in_dim included
    clip: tuple[int, int, int, int]  # (T, h, w, D) for the stats
    note: str = ""
    seed: int = 0
    seeds: int = 1  # how many seeds the ablation runs: one keeps the seed out of the folder

    @property
    def folder(self) -> str:
        where = f"{slug(self.dataset)}/{slug(self.label)}"
        return where if self.seeds == 1 else f"{slug(self.dataset)}/seed{self.seed}/{slug(self.label)}"


@dataclass(frozen=True)
class Recipe:
    """Everything that changes a setting's result, except the setting itself."""

    epochs: int
    ft_epochs: int
    batch_size: int
    ft_batch_size: int
    lr: float
    max_steps: int | None
    views: int
    seeds: tuple[int, ...]
    train_split: str
    test_split: str
    base_tmm: dict = field(default_factory=dict)  # blocks, hidden, out_dim, preset
    prp_clips: int = 4  # PRP clips per video per epoch


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "x"


def spatial_values(grid: int) -> tuple[list[int], list[str]]:
    """The spatial pools for a G x G grid and the notes on what was replaced (module doc)."""
    paper = PAPER["spatial-res"]
    if grid == paper[0]:
        return list(paper), []
    values = [grid] + [s for s in paper[1:] if s < grid]
    for s in range(grid - 1, 0, -1):
        if len(values) >= len(paper):
            break
        if s not in values:
            values.append(s)
    values = sorted(set(values), reverse=True)
    notes = [f"spatial pool {s} does not fit the {grid}x{grid} grid: skipped" for s in paper if s > grid]
    notes.append(f"the full grid is {grid}x{grid}, not {paper[0]}x{paper[0]}: using "
                 f"{', '.join(map(str, values))} (the full grid, the paper's smaller pools, filled "
                 "with the largest unused sizes below the grid)")
    return values, notes


def channel_values(dim: int) -> tuple[list[int], list[str]]:
    """The channel pools for D-dim tokens: the paper's factors 4^-k of D (module doc)."""
    paper = PAPER["channel-dim"]
    if dim == paper[0]:
        return list(paper), []
    values = list(dict.fromkeys(max(1, round(dim / 4**k)) for k in range(len(paper))))
    notes = [f"channel pool {c} does not fit {dim}-dim tokens: skipped" for c in paper if c > dim]
    notes.append(f"tokens are {dim}-dim, not {paper[0]}: using the paper's factors 1, 1/4, 1/16, "
                 f"1/64, 1/256 of {dim}: {', '.join(map(str, values))}")
    return values, notes


def base_tmm(args, in_dim: int):
    from advise_cache.models import TMMConfig

    kw = {"in_dim": in_dim, "blocks": args.blocks, "hidden": args.hidden, "out_dim": args.out_dim}
    return TMMConfig.paper(**kw) if args.preset == "paper" else TMMConfig(**kw)


def default_ifm(info: StoreInfo, wanted: tuple[str, ...], notes: list[str]) -> tuple[str, ...]:
    if wanted:
        info.check(wanted)
        return wanted
    if len(info.keys) > 1:
        notes.append(f"{info.dataset}: the store holds {', '.join(info.keys)}; using {info.keys[0]} "
                     "(choose with --ifm)")
    return info.keys[:1]


def plan(name: str, info: StoreInfo, args) -> tuple[list[Setting], list[str]]:
    """The settings of ablation `name` on one store, and notes on what did not fit."""
    notes: list[str] = []
    settings: list[Setting] = []
    t = info.frames

    def add(label, x, keys, tmm, note=""):
        (h, w), dim = info.grids[keys[0]], sum(info.dims[k] for k in keys)
        for seed in args.seeds:
            settings.append(Setting(name, info.dataset, info.path, str(label), x, tuple(keys),
                                    asdict(tmm), (t, h, w, dim), note, seed, len(args.seeds)))

    if name in PAPER:
        keys = default_ifm(info, args.ifm, notes)
        (h, w), dim = info.grids[keys[0]], sum(info.dims[k] for k in keys)
        base = base_tmm(args, dim)
        if name == "spatial-res":
            values, why = spatial_values(min(h, w))
            for s in values:
                full = s == min(h, w)
                label = s if h == w or not full else f"{h}x{w}"
                add(label, s, keys, replace(base, spatial_pool=None if full else s))
        elif name == "channel-dim":
            values, why = channel_values(dim)
            for c in values:
                add(c, c, keys, replace(base, channel_pool=None if c == dim else c))
        elif name == "tmm-depth":
            why = []
            for b in PAPER[name]:
                add(b, b, keys, replace(base, blocks=b))
        else:
            why = []
            for width in PAPER[name]:
                add(width, width, keys, replace(base, hidden=width))
        notes += [f"{info.dataset}: {n}" for n in why]
    elif name == "temporal":
        for key in args.ifm or info.keys:
            info.check((key,))
            base = base_tmm(args, info.dims[key])
            add(f"{key} TMM", None, (key,), base)
            add(f"{key} avg-pool", None, (key,), replace(base, tmm="none"),
                "average pooling: nothing to pretrain, Acc_ft is the fine-tune from scratch")
    elif name == "ifm":
        keys = args.ifm or info.keys
        for key in keys:
            info.check((key,))
            add(key, None, (key,), base_tmm(args, info.dims[key]))
        for a, b in itertools.combinations(keys, 2):
            if info.grids[a] != info.grids[b] or info.strides[a] != info.strides[b]:
                notes.append(f"{info.dataset}: {a}+{b} skipped: grids {info.grids[a]}, "
                             f"{info.grids[b]} and frame strides {info.strides[a]}, "
                             f"{info.strides[b]} must match to concatenate tokens")
                continue
            add(f"{a}+{b}", None, (a, b), base_tmm(args, info.dims[a] + info.dims[b]))
        if len(info.keys) < 2:
            notes.append(f"{info.dataset}: the store holds one IFM ({', '.join(keys)}); extract "
                         "another into it (advise-cache extract ... --out STORE --model ViT-L-14) "
                         "to compare IFMs and their concatenation")
    else:
        raise SystemExit(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
    return settings, notes


# -- stores ------------------------------------------------------------------------------------
def describe_store(path: Path) -> StoreInfo:
    from advise_cache.sampling import SamplerConfig
    from advise_cache.store import open_store

    store = open_store(path)
    keys = tuple(store.ifm_keys())
    if not keys:
        raise SystemExit(f"{path}: no image model extracted into this store yet")
    arrays = {k: store.ifm(k) for k in keys}
    return StoreInfo(str(path), store.dataset, keys, {k: tuple(a.grid) for k, a in arrays.items()},
                     {k: a.dim for k, a in arrays.items()},
                     {k: int(a.meta["frame_stride"]) for k, a in arrays.items()}, SamplerConfig().frames)


def _complete(path: Path, key: str) -> bool:
    from advise_cache.store import DONE, open_store

    if not (path / "zarr.json").exists():
        return False
    store = open_store(path)
    return key in store.ifm_keys() and bool((store.ifm(key).status() == DONE).all())


def synthetic_stores(data: Path, second_ifm: bool) -> list[Path]:
    """The two synthetic stores under `data` (built on first use; a lock keeps concurrent
    ablations from extracting the same store twice)."""
    from advise_cache.extract import ExtractConfig, extract_videos
    from advise_cache.synthetic import generate_synthetic

    data.mkdir(parents=True, exist_ok=True)
    stores = []
    with open(data / ".ablation-stores.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for dataset in SYNTHETIC:
            out = data / f"{dataset}.zarr"
            jobs = [("test-vit", 0)] + ([SECOND_IFM] if second_ifm else [])
            for key, seed in jobs:
                if _complete(out, key):
                    continue
                print(f"building {out} ({key}): extracting tokens, once (the videos are "
                      f"generated first where {data / dataset} has none)", flush=True)
                train_n, test_n = SYNTHETIC_SIZES[dataset]
                generate_synthetic(data / dataset, dataset.split("-", 1)[1], 0, train_per_class=train_n,
                                   test_per_class=test_n)
                summary = extract_videos(ExtractConfig(
                    dataset=dataset, root=data / dataset, out=out, model="test-vit", pretrained="none",
                    name=key, seed=seed, workers=0, device="cpu", progress=False))
                if summary.failed:
                    raise SystemExit(f"extracting {out} failed for {len(summary.failed)} videos: "
                                     f"{summary.failed[0]}")
            stores.append(out)
    return stores


def label_stores(infos: list[StoreInfo]) -> list[StoreInfo]:
    """Datasets label the lines; two stores of one dataset are told apart by their names."""
    count = {}
    for info in infos:
        count[info.dataset] = count.get(info.dataset, 0) + 1
    return [info if count[info.dataset] == 1
            else replace(info, dataset=f"{info.dataset} ({Path(info.path).stem})") for info in infos]


# -- one setting -------------------------------------------------------------------------------
def run_setting(folder: Path) -> dict:
    """PRP, the two fine-tunes and their evaluations of the setting in `folder`; returns and
    writes its result.json. Every stage resumes or is skipped when already done."""
    from advise_cache.models import TMMConfig, model_stats
    from advise_cache.sampling import SamplerConfig
    from advise_cache.train import CHECKPOINT, TrainConfig

    spec = json.loads((folder / "setting.json").read_text())
    s, r = spec["setting"], spec["recipe"]
    tmm = TMMConfig(**s["tmm"])
    t0 = time.perf_counter()
    stats = model_stats(tmm, len(SamplerConfig().rates), clip=tuple(s["clip"]))
    common = {"cache": Path(s["store"]), "ifm": tuple(s["ifm"]), "split": r["train_split"],
              "lr": r["lr"], "max_steps": r["max_steps"], "tmm": tmm, "preload": "ram" if spec["preload"] else "none",
              "resume": True, "device": spec["device"], "seed": s["seed"], "progress": False,
              "loader_threads": 1 if spec["preload"] else 4}
    tag = f"[{s['dataset']} | {s['ablation']} {s['label']}"
    tag += f" | seed {s['seed']}]" if s.get("seeds", 1) > 1 else "]"
    prp = None
    if tmm.tmm != "none":
        prp = _train_stage(TrainConfig(out=folder / "prp", task="prp", epochs=r["epochs"],
                                       batch_size=r["batch_size"],
                                       sampler=SamplerConfig(clips_per_video=r.get("prp_clips", 4)),
                                       **common), tag)
    fts = {}
    for name, init in (("ft", folder / "prp" / CHECKPOINT), ("scratch", None)):
        if name == "ft" and prp is None:
            continue
        cfg = TrainConfig(out=folder / name, task="classify", epochs=r["ft_epochs"],
                          batch_size=r["ft_batch_size"], init=init, **common)
        fts[name] = {**_train_stage(cfg, tag), **_evaluate_stage(cfg, r, spec["device"])}
    ft = fts.get("ft", fts["scratch"])
    result = {
        "ablation": s["ablation"],
        "dataset": s["dataset"],
        "setting": s["label"],
        "seed": s["seed"],
        "x": s["x"],
        "store": s["store"],
        "ifm": "+".join(s["ifm"]),
        **{k: s["tmm"][k]
           for k in ("tmm", "blocks", "hidden", "out_dim", "spatial_pool", "channel_pool")},
        "clip": "x".join(map(str, s["clip"])),
        "params": stats["params"],
        "flops": stats["flops"],
        "prp_acc": prp["acc"] if prp else None,
        "prp_steps": prp["step"] if prp else 0,
        "acc_ft": ft["top1"],
        "top5_ft": ft["top5"],
        "acc_scratch": fts["scratch"]["top1"],
        "delta_acc": ft["top1"] - fts["scratch"]["top1"] if prp else None,
        "ft_steps": ft["step"],
        "test_videos": ft["videos"],
        "seconds": round(time.perf_counter() - t0, 1),
        "note": s["note"],
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(folder / "result.json", result)
    delta = "" if result["delta_acc"] is None else f", ΔAcc {100 * result['delta_acc']:+.1f}"
    print(f"{tag} done: Acc_ft {100 * result['acc_ft']:.1f}%{delta} ({result['seconds']:.0f} s)",
          flush=True)
    return result


def _train_stage(cfg, tag: str) -> dict:
    """Train (or resume, or skip when done.json says it finished); the final step and metrics."""
    from advise_cache.train import train

    done = cfg.out / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    what = "PRP" if cfg.task == "prp" else ("fine-tune" if cfg.init else "fine-tune from scratch")
    if (cfg.out / "checkpoint.json").exists():
        step = json.loads((cfg.out / "checkpoint.json").read_text())["step"]
        print(f"{tag} {what}: resuming from its checkpoint at step {step}", flush=True)
    train(cfg)  # resume=True: continues from the checkpoint of a killed run, if any
    meta = json.loads((cfg.out / "checkpoint.json").read_text())
    out = {"step": meta["step"], "acc": float(meta["metrics"].get("acc", math.nan)),
           "loss": float(meta["metrics"].get("loss", math.nan))}
    _write_json(done, out)
    print(f"{tag} {what}: {out['step']} steps, train acc {100 * out['acc']:.1f}% "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def _evaluate_stage(cfg, recipe: dict, device: str) -> dict:
    """Multi-view top-1 on the test split (eval.json: done once)."""
    from advise_cache.evaluate import evaluate

    path = cfg.out / "eval.json"
    if not path.exists():
        r = evaluate(cfg.cache, cfg.out, views=recipe["views"], split=recipe["test_split"],
                     device=device)
        _write_json(path, {k: v for k, v in r.items() if k != "confusion"})
    r = json.loads(path.read_text())
    return {"top1": r["top1"], "top5": r["top5"], "videos": r["videos"]}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


# -- running many ------------------------------------------------------------------------------
def run_settings(folders: list[Path], jobs: int) -> list[Path]:
    """Run the settings in `folders`, `jobs` at a time; returns the folders that failed."""
    failed = []
    if jobs <= 1:
        for folder in folders:
            try:
                run_setting(folder)
            except KeyboardInterrupt:
                raise
            except Exception:  # noqa: BLE001 -- one broken setting should not cost the others
                traceback.print_exc()
                failed.append(folder)
        return failed
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, running = list(folders), {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                folder = pending.pop(0)
                with open(folder / "log.txt", "a") as logf:  # the child keeps its own copy
                    proc = subprocess.Popen(
                        [sys.executable, str(Path(__file__).resolve()), "--run-setting", str(folder)],
                        stdout=logf, stderr=subprocess.STDOUT, env=env)
                running[proc] = folder
                print(f"started {folder} (pid {proc.pid}, log {folder / 'log.txt'})", flush=True)
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                folder = running.pop(proc)
                last = (folder / "log.txt").read_text().strip().splitlines()[-1:] or [""]
                if proc.returncode != 0:
                    failed.append(folder)
                    print(f"FAILED {folder} (exit {proc.returncode}); see {folder / 'log.txt'}",
                          flush=True)
                else:
                    print(last[0], flush=True)
    finally:
        for proc in running:  # interrupted: stop only our own children
            proc.terminate()
            proc.wait()
    return failed


# -- report ------------------------------------------------------------------------------------
def pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_COLUMNS})


METRICS = ("prp_acc", "acc_ft", "acc_scratch", "delta_acc")


def _mean_sd(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (dataset, setting): the first seed's row with each metric replaced by its
    mean over seeds, `<metric>_sd` its sample standard deviation and `seeds` how many."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["setting"]), []).append(r)
    out = []
    for group in groups.values():
        row = dict(group[0], seeds=len(group))
        for key in METRICS:
            row[key], row[f"{key}_sd"] = _mean_sd([r.get(key) for r in group])
        out.append(row)
    return out


def pooling_costs(rows: list[dict]) -> dict:
    """spatial-res: per dataset, Acc_ft on the full grid minus Acc_ft pooled to 1, paired by
    seed; (mean, sd, seeds)."""
    costs = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset and r["x"] is not None]
        if not mine:
            continue
        full, smallest = max(r["x"] for r in mine), min(r["x"] for r in mine)
        by_seed = {}
        for r in mine:
            by_seed.setdefault(r.get("seed", 0), {})[r["x"]] = r["acc_ft"]
        diffs = [v[full] - v[smallest] for v in by_seed.values() if full in v and smallest in v]
        if diffs and full != smallest:
            costs[dataset] = (*_mean_sd(diffs), len(diffs), full, smallest)
    return costs


def render(name: str, rows: list[dict], recipe: Recipe, notes: list[str], missing: list[str]) -> str:
    base = recipe.base_tmm
    seeds = recipe.seeds
    several = len(seeds) > 1

    def cell(r, key, signed=False):
        m = r[key]
        if m is None or (isinstance(m, float) and math.isnan(m)):
            return "—"
        text = f"{100 * m:+.1f}" if signed else f"{100 * m:.1f}"
        sd = r.get(f"{key}_sd")
        return f"{text} ± {100 * sd:.1f}" if several and sd is not None else text

    out = [f"## Ablation {name} (the paper's {SOURCE[name]})", "",
           f"PRP {recipe.epochs} epochs (batch {recipe.batch_size}, {recipe.prp_clips} clips per video), "
           f"fine-tuning {recipe.ft_epochs} epochs (batch {recipe.ft_batch_size})"
           + (f", at most {recipe.max_steps} steps each" if recipe.max_steps else "")
           + f", lr {recipe.lr:g} at batch 32, seed{'s' if several else ''} "
           f"{', '.join(map(str, seeds))}; test top-1 over {recipe.views} views"
           + ("; accuracies are mean ± sample standard deviation over the seeds" if several else "")
           + ". "
           f"Base TMM: {base['blocks']} block(s), hidden {base['hidden']}, out {base['out_dim']} "
           f"({base['preset']} preset). Params and FLOPs (multiply-accumulates) are the model's with "
           "the 4-way PRP head, for one clip.", "",
           "| dataset | setting | clip | params (M) | FLOPs (G) | PRP acc | Acc_ft | Acc_scratch | ΔAcc |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in aggregate(rows):
        out.append(f"| {r['dataset']} | {r['setting']} | {r['clip']} | {r['params'] / 1e6:.3g} "
                   f"| {r['flops'] / 1e9:.3g} | {cell(r, 'prp_acc')} | {cell(r, 'acc_ft')} "
                   f"| {cell(r, 'acc_scratch')} | {cell(r, 'delta_acc', signed=True)} |")
    out += ["", ("Accuracies in %. Acc_ft: fine-tuned from the PRP-pretrained TMM; ΔAcc = Acc_ft − "
                 "Acc_scratch (the same fine-tuning from a random TMM).")]
    if name == "spatial-res":
        for dataset, (m, sd, n, full, small) in pooling_costs(rows).items():
            out.append(f"- {dataset}: pooling the grid from {full:g} to {small:g} costs "
                       f"{100 * m:+.1f} ± {100 * sd:.1f} points of Acc_ft (paired by seed, {n} seed(s)).")
    for dataset, n in {r["dataset"]: r.get("test_videos") for r in rows}.items():
        if not n:
            continue
        out.append(f"- {dataset}: {n} test videos, so one video is {100 / n:.1f} points of accuracy.")
    out += [f"- {n}" for n in notes + [f"not finished: {m}" for m in missing]
            + sorted({f"{r['setting']}: {r['note']}" for r in rows if r.get("note")})]
    return "\n".join(out) + "\n"


def plot(path: Path, name: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = aggregate(rows)
    numeric = all(r["x"] is not None for r in rows)
    labels = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        mine.sort(key=lambda r: r["x"] if numeric else labels.index(r["setting"]))
        xs = [r["x"] if numeric else labels.index(r["setting"]) for r in mine]
        for ax, key in zip(axes, ("acc_ft", "delta_acc")):
            ys = [math.nan if r[key] is None else 100 * r[key] for r in mine]
            err = [0.0 if r.get(f"{key}_sd") is None else 100 * r[f"{key}_sd"] for r in mine]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=dataset)
    seeds = max(r["seeds"] for r in rows)
    for ax, what in zip(axes, ("Acc_ft (%)", "ΔAcc = Acc_ft − Acc_scratch (points)")):
        ax.set_ylabel(what)
        ax.set_xlabel(AXIS[name])
        ax.grid(alpha=0.3)
        if numeric:
            if name in LOG_X:
                ax.set_xscale("log", base=2)
            ticks = sorted({r["x"] for r in rows})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
            if name in DESCENDING:
                ax.invert_xaxis()  # as the paper lists them: from no pooling down
        else:
            ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[0].legend()
    fig.suptitle(f"{name} (the paper's {SOURCE[name]})"
                 + (f": mean ± sample sd over {seeds} seeds" if seeds > 1 else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------
def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("name", choices=ABLATIONS)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "ablations",
                   help="parent folder; this ablation writes into OUT/<name>/")
    p.add_argument("--cache",
                   help="comma-separated stores, one per dataset (default: the synthetic ones)")
    p.add_argument("--data", type=Path, default=REPO / "data", help="where the synthetic stores live")
    p.add_argument("--ifm", default="", help="IFM key(s): a,b concatenates them for the SFU/TMM "
                   "ablations; for temporal and ifm, the keys to compare (default: all)")
    p.add_argument("--settings", default="", help="run only these settings (comma-separated labels)")
    p.add_argument("--epochs", type=int, help=f"PRP epochs ({_defaults('epochs')})")
    p.add_argument("--ft-epochs", type=int, help=f"fine-tuning epochs ({_defaults('ft_epochs')})")
    p.add_argument("--batch-size", type=int, help=f"PRP batch ({_defaults('batch_size')})")
    p.add_argument("--ft-batch-size", type=int,
                   help=f"fine-tuning batch ({_defaults('ft_batch_size')})")
    p.add_argument("--max-steps", type=int, help="stop every training after this many steps")
    p.add_argument("--lr", type=float, help=f"learning rate at batch 32, scaled linearly ({_defaults('lr')})")
    p.add_argument("--prp-clips", type=int, help=f"PRP clips per video per epoch ({_defaults('prp_clips')})")
    p.add_argument("--views", type=int, default=4, help="test clips per video")
    p.add_argument("--blocks", type=int, default=1, help="base TMM blocks (tmm-depth varies them)")
    p.add_argument("--hidden", type=int,
                   help=f"base TMM hidden width; tmm-width varies it ({_defaults('hidden')})")
    p.add_argument("--out-dim", type=int, help=f"base TMM block output width ({_defaults('out_dim')})")
    p.add_argument("--preset", choices=("ours", "paper"), default="ours",
                   help="ours (temporal kernel 3, MLP head) or paper (1x1x1 first conv, linear head)")
    p.add_argument("--preload", action=argparse.BooleanOptionalAction,
                   help="hold each store's split in RAM (default: on for the synthetic stores)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--jobs", type=int, default=1, help="settings run at once (subprocesses)")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--seeds", type=int, help="how many seeds (seed, seed + 1, ...): every setting runs "
                   f"once per seed; tables and plots show mean and spread ({_defaults('seeds')})")
    args = p.parse_args(argv)
    args.ifm = tuple(k for k in args.ifm.split(",") if k)
    for key, value in (FULL if args.cache else QUICK).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seeds < 1 or args.seed < 0:
        raise SystemExit(f"need --seeds >= 1 and --seed >= 0, got {args.seeds} and {args.seed}")
    args.seeds = tuple(range(args.seed, args.seed + args.seeds))
    return args


def _defaults(key: str) -> str:
    return f"synthetic stores {QUICK[key]}, else {FULL[key]}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if argv[:1] == ["--run-setting"]:  # a worker started by run_settings
        _setup_logging()
        run_setting(Path(argv[1]))
        return 0
    args = parse_args(argv)
    _setup_logging()
    stores = (synthetic_stores(args.data, args.name == "ifm") if not args.cache
              else [Path(p) for p in args.cache.split(",") if p])
    infos = label_stores([describe_store(p) for p in stores])
    recipe = Recipe(args.epochs, args.ft_epochs, args.batch_size, args.ft_batch_size, args.lr,
                    args.max_steps, args.views, args.seeds, args.train_split, args.test_split,
                    {"blocks": args.blocks, "hidden": args.hidden, "out_dim": args.out_dim,
                     "preset": args.preset}, args.prp_clips)
    out = args.out / args.name
    check_recipe(out, recipe)

    settings, notes = [], []
    for info in infos:
        s, n = plan(args.name, info, args)
        settings += s
        notes += n
    if args.settings:
        wanted = {v.strip() for v in args.settings.split(",")}
        settings = [s for s in settings if s.label in wanted]
    for n in notes:
        print(f"note: {n}")
    todo = []
    for s in settings:
        folder = out / s.folder
        if (folder / "result.json").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / "setting.json", {"setting": asdict(s), "recipe": asdict(recipe),
                                              "device": args.device, "preload": args.preload})
        todo.append(folder)
    print(f"{args.name}: {len(settings)} settings on {len(infos)} store(s); "
          f"{len(settings) - len(todo)} already finished, {len(todo)} to run", flush=True)
    failed = run_settings(todo, args.jobs)

    rows, missing = [], []
    for s in settings:
        path = out / s.folder / "result.json"
        if path.exists():
            rows.append(json.loads(path.read_text()))
        else:
            missing.append(f"{s.dataset} {s.label}")
    text = render(args.name, rows, recipe, notes, missing)
    if rows:
        write_csv(out / "results.csv", rows)
        (out / "results.md").write_text(text)
        plot(out / "results.png", args.name, rows)
    print()
    print(text)
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'}" if rows
          else "nothing finished: no results written")
    return 1 if failed or not rows else 0


def check_recipe(out: Path, recipe: Recipe) -> None:
    """Results in one folder come from one recipe: refuse to mix."""
    path = out / "recipe.json"
    mine = json.loads(json.dumps(asdict(recipe)))
    if path.exists():
        theirs = json.loads(path.read_text())
        if theirs != mine:
            diff = ", ".join(f"{k} {theirs.get(k)!r} -> {v!r}"
                             for k, v in mine.items() if theirs.get(k) != v)
            raise SystemExit(f"{out} holds results of another recipe ({diff}); pass another --out "
                             "or remove it")
        return
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, mine)


def _setup_logging() -> None:
    """The library's warnings; nothing else (this script prints its own progress, and
    open_clip warns on the root logger about random weights, which the synthetic stores
    ask for)."""
    for name in ("advise_cache",):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if not any(getattr(h, "ablation", False) for h in logger.handlers):
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            handler.ablation = True
            logger.addHandler(handler)
            logger.propagate = False
    if not logging.getLogger().handlers:  # a script, not inside a test runner's logging
        logging.getLogger().setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
