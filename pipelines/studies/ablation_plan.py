"""The settings of an ablation (pipelines/studies/ablation.py) on one store: the paper's values, and
their analogues where a store's grid or width differs from ViT-B/16's 14 x 14 x 768."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pipelines.studies.ablation_report import SOURCE
from pipelines.studies.ablation_setting import ONE_STORE, STORAGE, synthetic_stores

ABLATIONS = tuple(SOURCE)
PAPER = {
    "spatial-res": (14, 9, 5, 3, 1),
    "channel-dim": (768, 192, 48, 12, 3),
    "tmm-depth": (1, 2, 4, 6, 8),
    "tmm-width": (64, 256, 512, 1024, 2048),
}


@dataclass(frozen=True)
class StoreInfo:
    path: str
    dataset: str  # the line's label in the plot
    keys: tuple[str, ...]  # IFM keys in the store
    grids: dict  # key -> (h, w)
    dims: dict  # key -> D
    strides: dict  # key -> frame stride at extraction
    frames: int  # frames per clip (the sampler's)
    dtypes: dict = field(default_factory=dict)  # key -> token dtype in the store

    def check(self, keys: tuple[str, ...]) -> None:
        """Refuse keys the store lacks, or that cannot be concatenated."""
        if missing := [k for k in keys if k not in self.keys]:
            raise SystemExit(f"{self.path} has no IFM {', '.join(missing)}; it holds {', '.join(self.keys)}")
        if len({self.grids[k] for k in keys}) > 1 or len({self.strides[k] for k in keys}) > 1:
            raise SystemExit(
                f"{self.path}: {'+'.join(keys)} cannot be concatenated (grids "
                f"{[self.grids[k] for k in keys]}, frame strides "
                f"{[self.strides[k] for k in keys]})"
            )


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
    source_stride: int | None = None  # base stride in frames of the video (TrainConfig.source_stride)

    @property
    def folder(self) -> str:
        where = f"{slug(self.dataset)}/{slug(self.label)}"
        return where if self.seeds == 1 else f"{slug(self.dataset)}/seed{self.seed}/{slug(self.label)}"


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
    notes.append(
        f"the full grid is {grid}x{grid}, not {paper[0]}x{paper[0]}: using "
        f"{', '.join(map(str, values))} (the full grid, the paper's smaller pools, filled "
        "with the largest unused sizes below the grid)"
    )
    return values, notes


def channel_values(dim: int) -> tuple[list[int], list[str]]:
    """The channel pools for D-dim tokens: the paper's factors 4^-k of D (module doc)."""
    paper = PAPER["channel-dim"]
    if dim == paper[0]:
        return list(paper), []
    values = list(dict.fromkeys(max(1, round(dim / 4**k)) for k in range(len(paper))))
    notes = [f"channel pool {c} does not fit {dim}-dim tokens: skipped" for c in paper if c > dim]
    notes.append(
        f"tokens are {dim}-dim, not {paper[0]}: using the paper's factors 1, 1/4, 1/16, "
        f"1/64, 1/256 of {dim}: {', '.join(map(str, values))}"
    )
    return values, notes


def describe_store(path: Path) -> StoreInfo:
    from advise_cache.sampling import SamplerConfig
    from advise_cache.store import open_store

    store = open_store(path)
    if not (keys := tuple(store.ifm_keys())):
        raise SystemExit(f"{path}: no image model extracted into this store yet")
    arrays = {k: store.ifm(k) for k in keys}
    return StoreInfo(
        str(path),
        store.dataset,
        keys,
        {k: tuple(a.grid) for k, a in arrays.items()},
        {k: a.dim for k, a in arrays.items()},
        {k: a.meta.frame_stride for k, a in arrays.items()},
        SamplerConfig().frames,
        {k: a.meta.dtype for k, a in arrays.items()},
    )


def label_stores(infos: list[StoreInfo]) -> list[StoreInfo]:
    """Datasets label the lines; two stores of one dataset are told apart by their names."""
    count = Counter(info.dataset for info in infos)
    return [
        info if count[info.dataset] == 1 else replace(info, dataset=f"{info.dataset} ({Path(info.path).stem})")
        for info in infos
    ]


