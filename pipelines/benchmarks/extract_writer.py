"""The writer with and without frame checksums, alone: its own BENCHMARKS.md section (the
measurements are pipelines/benchmarks/store_writes.py's, which benchmarks/extract.py runs too).

    .venv/bin/python -m pipelines.benchmarks.extract_writer       # make bench-writer
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

if not __package__:  # run as `python pipelines/NAME.py`: import the checkout's packages, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from pipelines.benchmarks.store_writes import (
    PER_SHARD,
    WRITER_LENGTHS,
    WRITER_TARGET_CRC,
    WriterRow,
    bench_writer,
    crc_cost,
)
from pipelines.common import describe_machine, filesystem, num, parser, pct
from pipelines.sections import Section, publish, section, table

SHAPES = {"test-vit": (4, 4, 64), "ViT-B-16": (14, 14, 768)}  # (h, w, D) of the stored tokens


def checks_section(rows: list[WriterRow], facts: dict, argv) -> Section:
    lines = [
        f"Random float16 tokens (videos of {WRITER_LENGTHS[0]}-{WRITER_LENGTHS[1]} frames, {PER_SHARD}-frame "
        f"shards, fsync, {rows[0].threads} threads) through `extract_stages.Writer` into a group whose frames "
        "carry their crc32c (format 3) and into one without (as before format 3), and as raw write + fsync "
        "of the same shard bytes; each round rotates their order; frames/s, best round of each.",
        "",
        table(
            ["tokens", "frames", "MB", "rounds", "with crc32c", "without", "with / without (median)", "raw"],
            [
                [
                    w.model,
                    w.frames,
                    f"{w.mb:.0f}",
                    w.rounds,
                    num(w.fps["new"]),
                    num(w.fps["nocrc"]),
                    pct(crc_cost(w)),
                    num(w.fps["raw"]),
                ]
                for w in rows
            ],
        ),
        "",
        f"Target: with / without >= {pct(WRITER_TARGET_CRC)}, the median of the per-round ratios.",
    ]
    return section("bench_extract_writer", "The writer with frame checksums", __name__, argv, facts, lines)


def main(argv=None) -> int:
    import tempfile

    p = parser(__doc__)
    p.add_argument("--models", default="test-vit,ViT-B-16", help=f"token shapes of: {', '.join(SHAPES)}")
    p.add_argument("--frames", type=int, default=1536, help="frames written per variant and round")
    p.add_argument("--writers", type=int, default=4, help="writer threads")
    p.add_argument("--repeats", type=int, default=5, help="rounds")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_writer-"))
    facts = describe_machine("cpu", packages=("zarr",))
    facts["store folder"] = f"{work} ({filesystem(work)})"
    try:
        rows = [
            bench_writer(
                m, SHAPES[m], work, args.frames, args.writers, args.repeats, args.seed, ("new", "nocrc", "raw")
            )
            for m in args.models.split(",")
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return publish(checks_section(rows, facts, argv), args)


if __name__ == "__main__":
    raise SystemExit(main())
