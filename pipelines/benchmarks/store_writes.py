"""The store side of the extraction benchmarks (benchmarks/extract.py, benchmarks/extract_writer.py): the
writer, the same writer into a group without frame checksums, and raw write + fsync of the same
bytes; every token codec's size, write and read speed; the tables of both.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from advise_cache.testing import token_store
from pipelines.common import num, pct, say
from pipelines.sections import table

WRITER_TARGET_RAW, WRITER_TARGET_CRC = 0.8, 0.9
WRITER_LENGTHS = (24, 200)  # frames per video in the writer test (UCF101: mostly 70-300)
PER_SHARD = 64


@dataclass
class WriterRow:
    model: str
    frames: int
    videos: int
    shards: int
    mb: float
    threads: int
    fps: dict = field(default_factory=dict)  # new, nocrc, raw, raw1 (raw with one thread): best rounds
    rounds: int = 0
    per_round: list = field(default_factory=list)  # every round's frames/s of each


# -- the writer ------------------------------------------------------------------------------
KINDS = ("new", "nocrc", "raw", "raw1")


@dataclass
class WriterInput:
    """The tokens every writer of a round writes: videos that are prefixes of one random block."""

    key: str
    shape: tuple
    lengths: list[int]  # frames per video
    shards: list[tuple[int, int]]  # (video, shard) in writing order
    big16: object  # torch float16 (longest video, *shape)

    @property
    def total(self) -> int:
        return sum(self.lengths)


def _through_writer(w: WriterInput, path: Path, threads: int, frame_crcs: bool) -> float:
    """Frames/s of `extract_stages.Writer` writing every shard (as the extraction's model loop
    hands them over), its last frame read back and compared."""
    from advise_cache.extract import ExtractSummary
    from advise_cache.extract_stages import Shard, Writer

    arrays = token_store(path, w.key, w.shape, w.lengths, fill=False, frame_crcs=frame_crcs)
    summary = ExtractSummary(str(path), w.key, len(w.lengths))
    writer = Writer(arrays, summary, threads, release=lambda buf: None, on_done=lambda v: None)
    for v in range(len(w.lengths)):
        writer.expect(v, arrays.shards_of(v))
    t0 = time.perf_counter()
    for v, k in w.shards:
        buf = w.big16[: w.lengths[v]][k * PER_SHARD : (k + 1) * PER_SHARD]
        writer.put(Shard(v, k, len(buf), buf, len(buf)))
    writer.close()
    seconds = time.perf_counter() - t0
    if writer.error is not None:
        raise writer.error
    if summary.done != len(w.lengths) or summary.frames != w.total:
        raise RuntimeError(f"the writer stored {summary.done} of {len(w.lengths)} videos")
    last = len(w.lengths) - 1
    if not np.array_equal(arrays.read_frames(last, [w.lengths[-1] - 1])[0], w.big16[w.lengths[-1] - 1].numpy()):
        raise RuntimeError("a frame read back differs from the one written")
    return w.total / seconds


def _raw_writes(w: WriterInput, path: Path, n_threads: int) -> float:
    """Frames/s of writing the same shard bytes (and their index) with os.write + fsync."""
    from advise_cache.shards import shard_index

    path.mkdir(parents=True)
    blobs = [w.big16[: w.lengths[v]][k * PER_SHARD : (k + 1) * PER_SHARD].numpy() for v, k in w.shards]
    blobs = [(data, shard_index(len(data), PER_SHARD, data[0].nbytes)) for data in blobs]

    def put(i: int) -> None:
        fd = os.open(path / f"{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, memoryview(blobs[i][0]).cast("B"))
            os.write(fd, blobs[i][1])
            os.fsync(fd)
        finally:
            os.close(fd)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_threads) as ex:
        list(ex.map(put, range(len(blobs))))
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return w.total / (time.perf_counter() - t0)


def _writer_input(model: str, shape: tuple, frames: int, seed: int) -> WriterInput:
    import torch

    from advise_cache.extract import ifm_key

    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < frames:
        lengths.append(int(rng.integers(*WRITER_LENGTHS)))
    # Random tokens (nothing to compress, no zero to skip); every video a prefix of them.
    big = rng.standard_normal((WRITER_LENGTHS[1], *shape), dtype=np.float32)
    shards = [(v, k) for v, n in enumerate(lengths) for k in range(-(-n // PER_SHARD))]
    return WriterInput(ifm_key(model), shape, lengths, shards, torch.from_numpy(big.astype(np.float16)))


def bench_writer(
    model: str, shape: tuple, work: Path, frames: int, threads: int, repeats: int, seed: int, kinds=KINDS
) -> WriterRow:
    """The same tokens through the writer (into a group with frame checksums, and `nocrc` into
    one without) and raw writes, each round rotating their order (each takes every place in
    turn); the best round of each, and every round's."""
    w = _writer_input(model, shape, frames, seed)
    row = WriterRow(model, w.total, len(w.lengths), len(w.shards), w.total * int(np.prod(shape)) * 2 / 1e6, threads)
    base = work / "writer"
    runs = {
        "new": lambda: _through_writer(w, base / "new.zarr", threads, frame_crcs=True),
        "nocrc": lambda: _through_writer(w, base / "nocrc.zarr", threads, frame_crcs=False),
        "raw": lambda: _raw_writes(w, base / "raw", threads),
        "raw1": lambda: _raw_writes(w, base / "raw1", 1),
    }
    for rounds in range(1, repeats + 1):
        shutil.rmtree(base, ignore_errors=True)
        order = kinds[rounds % len(kinds) :] + kinds[: rounds % len(kinds)]  # each in every place in turn
        got = {k: runs[k]() for k in order}
        say(f"[writer {w.key}] round {rounds}: {', '.join(f'{k} {v:.0f}' for k, v in got.items())} frames/s")
        row.fps = {k: max(v, row.fps.get(k, 0.0)) for k, v in got.items()}
        row.per_round.append(got)
        row.rounds = rounds
    shutil.rmtree(base, ignore_errors=True)
    return row