def base_tmm(args, in_dim: int):
    """The recipe's base TMM: its preset's (`configs.PRESETS`: ours, paper, released) with the
    recipe's blocks, hidden and output widths."""
    from advise_cache.configs import PRESETS

    b = args.recipe.base_tmm
    return replace(
        PRESETS[b["preset"]].tmm, in_dim=in_dim, blocks=b["blocks"], hidden=b["hidden"], out_dim=b["out_dim"]
    )


def default_ifm(info: StoreInfo, wanted: tuple[str, ...], notes: list[str]) -> tuple[str, ...]:
    if wanted:
        info.check(wanted)
        return wanted
    if len(info.keys) > 1:
        notes.append(
            f"{info.dataset}: the store holds {', '.join(info.keys)}; using {info.keys[0]} (choose with --ifm)"
        )
    return info.keys[:1]


def plan(name: str, info: StoreInfo, args) -> tuple[list[Setting], list[str]]:
    """The settings of ablation `name` on one store, and notes on what did not fit."""
    notes: list[str] = []
    settings: list[Setting] = []

    def add(label, x, keys, tmm, note="", source_stride=None):
        """One setting, once per seed."""
        (h, w), dim = info.grids[keys[0]], sum(info.dims[k] for k in keys)
        for seed in args.seeds:
            shape = (info.frames, h, w, dim)
            settings.append(
                Setting(
                    name,
                    info.dataset,
                    info.path,
                    str(label),
                    x,
                    tuple(keys),
                    asdict(tmm),
                    shape,
                    note,
                    seed,
                    len(args.seeds),
                    source_stride,
                )
            )

    kinds = {"temporal": _temporal, "ifm": _ifms, "storage": _storage, **dict.fromkeys(PAPER, _paper)}
    if name not in kinds:
        raise SystemExit(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
    kinds[name](name, info, args, add, notes)
    return settings, notes


def _paper(name: str, info: StoreInfo, args, add, notes: list[str]) -> None:
    """Table 5's ablations: the spatial resolution, the channel width, the TMM's depth or width."""
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
    else:  # tmm-depth, tmm-width: fit every store
        why, varied = [], {"tmm-depth": "blocks", "tmm-width": "hidden"}[name]
        for v in PAPER[name]:
            add(v, v, keys, replace(base, **{varied: v}))
    notes += [f"{info.dataset}: {n}" for n in why]


def _temporal(name: str, info: StoreInfo, args, add, notes: list[str]) -> None:
    """The TMM against average pooling, per image model."""
    for key in args.ifm or info.keys:
        info.check((key,))
        base = base_tmm(args, info.dims[key])
        add(f"{key} TMM", None, (key,), base)
        add(
            f"{key} avg-pool",
            None,
            (key,),
            replace(base, tmm="none"),
            "average pooling: nothing to pretrain, Acc_ft is the fine-tune from scratch",
        )


def _ifms(name: str, info: StoreInfo, args, add, notes: list[str]) -> None:
    """Each image model of the store, and each pair concatenated where their tokens line up."""
    keys = args.ifm or info.keys
    for key in keys:
        info.check((key,))
        add(key, None, (key,), base_tmm(args, info.dims[key]))
    for a, b in itertools.combinations(keys, 2):
        if info.grids[a] != info.grids[b] or info.strides[a] != info.strides[b]:
            notes.append(
                f"{info.dataset}: {a}+{b} skipped: grids {info.grids[a]}, "
                f"{info.grids[b]} and frame strides {info.strides[a]}, "
                f"{info.strides[b]} must match to concatenate tokens"
            )
            continue
        add(f"{a}+{b}", None, (a, b), base_tmm(args, info.dims[a] + info.dims[b]))
    if len(info.keys) < 2:
        notes.append(
            f"{info.dataset}: the store holds one IFM ({', '.join(keys)}); extract "
            "another into it (advise-cache extract ... --out STORE --model ViT-L-14) "
            "to compare IFMs and their concatenation"
        )


def _storage(name: str, info: StoreInfo, args, add, notes: list[str]) -> None:
    """One setting per store: its dtype and frame stride."""
    key = default_ifm(info, args.ifm, notes)[0]
    stored = info.strides[key]  # the recipe's base stride 2 in source frames is 2 / stored in the store's
    add(
        f"{info.dtypes[key]}, frame stride {stored} (sampler stride {2 / stored:g})",
        None,
        (key,),
        base_tmm(args, info.dims[key]),
        source_stride=2,
    )  # train.resolve_stride refuses what cannot be


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
