"""Checking a store's integrity: what `advise-cache verify` reports.

Every problem is one line naming the image model and the video: an incomplete video, an
offset or a shape the layout does not allow, a shard file missing or cut, NaN/Inf tokens, an
all-zero (never written) frame and, with `deep`, tokens that differ from the checksum written
at extraction. The store's own layout checks (`Store.table_problems`, `IFMArrays.damaged`)
live beside the layout; this module walks them over a whole store.
"""

from __future__ import annotations

import numpy as np

from .errors import first_line
from .ifm_arrays import DONE, NO_CHECKSUM, PENDING
from .store import Store


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
        per = int(a.meta["frames_per_shard"])
        stride = int(a.meta["frame_stride"])
        status = a.status()
        h, w = a.grid
        if a.tokens.shape[1:] != (h, w, a.dim):
            problems.append(f"{key}: tokens shape {a.tokens.shape} does not match grid {h}x{w} dim {a.dim}")
        expected = -(-table.source_frames // stride)
        ends = a.offset + -(-a.frames // per) * per
        for v in range(len(table)):
            name = table.name[v]
            if status[v] == PENDING:
                problems.append(f"{key}: {name}: not extracted yet")
            if a.frames[v] != expected[v]:
                problems.append(f"{key}: {name}: {a.frames[v]} rows, expected {expected[v]}")
            if a.offset[v] % per or (v and a.offset[v] != ends[v - 1]) or ends[v] > a.tokens.shape[0]:
                problems.append(f"{key}: {name}: offset {a.offset[v]} is not where its slot starts")
        damaged = dict(a.damaged(np.flatnonzero(status == DONE)))
        problems += [f"{key}: {table.name[v]}: {why} (`advise-cache extract` writes it again)"
                     for v, why in damaged.items()]
        sums = a.checksums() if deep else None
        if deep and sums is None:
            problems.append(f"{key}: no checksums recorded (extracted before advise-cache kept them): "
                            "--deep cannot check its values")
        if check_values or deep:
            for v in (progress or iter)(np.flatnonzero(status == DONE)):
                if v in damaged:
                    continue
                try:
                    x = a.read_video(int(v))
                except Exception as e:  # zarr's own errors: a bad checksum, a cut index, ...
                    problems.append(f"{key}: {table.name[v]}: its shards cannot be read ({first_line(e, 200)})")
                    continue
                if sums is not None and sums[v] != NO_CHECKSUM and a.computed_checksum(int(v), x) != sums[v]:
                    problems.append(f"{key}: {table.name[v]}: its tokens differ from the checksum written at "
                                    "extraction (corrupted on disk)")
                if not np.isfinite(x).all():
                    problems.append(f"{key}: {table.name[v]}: NaN or Inf in its tokens")
                elif not np.any(x.reshape(len(x), -1), axis=1).all():
                    problems.append(f"{key}: {table.name[v]}: some of its frames are missing (all zero)")
    return problems
