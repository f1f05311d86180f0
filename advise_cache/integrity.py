"""Checking a store's integrity: what `advise-cache verify` reports.

Every problem is one line naming the image model and the video: an incomplete video, an
offset or a shape the layout does not allow, a shard file missing or cut, a frame failing its
crc32c (format 3: every frame read is checked), NaN/Inf tokens, an all-zero (never written)
frame and, with `deep`, tokens that differ from the checksum written at extraction. The store's own layout checks (`Store.table_problems`, `IFMArrays.damaged`)
live beside the layout; this module walks them over a whole store.
"""

from __future__ import annotations

import numpy as np

from .errors import DamagedFrameError, first_line
from .ifm_layout import DONE, FAILED, NO_CHECKSUM, PENDING
from .quant import SCALE_BYTES, dequantise_numpy
from .store import Store
from .summary import quant_error_summary

# A video of an int8 store whose tokens lose more than this (relative L2, against the float
# tokens at extraction) is named by `verify`: about 7x what Gaussian tokens of width 768 lose
# (0.7%); outlier channels far above the rest of a token cause it.
ABNORMAL_QUANT_ERROR = 0.05


def verify(store: Store, check_values: bool = True, progress=None, deep: bool = False) -> list[str]:
    """Every problem found: incomplete videos, bad offsets or shapes, NaN/Inf tokens; `deep`:
    also tokens that differ from the checksum written at extraction (flipped finite values)."""
    problems = store.table_problems()
    table = store.videos
    keys = store.ifm_keys()
    if not keys:
        problems.append("no image model has been extracted into this store")
    for key in keys:
        a = store.ifm(key)
        per = a.meta.frames_per_shard
        stride = a.meta.frame_stride
        status = a.status()
        h, w = a.grid
        row = a.dim + (SCALE_BYTES if a.quantised else 0)  # int8: each token's float16 scale
        if a.tokens.shape[1:] != (h, w, row):
            problems.append(
                f"{key}: tokens shape {a.tokens.shape} does not match grid {h}x{w} dim {a.dim}"
                + (" (+2 bytes of scale: int8)" if a.quantised else "")
            )
        expected = -(-table.source_frames // stride)
        ends = a.offset + a.view_stride * len(a.views)  # each view's rows in whole shards
        for v in range(len(table)):
            name = table.name[v]
            if status[v] == PENDING:
                problems.append(f"{key}: {name}: not extracted yet")
            if a.frames[v] != expected[v]:
                problems.append(f"{key}: {name}: {a.frames[v]} rows, expected {expected[v]}")
            if a.offset[v] % per or (v and a.offset[v] != ends[v - 1]) or ends[v] > a.tokens.shape[0]:
                problems.append(f"{key}: {name}: offset {a.offset[v]} is not where its slot starts")
        damaged = dict(a.damaged(np.flatnonzero(status == DONE)))
        problems += [
            f"{key}: {table.name[v]}: {why} (`advise-cache extract` writes it again)" for v, why in damaged.items()
        ]
        sums = a.checksums() if deep else None
        if deep and sums is None:
            problems.append(
                f"{key}: no checksums recorded (extracted before advise-cache kept them): "
                "--deep cannot check its values"
            )
        if check_values or deep:
            for v in (progress or iter)(np.flatnonzero(status == DONE)):
                if v in damaged:
                    continue
                try:
                    x = a.read_video(int(v))
                except DamagedFrameError as e:  # already "KEY: VIDEO: frame F fails its crc32c check ..."
                    problems.append(str(e))
                    continue
                except Exception as e:  # zarr's own errors: a cut index, ...
                    problems.append(f"{key}: {table.name[v]}: its shards cannot be read ({first_line(e, 200)})")
                    continue
                if sums is not None and sums[v] != NO_CHECKSUM and a.computed_checksum(int(v), x) != sums[v]:
                    problems.append(
                        f"{key}: {table.name[v]}: its tokens differ from the checksum written at "
                        "extraction (corrupted on disk)"
                    )
                if a.quantised:  # the values the loader will see: int8 times each token's scale
                    x = dequantise_numpy(x)
                if not np.isfinite(x).all():
                    problems.append(f"{key}: {table.name[v]}: NaN or Inf in its tokens")
                elif not np.any(x.reshape(len(x), -1), axis=1).all():
                    problems.append(f"{key}: {table.name[v]}: some of its frames are missing (all zero)")
    return problems


def checksum_notes(store: Store) -> list[str]:
    """Image models made before store format 3: their frames carry no crc32c, so neither
    `verify` nor training can tell a changed value (`--deep` can, per video)."""
    return [
        f"{key}: frames carry no checksums (made before store format 3); `verify --deep` compares whole videos"
        for key in store.ifm_keys()
        if not store.ifm(key).frame_checked
    ]


def failed_notes(store: Store, show: int = 5) -> list[str]:
    """Videos extraction recorded as failed, per image model: not problems of the store (each is
    kept with its reason, and a rerun does not retry it), but an "ok" should not hide them."""
    notes = []
    names = store.videos.name
    for key in store.ifm_keys():
        a = store.ifm(key)
        failed = np.flatnonzero(a.status() == FAILED)
        if len(failed):
            reasons = a.reasons()
            listed = "; ".join(f"{names[v]}: {reasons[v]}" for v in failed[:show])
            more = f"; and {len(failed) - show} more (`advise-cache info` lists them)" if len(failed) > show else ""
            notes.append(f"{key}: {len(failed)} video(s) failed at extraction and are not in the store: {listed}{more}")
    return notes


def quant_notes(store: Store) -> list[str]:
    """What `verify` tells about int8 groups besides problems: the recorded quantisation error
    (mean, worst), each done video above ABNORMAL_QUANT_ERROR, and done videos never measured."""
    notes = []
    table = store.videos
    for key in store.ifm_keys():
        a = store.ifm(key)
        errors = a.quant_errors()
        if errors is None:
            continue
        done = a.status() == DONE
        s = quant_error_summary(errors, done, table.name)
        if s["videos"]:
            notes.append(
                f"{key}: int8 error over {s['videos']} videos: relative L2 mean {s['rel_l2_mean']:.2%}, "
                f"worst {s['rel_l2_worst']:.2%} ({s['worst_video']}); cosine mean {s['cos_mean']:.5f}, "
                f"worst {s['cos_worst']:.5f}"
            )
        rel = errors[0]
        for v in np.flatnonzero(done & (rel > ABNORMAL_QUANT_ERROR)):
            notes.append(
                f"{key}: {table.name[v]}: int8 relative L2 error {rel[v]:.2%} is above "
                f"{ABNORMAL_QUANT_ERROR:.0%}: its tokens may need float16 (--dtype float16, another --name)"
            )
        if s["unmeasured"]:
            notes.append(f"{key}: {s['unmeasured']} done videos have no recorded int8 error")
    return notes
