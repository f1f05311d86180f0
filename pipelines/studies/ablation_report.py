"""The report of an ablation (pipelines/studies/ablation.py): results.csv, results.md and results.png,
means and sample standard deviations over seeds, and the cost of pooling the grid."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from pipelines.common import mean_sd, pm
from pipelines.sections import body_markdown, table

SOURCE = {
    "spatial-res": "the paper's Figure 3",
    "channel-dim": "the paper's Figure 4",
    "tmm-depth": "the paper's Figure 5",
    "tmm-width": "the paper's Figure 6",
    "temporal": "the paper's Table 5",
    "ifm": "the paper's Table 4",
    "storage": "issue 12",
}
AXIS = {
    "spatial-res": "spatial pool S (S x S grid into the TMM)",
    "channel-dim": "channel pool C (channels into the TMM)",
    "tmm-depth": "TMM blocks",
    "tmm-width": "TMM hidden width",
    "temporal": "temporal module",
    "ifm": "image model(s)",
    "storage": "token dtype, frame stride of the store",
}
LOG_X, DESCENDING = {"channel-dim", "tmm-width"}, {"spatial-res", "channel-dim"}
CSV_COLUMNS = (
    "ablation",
    "dataset",
    "setting",
    "seed",
    "x",
    "store",
    "ifm",
    "source_stride",
    "tmm",
    "blocks",
    "hidden",
    "out_dim",
    "spatial_pool",
    "channel_pool",
    "clip",
    "params",
    "macs",
    "prp_acc",
    "prp_steps",
    "acc_ft",
    "top5_ft",
    "acc_scratch",
    "delta_acc",
    "ft_steps",
    "acc_matched",
    "delta_matched",
    "matched_steps",
    "test_videos",
    "seconds",
    "note",
)
METRICS = ("prp_acc", "acc_ft", "acc_scratch", "delta_acc", "acc_matched", "delta_matched")
HEADER = ["dataset", "setting", "clip", "params (M)", "GMACs", "PRP acc", "Acc_ft", "Acc_scratch", "ΔAcc"]
HEADER += ["Acc_scratch, matched", "ΔAcc vs matched"]


# -- report ------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: "" if row.get(k) is None else row.get(k) for k in CSV_COLUMNS} for row in rows)


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (dataset, setting): each metric its mean over seeds, `<metric>_sd` its sample
    standard deviation, `seeds` how many."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["setting"]), []).append(r)
    out = []
    for group in groups.values():
        row = dict(group[0], seeds=len(group))
        for key in METRICS:
            row[key], row[f"{key}_sd"] = mean_sd([r.get(key) for r in group])
        out.append(row)
    return out


def pooling_costs(rows: list[dict]) -> dict:
    """spatial-res: per dataset, Acc_ft on the full grid minus Acc_ft pooled to the smallest
    grid, paired by seed: (mean, sd, seeds, full, smallest)."""
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
            costs[dataset] = (*mean_sd(diffs), len(diffs), full, smallest)
    return costs


def numbers(r: dict, cell) -> list[str]:
    """A row's size, cost and accuracies as the table shows them (`cell(r, key, signed)`)."""
    size = [f"{r['params'] / 1e6:.3g}", f"{r['macs'] / 1e9:.3g}"]
    return size + [cell(r, key, key.startswith("delta")) for key in METRICS]


def render(name: str, rows: list[dict], recipe, notes: list[str], missing: list[str]) -> list:
    """The report's body: its heading, paragraphs and table (`sections.body_markdown` writes it out)."""
    base, seeds = recipe.base_tmm, recipe.seeds
    several = len(seeds) > 1

    def cell(r, key, signed=False):
        return pm(r[key], r.get(f"{key}_sd") if several else None, signed)

    steps = f", at most {recipe.max_steps} steps each" if recipe.max_steps else ""
    spread = "; accuracies are mean ± sample sd over the training seeds (one data draw: the store's)" if several else ""
    rule = "lr x videos / 64 (the code's rule)" if base["preset"] == "released" else "at batch 32, scaled linearly"
    out = [
        f"## Ablation {name} ({SOURCE[name]})",
        "",
        f"PRP {recipe.epochs} epochs (batch {recipe.batch_size}, {recipe.prp_clips} clips per video), "
        f"fine-tuning {recipe.ft_epochs} epochs (batch {recipe.ft_batch_size}){steps}, lr {recipe.lr:g} {rule}, "
        f"seed{'s' if several else ''} {', '.join(map(str, seeds))}; test top-1 over "
        f"{recipe.views} views{spread}. Base TMM: {base['blocks']} block(s), hidden {base['hidden']}, "
        f"out {base['out_dim']} ({base['preset']} preset). Params and MACs (multiply-accumulates, the "
        "paper's \"FLOPs\") are the model's with the 4-way PRP head, for one clip.",
        "",
        table(HEADER, [[r["dataset"], r["setting"], r["clip"], *numbers(r, cell)] for r in aggregate(rows)], left=3),
        "",
        "Accuracies in %. Acc_ft: fine-tuned from the PRP-pretrained TMM; ΔAcc = Acc_ft − "
        "Acc_scratch (the same fine-tuning from a random TMM); matched: a fine-tune from a random "
        "TMM for as many steps as PRP and the fine-tune together (what PRP's compute buys spent on "
        "the labels), and Acc_ft minus it.",
    ]
    if name == "spatial-res":
        for dataset, (m, sd, n, full, small) in pooling_costs(rows).items():
            out.append(
                f"- {dataset}: pooling the grid from {full:g} to {small:g} costs {100 * m:+.1f} ± "
                f"{100 * sd:.1f} points of Acc_ft (paired by seed, {n} seed(s))."
            )
    for dataset, n in {r["dataset"]: r.get("test_videos") for r in rows}.items():
        if n:
            out.append(f"- {dataset}: {n} test videos, so one video is {100 / n:.1f} points of accuracy.")
    out += [
        f"- {n}"
        for n in notes
        + [f"not finished: {m}" for m in missing]
        + sorted({f"{r['setting']}: {r['note']}" for r in rows if r.get("note")})
    ]
    return out


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
    fig.suptitle(f"{name} ({SOURCE[name]})" + (f": mean ± sample sd over {seeds} seeds" if seeds > 1 else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args, out: Path, stores: list[Path], settings: list, notes: list[str], extend=None) -> int:
    """results.csv, .md and .png of every finished run; 1 where none has finished. `extend(body,
    stores, rows, args)`, where given, adds to the report's body (the storage ablation's table)."""
    done = [(s, out / s.folder / "result.json") for s in settings]
    rows = [json.loads(path.read_text()) for _, path in done if path.exists()]
    missing = [f"{s.dataset} {s.label}" for s, path in done if not path.exists()]
    body = render(args.name, rows, args.recipe, notes, missing)
    if extend is not None and rows:
        body += ["", *extend(body, stores, rows, args)]
    text = body_markdown(body) + "\n"
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