def writer_table(rows: list[WriterRow]) -> list:
    """The writer's lines and table of the section (none without rows)."""
    if not rows:
        return []
    return [
        "",
        f"The writer alone, frames/s: random float16 tokens (videos of {WRITER_LENGTHS[0]}-"
        f"{WRITER_LENGTHS[1]} frames, {PER_SHARD}-frame shards, each durable before its video is "
        "done) through `extract_stages.Writer` (each frame with its crc32c), the same into a group "
        "without frame checksums and raw "
        "write + fsync of the shard bytes, each round rotating their order.",
        "",
        table(
            [
                "tokens",
                "videos / shards / frames",
                "MB",
                "rounds",
                f"new writer ({rows[0].threads} threads)",
                "raw write + fsync (same threads)",
                "raw, 1 thread",
                "new / raw",
                "new, MB/s",
                "with / without frame crc32c",
            ],
            [
                [
                    w.model,
                    f"{w.videos} / {w.shards} / {w.frames}",
                    f"{w.mb:.0f}",
                    w.rounds,
                    num(w.fps["new"]),
                    num(w.fps["raw"]),
                    num(w.fps["raw1"]),
                    pct(w.fps["new"] / w.fps["raw"]),
                    num(w.fps["new"] * w.mb / w.frames),
                    pct(crc_cost(w)),
                ]
                for w in rows
            ],
        ),
        "",
        f"Targets: new / raw >= {pct(WRITER_TARGET_RAW)}, with / without "
        f"frame crc32c >= {pct(WRITER_TARGET_CRC)} (the median of the per-round ratios).",
    ]


def crc_cost(w: WriterRow) -> float:
    """The writer with frame checksums over the writer without: median of the per-round ratios."""
    return statistics.median(r["new"] / r["nocrc"] for r in w.per_round)


