"""Where a store's bytes go, for zarr: a local folder or a bucket prefix (storage.py).

What zarr opens for each (`zarr_store`, `open_group`), whether a store is there, whether a new
one may go there, building a node in memory to publish into a bucket (atomic.py's `publish`:
a bucket has no rename), and zarr-python's consolidated metadata. store.py uses these; with it
and ifm_arrays.py, the storage layer's modules that import zarr.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import zarr
import zarr.storage

from .atomic import building, clean_leftovers
from .errors import StoreError
from .storage import Location, StoreURL, bucket


def in_memory(build) -> dict[str, bytes]:
    """The objects `build(target)` writes, built in memory: what a bucket gets published."""
    objects: dict = {}
    build(zarr.storage.MemoryStore(objects))
    return {k: v.to_bytes() for k, v in objects.items()}


def zarr_store(path: Location, mode: str):
    """What zarr opens for a store: its folder, or an obstore-backed store on its bucket prefix."""
    if isinstance(path, StoreURL):
        return zarr.storage.ObjectStore(bucket(path).store, read_only=mode == "r")
    return path


def store_exists(path: Location) -> bool:
    """Whether there is a store (its root zarr.json) at `path`."""
    if isinstance(path, StoreURL):
        return bucket(path).exists("zarr.json")
    return (Path(path) / "zarr.json").is_file()


def check_creatable(path: Location) -> None:
    """Refuse, before probing any video, a place where a new store cannot go: a folder holding
    something else or under an unwritable parent; a bucket prefix holding objects other than
    those of a creation that was killed (the video table, published before the root zarr.json)."""
    if isinstance(path, StoreURL):
        other = sorted(k for k in bucket(path).sizes() if not k.startswith("videos/"))
        if other:
            raise StoreError(
                f"{path} holds other objects ({other[0]}, ...) and is not a store; refusing to write there"
            )
        return
    if path.exists() and any(path.iterdir()):
        raise StoreError(f"{path} exists and is not a store; refusing to write into it")
    parent = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):  # before probing every video
        raise StoreError(f"cannot create the store {path}: {parent} is not writable")


def open_group(path: Location, mode: str):
    """The group as it is on disk: never through consolidated metadata, which is for other
    readers and is stale while an IFM group is being added."""
    return zarr.open_group(zarr_store(path, mode), mode=mode, zarr_format=3, use_consolidated=False)


def consolidate(path) -> None:
    """Write consolidated metadata (zarr-python's, outside the v3 spec) into the root
    zarr.json for readers that use it (xarray). Waits out IFM groups being built beside
    their target so that none of them is recorded; those left by killed runs are removed.
    (A bucket, or a store being built in memory, has no hidden builds.)"""
    if not isinstance(path, Path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(zarr_store(path, "a"), zarr_format=3)
        return
    clean_leftovers(path / "ifm")
    for _ in range(200):
        if not building(path / "ifm")[0]:
            break
        time.sleep(0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not part of the Zarr format 3 specification"
        zarr.consolidate_metadata(zarr.storage.LocalStore(path), zarr_format=3)


def empty_group(target) -> None:
    zarr.open_group(target, mode="w", zarr_format=3)
