"""Folders created atomically: built beside their target, then renamed into place.

Processes racing to create the same store or image-model group each build a hidden folder
named `.<name>.tmp-<pid>-<host>-<hex>` and rename it; one rename wins and the others discard
theirs, so every racer ends up agreeing on one. A build left by a killed process is recognised
by its pid on this host (at once), or by its age where the host differs (a shared disk), and
removed (`clean_leftovers`; `atomic_create` clears its own target's first). A bucket has no
rename: there `publish` writes the node's objects and its head (the zarr.json that makes it a
node) last, by a conditional write. Nothing here knows Zarr. `write_durable` writes a file's
buffers and fsyncs it (the token shards, the checkpoints and logs of a run).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
import uuid
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

# .<name>.tmp-<pid>-<host>-<hex>; older ones lack the host, the oldest the pid too
_TMP = re.compile(r"\.(.+)\.tmp-(?:(\d+)-)?(?:([0-9a-f]{8})-)?[0-9a-f]{8}")
STALE_AFTER = 60.0  # seconds: a group takes well under a second to build
HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"  # whose pids a build's name holds


def atomic_create(target: Path, build) -> bool:
    """Build a directory next to `target` with `build(tmp)`, then rename it into place.
    Returns False (and discards ours) when another process got there first. The hidden
    folder's name carries our pid, so a later run can tell one left by a killed process."""
    clean_leftovers(target.parent, target.name)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{HOST}-{uuid.uuid4().hex[:8]}")
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
            return True
        except OSError:
            if target.exists():
                return False
            raise
    finally:
        if tmp.exists():
            _remove_build(tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_build(tmp: Path, settle: float = 0.05, limit: float = 2.0) -> None:
    """Remove a failed build's folder. zarr may still be finishing writes it started beside
    the one that failed (its asyncio.gather does not stop them), which recreate folders
    under `tmp` after a first sweep: sweep until it stays gone for a moment."""
    deadline = time.monotonic() + limit
    while True:
        shutil.rmtree(tmp, ignore_errors=True)
        time.sleep(settle)
        if not tmp.exists() or time.monotonic() > deadline:
            return


def building(folder: Path, name: str | None = None) -> tuple[list[Path], list[Path]]:
    """Hidden folders of `atomic_create` in `folder` (of target `name`, when given): (being
    built now, left by a killed run). Left behind: its process on this host is gone; or, made
    elsewhere (a pid of another machine sharing the disk means nothing here), its process is
    gone and it is older than a build takes, or it is far older than any build."""
    live, stale = [], []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return live, stale
    now = time.time()
    for p in entries:
        m = _TMP.fullmatch(p.name)
        if not m or (name is not None and m[1] != name):
            continue
        try:
            age = now - p.lstat().st_mtime
        except OSError:
            continue
        dead = m[2] is None or not _pid_alive(int(m[2]))
        gone = dead and (m[3] == HOST or age > STALE_AFTER)
        (stale if gone or age > 60 * STALE_AFTER else live).append(p)
    return live, stale


def clean_leftovers(folder: Path, name: str | None = None) -> list[Path]:
    """Remove hidden build folders left in `folder` by killed runs (of target `name`, when
    given); returns what was removed."""
    _, stale = building(folder, name)
    for p in stale:
        log.warning("removing %s, left by an interrupted run", p)
        shutil.rmtree(p, ignore_errors=True)
    return stale


def publish(bucket, objects: dict[str, bytes], head: str) -> bool:
    """Object storage's atomic creation: write every object but `head`, then `head` only if no
    object is there yet (a conditional write). Returns False when another process's head won.
    Until its head exists a node is invisible (readers and `extract` look for the head first);
    racers building the same node write the same bytes beside it, and a creation killed
    before its head leaves objects that the next one overwrites."""
    for key, data in objects.items():
        if key != head:
            bucket.write(key, data)
    return bucket.write(head, objects[head], only_new=True)


# -- files written whole and durable ----------------------------------------------------------
_IOV_MAX = 1024  # buffers per writev (Linux's limit)


def write_all(fd: int, buffers: list) -> None:
    """The buffers one after the other: a few `writev` calls, a short write continued where it stopped."""
    views = [memoryview(b).cast("B") for b in buffers]
    at = 0
    while at < len(views):
        done = os.writev(fd, views[at : at + _IOV_MAX])
        while at < len(views) and done >= views[at].nbytes:
            done -= views[at].nbytes
            at += 1
        if done:
            views[at] = views[at][done:]


def write_durable(path: Path, buffers: list) -> None:
    """`path` made to hold the buffers, one after the other, and fsynced before this returns."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, buffers)
        os.fsync(fd)
    finally:
        os.close(fd)