# -- codecs ----------------------------------------------------------------------------------
def bench_codecs(model: str, tokens: list[np.ndarray], work: Path, frames: int, reads: int, seed: int) -> list[list]:
    """Write the same tokens with every codec into a store; time writing and random reads, through
    plain zarr (`tokens[row]`) and through `IFMArrays.read_frames`. Table rows."""
    import zarr

    from advise_cache.extract import ifm_key
    from advise_cache.store import CODECS, open_store

    clips, total, i = [], 0, 0
    while total < frames:  # cycle the videos: chunks are compressed one frame at a time
        clips.append(tokens[i % len(tokens)].astype(np.float16, copy=False))
        total += len(clips[-1])
        i += 1
    starts = np.cumsum([0] + [len(c) for c in clips])
    draws = np.random.default_rng(seed).integers(0, total, reads)  # uniform over frames, like a sampler
    picks = [(int(v), int(r - starts[v])) for r, v in zip(draws, np.searchsorted(starts, draws, "right") - 1)]
    raw, key, rows, base = clips[0][0].nbytes, ifm_key(model), [], {}
    for codec in CODECS:
        path = work / "codecs" / f"{key}-{codec}.zarr"
        arrays = token_store(path, key, clips[0].shape[1:], [len(c) for c in clips], fill=False, codec=codec)
        t0 = time.perf_counter()
        stored = sum(arrays.write_video(v, clip) for v, clip in enumerate(clips))
        write_s = time.perf_counter() - t0
        plain = zarr.open_array(path / "ifm" / key / "tokens", mode="r")
        rows_at = [int(arrays.offset[v]) + r for v, r in picks]
        reader = open_store(path).ifm(key)
        seconds = []
        readers = ((plain.__getitem__, rows_at), (lambda vr, reader=reader: reader.read_frames(vr[0], [vr[1]]), picks))
        for read, where in readers:
            for w in where[:8]:  # warm: open files, shard indexes
                read(w)
            t0 = time.perf_counter()
            for w in where:
                read(w)
            seconds.append(time.perf_counter() - t0)
        v, r = picks[0]
        if not np.array_equal(reader.read_frames(v, [r])[0], clips[v][r]):
            raise RuntimeError(f"codec {codec}: a frame read back differs from the one written")
        say(f"[{key}] codec {codec}: {stored / total / 1e3:.1f} kB/frame, write {write_s:.2f} s")
        base = base or {"bytes": stored, "seconds": seconds[1]}
        rows.append(
            [
                model,
                codec,
                total,
                f"{raw / 1e3:.1f}",
                f"{stored / total / 1e3:.1f}",
                f"{raw * total / stored:.2f}",
                pct(1 - stored / base["bytes"]),
                num(total * raw / write_s / 1e6),
                num(reads / seconds[0]),
                num(reads / seconds[1]),
                f"{base['seconds'] / seconds[1]:.2f}x",
            ]
        )
        shutil.rmtree(path, ignore_errors=True)
    return rows


def codec_table(rows: list[list]) -> list:
    """The codecs' lines and table of the section (none without rows)."""
    if not rows:
        return []
    return [
        "",
        "Token codecs: each model's tokens written through the store with every codec of "
        f"`store.CODECS` ({PER_SHARD}-frame shards, fsync; write MB/s of raw bytes), then random "
        "single frames read from the page cache through plain zarr and through "
        "`IFMArrays.read_frames`. Random weights: real CLIP weights may compress differently.",
        "",
        table(
            [
                "tokens",
                "codec",
                "frames",
                "raw kB/frame",
                "stored kB/frame",
                "ratio",
                "bytes saved",
                "write MB/s",
                "read frames/s, zarr `a[i]`",
                "read frames/s, `read_frames`",
                "`read_frames` vs the first codec",
            ],
            rows,
            left=2,
        ),
    ]


# -- alone: the cost of frame checksums ----------------------------------------------------------
