"""Videos a run leaves out because a frame of theirs fails its crc32c (`train --skip-damaged`):
which they are, and which clips take the place of theirs.

Every frame the loader reads is checked (shards.py). Without --skip-damaged the first damaged
frame stops the run with one line naming its video and frame. With it, the video is named once
in a warning, and every clip of it, in this batch and later ones, is replaced by the next clip
of the plan whose video is not known to be damaged: batches keep their size and epochs their
number of steps (what resuming and DDP's ranks count on).
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import DamagedFrameError, StoreError

log = logging.getLogger(__name__)


class DamagedVideos:
    """The damaged videos a reader of `store` has found, and whether it skips them."""

    def __init__(self, store, skip: bool = False):
        self.store = store
        self.skip = skip
        self.found: dict[int, str] = {}  # video -> what was found

    def __bool__(self) -> bool:
        return bool(self.found)

    def record(self, e: DamagedFrameError) -> None:
        """Note the videos of `e` (each named in a warning, once) where damaged videos are
        skipped; else raise `e` with how to skip them."""
        if not self.skip:
            raise DamagedFrameError(f"{e}; or add --skip-damaged to train without it", e.rows, e.videos) from None
        for v in e.videos:
            if v not in self.found:
                self.found[v] = str(e)
                log.warning("skipping video %s (--skip-damaged): %s", self.store.videos.name[v], e)

    def replace(self, clips: tuple, plan: tuple, start: int) -> tuple:
        """`clips` (a batch's videos, indices, labels and views) with each clip of a found video
        replaced by the next clip of `plan` (the same arrays for a whole plan) from position `start`
        on, wrapping round, whose video is not found damaged."""
        found = np.fromiter(self.found, np.int64, len(self.found))
        bad = np.isin(clips[0], found)
        if not bad.any():
            return clips
        good = np.flatnonzero(~np.isin(plan[0], found))
        if not len(good):
            raise StoreError("every video of this run has damaged frames (`advise-cache verify` lists them)")
        take = good[(np.searchsorted(good, start) + np.arange(int(bad.sum()))) % len(good)]
        out = [c.copy() for c in clips]
        for mine, whole in zip(out, plan):
            mine[bad] = whole[take]
        return tuple(out)
