"""The arrays of an image-model group (`ifm/<key>/`) as Zarr holds them: how a group is laid
out when made, and how a reader tells the layouts of older groups apart.

A group of store format 3 (docs/STORE.md)::

    tokens   (F, h, w, D)  sharded: one frame a chunk, each chunk ends in its crc32c; a video's
                           stored views (attrs `views`, views.py) one after the other in its slot
    offset, frames (V,)    int64, one chunk
    status   (V,) int8     one chunk per video, as is every per-video array below
    checksum (V,) int64    crc32c of the video's frame crc32c values
    reason_utf8 (V, REASON_BYTES) uint8   why a video failed: UTF-8, zero-padded
    quant_rel_l2, quant_cos (V,) float32  int8 groups only

Groups made before format 3 are read and resumed as they are: their chunks carry no crc32c
(`token_layout` says so) and their reasons are a zarr-python string array `reason`. Every
array here is a core Zarr v3 type, so tensorstore and other readers open each of them.
"""

from __future__ import annotations

import json

import google_crc32c
import numpy as np

PENDING, DONE, FAILED = 0, 1, 2  # a video's `status`
NO_CHECKSUM = -1  # `checksum` of a video not (yet) written, or of a group made before checksums
TOKEN_DTYPES = ("float16", "float32", "int8")  # int8: quant.py's packing, one scale per token
CODEC_NAMES = ("none", "lz4", "zstd")  # of the token shards: store.CODECS builds each
DEFAULT_CODEC = "none"
QUANT_ERROR_ARRAYS = ("quant_rel_l2", "quant_cos")  # per video, int8 groups only
# A failure's reason: its UTF-8 bytes, zero-padded. Fixed width, so each video's row is its own
# chunk, written by the process that owns the video alone (a bytes + offsets column is not).
REASON_BYTES = 512


def create_arrays(g, slots: tuple, row_shape: tuple[int, int, int], dtype: str, per: int, compressors: list) -> None:
    """Make a new group's arrays in the Zarr group `g`: the token rows, each of `row_shape`
    (h, w, row), in shards of `per`, each chunk through `compressors` (the last one zarr's crc32c
    codec); the videos' slots (`slots`: offset, frames and total rows, from `slot_offsets`); the
    per-video arrays, every video pending."""
    offset, frames, total = slots
    h, w, row = row_shape
    g.create_array(
        "tokens",
        shape=(total, h, w, row),
        dtype=dtype,
        chunks=(1, h, w, row),
        shards=(per, h, w, row),
        compressors=compressors,
        fill_value=0,
        dimension_names=("row", "y", "x", "channel"),
    )
    n = len(frames)
    for name, values in (("offset", offset), ("frames", frames)):
        a = g.create_array(
            name, shape=(n,), chunks=(max(n, 1),), dtype="int64", fill_value=0, dimension_names=("video",)
        )
        if n:
            a[:] = values
    per_video = [("status", "int8", PENDING), ("checksum", "int64", NO_CHECKSUM)]
    if dtype == "int8":  # measured at extraction against the float tokens (NaN: not yet)
        per_video += [(name, "float32", float("nan")) for name in QUANT_ERROR_ARRAYS]
    for name, kind, fill in per_video:
        g.create_array(name, shape=(n,), chunks=(1,), dtype=kind, fill_value=fill, dimension_names=("video",))
    g.create_array(
        "reason_utf8",
        shape=(n, REASON_BYTES),
        chunks=(1, REASON_BYTES),
        dtype="uint8",
        fill_value=0,
        dimension_names=("video", "reason_byte"),
        attributes={"encoding": "utf-8", "padding": "zero bytes after the text"},
    )


def encode_reason(reason: str) -> np.ndarray:
    """A reason as its row of `reason_utf8`: cut to REASON_BYTES at a character boundary."""
    data = reason.encode("utf-8")[:REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")
    row = np.zeros(REASON_BYTES, np.uint8)
    row[: len(data)] = np.frombuffer(data, np.uint8)
    return row


def decode_reasons(rows: np.ndarray) -> np.ndarray:
    """Rows of `reason_utf8` as numpy strings ("" for a video that did not fail)."""
    text = [bytes(r).rstrip(b"\0").decode("utf-8", "replace") for r in rows]
    return np.array(text, dtype=np.dtypes.StringDType())


def token_layout(array) -> tuple[bool, bool]:
    """(direct, frame_crcs) of a token array. direct: sharded, uncompressed, little-endian, the
    index at the end (each chunk followed by its crc32c or not): the layout shards.py reads and
    writes itself. frame_crcs: each chunk ends in zarr's crc32c codec (format 3), whatever the
    codecs before it."""
    codecs = array.metadata.to_dict()["codecs"]
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        return False, False
    c = json.loads(json.dumps(codecs[0]["configuration"], default=str))
    plain, crc = [{"name": "bytes", "configuration": {"endian": "little"}}], [{"name": "crc32c"}]
    frame_crcs = c["codecs"][-1:] == crc
    inner = c["codecs"][:-1] if frame_crcs else c["codecs"]
    # one-byte values (int8) have no byte order: zarr writes their bytes codec without one
    single = array.dtype.itemsize == 1 and inner == [{"name": "bytes"}]
    direct = (inner == plain or single) and c["index_codecs"] == plain + crc and c["index_location"] == "end"
    return direct, frame_crcs


def slot_offsets(frames: np.ndarray, per: int, views: int = 1) -> tuple[np.ndarray, int]:
    """Where each video's rows start when every video starts on a shard boundary, and the
    rows of all slots together. With `views` stored views a video's slot holds one view slot
    after the other, each of whole shards (`view_stride`)."""
    slots = view_stride(frames, per) * views
    return np.cumsum(slots) - slots, int(slots.sum())


def view_stride(frames: np.ndarray, per: int) -> np.ndarray:
    """Rows from one view of a video to its next: its frames rounded up to whole shards."""
    return -(-np.asarray(frames, np.int64) // per) * per


def video_checksum(parts: list) -> int:
    """A video's checksum: the crc32c of a sequence of crc32c values (little-endian uint32, in
    order), each part holding those of one shard. With frame checksums (format 3) they are the
    frames' (each over a frame's token bytes as stored: little-endian, uncompressed); before,
    one a shard, over its token bytes."""
    values = np.concatenate([np.atleast_1d(np.asarray(p, np.int64)) for p in parts]).astype("<u4")
    return google_crc32c.value(values.tobytes())
