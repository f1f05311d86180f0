"""The storage ablation's own table (pipelines/studies/ablation.py storage, issue 12): beside each store's
Acc_ft and ΔAcc, its bytes per frame, ClipLoader clips/s over it and the int8 error recorded in
it; the same bytes, rates and error for a few short synthetic videos through a random-weight
ViT-B-16. Written into results.md and into BENCHMARKS.md's `ablation_storage` section.

A frame-stride-2 store holds every second source frame, and sampling.py counts strides in
stored frames: the samplers' base stride 1 over it is the recipe's base stride 2 at every frame,
and each setting's label names both.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from pipelines.common import describe_machine, extract_cpu, num, pm, say
from pipelines.readers import WARMUP_BATCHES, loader_now, make_plan
from pipelines.sections import save, section, table
from pipelines.studies.ablation_report import aggregate

ROUNDS, BATCHES, BATCH = 3, 24, 32  # loader: rounds alternate the stores; timed batches of 32 clips
CAVEAT = (
    "Random-weight tokens are not real CLIP tokens: real CLIP and DINOv2 features have a few "
    "outlier channels, which cost 8-bit tokens more precision than these random ones do. Every "
    "int8 store records its own error per video (relative L2 and cosine against the float tokens "
    "in hand while extracting); `advise-cache info` and `verify` show it: that is how a user "
    "checks on real data."
)


def vit_stores(data: Path, per_class: int) -> list[Path]:
    """Short synthetic-motion videos through ViT-B-16 with random weights: a float16 and an int8 store."""
    from advise_cache.synthetic import generate_synthetic

    root = generate_synthetic(
        data / "vit-b16-videos", "motion", 0, train_per_class=per_class, test_per_class=0, min_frames=16, max_frames=16
    )
    return [
        extract_cpu(
            root, data / f"vit-b16-{dtype}.zarr", "synthetic-motion", model="ViT-B-16", pretrained="none", dtype=dtype
        )
        for dtype in ("float16", "int8")
    ]


def measure(paths: list[Path], device: str) -> list[dict]:
    """Per store: its facts from `summarize`, and the median ClipLoader clips/s over ROUNDS rounds
    (batches delivered on `device`, where int8 is dequantised)."""
    from advise_cache.store import DONE, open_store
    from advise_cache.summary import summarize

    facts, plans = [], []
    for path in paths:
        store = open_store(path)
        key = store.ifm().key  # the loader's default, as in the settings
        info, done = summarize(store)["ifms"][key], store.ifm(key).status() == DONE
        source_frames = int(store.videos.source_frames[done].sum())
        facts.append({**info, "dataset": store.dataset, "clips_per_s": [], "per_source": info["bytes"] / source_frames})
        plans.append(make_plan(path, (BATCHES + WARMUP_BATCHES) * BATCH, 0))
    for _ in range(ROUNDS):
        for f, (source, plan) in zip(facts, plans):
            f["clips_per_s"].append(loader_now(source, plan, BATCH, threads=4, device=device))
    for f in facts:
        f["clips_per_s"] = statistics.median(f["clips_per_s"])
    return facts


def report(body: list, stores: list[Path], rows: list[dict], args) -> list:
    """The storage table and its notes, to follow the ablation's report `body`; with
    args.benchmarks, the two also go there as the ablation_storage section (table first)."""
    from advise_cache.runtime import resolve_device

    device = str(resolve_device(args.device))
    machine = describe_machine(device)
    facts = measure(stores + (vit_stores(args.data, args.vit_per_class) if args.vit_per_class else []), device)
    say(f"storage: measured bytes and loader rates of {len(facts)} stores")
    acc = {r["store"]: r for r in aggregate(rows)}
    base = {(f["dataset"], f["model"]): f for f in facts if f["dtype"] == "float16" and f["frame_stride"] == 1}

    def cell(r, key, signed=False):  # no "± 0.0": one seed, or seeds that agree
        return pm(r[key], r.get(f"{key}_sd") or None, signed) if r else "—"

    def ratio(f, key):
        b = base.get((f["dataset"], f["model"]))
        return f" ({f[key] / b[key]:.2f})" if b else ""

    lines = []
    for path, f in zip(stores + [None] * len(facts), facts):
        r, q = acc.get(str(path)), f.get("quant_error", {})
        lines.append(
            [
                f["dataset"] if r else f"{f['dataset']}, {f['model']} random weights",
                r["setting"] if r else f"{f['dtype']}, frame stride {f['frame_stride']}",
                cell(r, "acc_ft"),
                cell(r, "delta_acc", True),
                f"{f['bytes'] / f['frames']:,.0f}",
                f"{f['per_source']:,.0f}{ratio(f, 'per_source')}",
                num(f["clips_per_s"]) + ratio(f, "clips_per_s"),
                f"{100 * q['rel_l2_mean']:.2f} / {100 * q['rel_l2_worst']:.2f}" if q.get("videos") else "—",
                f"{q['cos_mean']:.5f} / {q['cos_worst']:.5f}" if q.get("videos") else "—",
            ]
        )
    own = [
        table(
            [
                "dataset",
                "store (sampler stride in stored frames)",
                "Acc_ft",
                "ΔAcc",
                "bytes / stored frame",
                "bytes / source frame (of float16)",
                "loader clips/s (of float16)",
                "int8 rel. L2 % mean / worst",
                "int8 cosine mean / worst",
            ],
            lines,
            left=2,
        ),
        "",
        f"Bytes: the store's token shards (shard indexes included) over its frames. Loader: ClipLoader, "
        f"PRP clips of 8 frames, batch {BATCH}, 4 threads, {BATCHES} timed batches after {WARMUP_BATCHES}, "
        f"median of {ROUNDS} rounds alternating the stores, batches delivered on {device} (which dequantises "
        "int8: with no GPU, the CPU itself); the test-vit frames are small (4 x 4 x 64), so their rates are "
        "bound by per-clip work, not bytes. Errors: as recorded in each int8 store.",
        "",
        CAVEAT,
    ]
    if args.benchmarks:
        title = "Storage: int8 tokens and frame stride 2, what each costs"
        report = ["#" + body[0], *body[1:]]  # the ablation's report, a level down
        s = section("ablation_storage", title, "studies.ablation", args.argv, machine, [*own, "", *report])
        save(Path(args.benchmarks), [s])
    return own
