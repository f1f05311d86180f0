"""What `advise-cache info` tells about a store: its facts (`summarize`, also its --json) and
the lines it prints of them (`summary_lines`), the int8 error summary included."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .ifm_layout import DONE, FAILED, PENDING
from .store import Store


def summarize(store: Store) -> dict:
    """The facts `advise-cache info` prints."""
    table = store.videos
    source = store.source
    out = {
        "path": str(store.path),
        "format": store.format,
        "dataset": store.dataset,
        "root": store.root,
        "split": source["split"],
        "annotations": source["annotations"],
        "classes": len(store.classes),
        "videos": len(table),
        "splits": {s: int((table.split == s).sum()) for s in sorted(set(table.split.tolist()))},
        "missing": source["missing"],
        "ifms": {},
    }
    for key in store.ifm_keys():
        a = store.ifm(key)
        status = a.status()
        done = status == DONE
        reasons = a.reasons()
        out["ifms"][key] = {
            "model": a.meta.model,
            "pretrained": a.meta.pretrained,
            "grid": list(a.grid),
            "dim": a.dim,
            "dtype": a.meta.dtype,
            "frame_stride": a.meta.frame_stride,
            "codec": a.meta.codec,
            "done": int(done.sum()),
            "pending": int((status == PENDING).sum()),
            "failed": [
                {"name": str(table.name[i]), "reason": str(reasons[i])} for i in np.flatnonzero(status == FAILED)
            ],
            "frames": int(a.frames[done].sum()),
            "bytes": a.stored_bytes(),
            # the shard files read and written by advise-cache itself, or by zarr (20-50x slower)
            "direct_shard_io": a.shard_reader() is not None,
            # each frame's crc32c, checked on every read (store format 3); none in groups made before
            "frame_checksums": a.frame_checked,
            "resize": a.meta.resize,
            "views": a.views,  # the centre crop alone where no views were stored
        }
        errors = a.quant_errors()
        if errors is not None:
            out["ifms"][key]["quant_error"] = quant_error_summary(errors, done, table.name)
    return out


def quant_error_summary(errors: tuple[np.ndarray, np.ndarray], done: np.ndarray, names) -> dict:
    """Mean and worst of the per-video quantisation errors of an int8 group's done videos."""
    rel, cos = errors
    measured = done & np.isfinite(rel) & np.isfinite(cos)
    out = {"videos": int(measured.sum()), "unmeasured": int((done & ~measured).sum())}
    if measured.any():
        idx = np.flatnonzero(measured)
        worst = int(idx[np.argmax(rel[idx])])
        out.update(
            rel_l2_mean=float(rel[idx].mean()),
            rel_l2_worst=float(rel[worst]),
            cos_mean=float(cos[idx].mean()),
            cos_worst=float(cos[idx].min()),
            worst_video=str(names[worst]),
        )
    return out


def summary_lines(s: dict) -> list[str]:
    """`summarize`'s facts as the lines `advise-cache info` prints."""
    out: list[str] = []
    out.append(
        f"{s['path']}: dataset {s['dataset']} split {s['split']}, {s['videos']} videos "
        f"({', '.join(f'{k} {v}' for k, v in s['splits'].items())}), {s['classes']} classes"
    )
    out.append(f"  from {s['root']}" + _annotation_text(s["annotations"]))
    if s["format"] < 2:
        out.append(f"  store format {s['format']}: text columns only zarr-python reads (docs/STORE.md)")
    if s["missing"]:
        shown = ", ".join(s["missing"][:5]) + (
            f" and {len(s['missing']) - 5} more (--json lists all)" if len(s["missing"]) > 5 else ""
        )
        out.append(f"  {len(s['missing'])} listed videos missing on disk, not extracted: {shown}")
    for key, m in s["ifms"].items():
        per = m["bytes"] / m["frames"] / 1e3 if m["frames"] else 0
        out.append(
            f"  {key}: {m['model']} ({m['pretrained']}) grid {m['grid'][0]}x{m['grid'][1]} dim {m['dim']} "
            f"{m['dtype']} stride {m['frame_stride']} codec {m['codec']}"
        )
        out.append(
            f"    {m['done']} done, {m['pending']} pending, {len(m['failed'])} failed; "
            f"{m['frames']} frames, {m['bytes'] / 1e6:.1f} MB ({per:.1f} kB/frame)"
        )
        if len(m["views"]) > 1:
            out.append(f"    views of every frame ({len(m['views'])}): " + "; ".join(map(view_text, m["views"])))
        if not m["frame_checksums"]:
            out.append(
                "    frames carry no checksums (made before store format 3): reads cannot find damaged values; "
                "`verify --deep` compares whole videos with their checksums"
            )
        if not m["direct_shard_io"]:
            why = "a codec" if m["codec"] != "none" else "this zarr's sharding metadata is not the layout expected"
            out.append(
                f"    direct shard reader and writer: not in use ({why}): zarr reads and writes the shards, "
                "20-50x slower"
            )
        q = m.get("quant_error")
        if q and q["videos"]:
            out.append(
                f"    int8 error vs float tokens ({q['videos']} videos): relative L2 mean "
                f"{q['rel_l2_mean']:.2%}, worst {q['rel_l2_worst']:.2%} ({q['worst_video']}); "
                f"cosine mean {q['cos_mean']:.5f}, worst {q['cos_worst']:.5f}"
            )
        for f in m["failed"]:
            out.append(f"    failed {f['name']}: {f['reason']}")
    if not s["ifms"]:
        out.append("  no image model extracted yet")
    return out


def view_text(view: dict) -> str:
    """One stored view in words: how it was made (views.py)."""
    if view["kind"] == "simple":
        w, h = view["resize"]
        return (
            f"simple #{view['draw']} (resize {w}x{h}, random {view['crop']} crop, colour jitter p {view['jitter_p']} "
            f"b/c/s {view['brightness']}/{view['contrast']}/{view['saturation']} hue {view['hue']}; seed {view['seed']})"
        )
    if view["kind"] == "crop":
        return f"crop {view['position']} (short side {view['short_side']}, {view['crop']} crop)"
    return f"{view['kind']} (short side {view.get('short_side', '?')}, {view.get('crop', '?')} crop)"


def _annotation_text(files: list[str]) -> str:
    """'; annotations a.txt, b.txt in DIR' for each folder of annotation files."""
    by_dir: dict[str, list[str]] = {}
    for f in files:
        by_dir.setdefault(str(Path(f).parent), []).append(Path(f).name)
    return "".join(f"; annotations {', '.join(names)} in {d}" for d, names in by_dir.items())
