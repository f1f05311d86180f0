"""One setting of an ablation (pipelines/studies/ablation.py), run in its worker process (ablation_runs.py):
its configs from the recipe, the paper's protocol (advise_cache/protocol.py) run or timed, its
result.json; and the synthetic stores a study without --cache runs on.
"""

from __future__ import annotations

import datetime
import fcntl
import itertools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.common import SYNTHETIC, quiet, synthetic_store

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


def setup_logging() -> None:
    """The library's warnings and no other's; this script prints its own progress."""
    quiet()
    logging.getLogger("advise_cache").setLevel(logging.WARNING)


def write_spec(folder: Path, s, args) -> None:
    """A setting's setting.json: what its worker runs (the setting, the recipe, device, preload)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"setting": asdict(s), "recipe": asdict(args.recipe), "device": args.device, "preload": args.preload}
    write_json(folder / "setting.json", spec)


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
