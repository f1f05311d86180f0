"""The extraction benchmark's CPU path, as a smoke run (the GPU mode runs the same code)."""

from __future__ import annotations

import re

import pytest


@pytest.mark.slow
def test_quick_cpu_run_reports_every_stage(tmp_path, capsys):
    from pipelines.benchmarks import extract as bench_extract

    out = tmp_path / "BENCH.md"
    assert bench_extract.main(["--device", "cpu", "--quick", "--workers", "0", "--out", str(out)]) == 0
    text = out.read_text()
    assert "<!-- bench_extract:start -->" in text and "## Extraction (pipelines/benchmarks/extract.py)" in text
    stage = next(line for line in text.splitlines() if line.startswith("| test-vit | cpu fp32"))
    cells = [c.strip() for c in stage.strip("|").split("|")]
    decode, ifm, full = (float(c.replace(",", "")) for c in cells[6:9])
    assert decode > 0 and ifm > 0 and full > 0
    writer = next(  # its second cell: videos / shards / frames
        line
        for line in text.splitlines()
        if line.startswith("| test-vit | ") and re.fullmatch(r" \d+ / \d+ / \d+ ", line.split("|")[2])
    )
    new, raw, raw1 = (float(c.strip().replace(",", "")) for c in writer.strip("|").split("|")[4:7])
    assert new > 0 and raw > 0 and raw1 > 0
    error = next(line for line in text.splitlines() if line.startswith("| test-vit | 32 |"))
    rel_l2, cos_mean = (float(c) for c in error.strip("|").split("|")[2:4])
    assert 0 < rel_l2 < 0.1 and 0.99 < cos_mean <= 1.0  # bf16 differs from fp32, slightly
    codecs = [line.split("|")[2].strip() for line in text.splitlines() if line.startswith("| test-vit | ")]
    assert codecs[-3:] == ["none", "lz4", "zstd"]
    assert capsys.readouterr().out.strip().startswith("## Extraction")


def test_the_writer_alone_compares_frame_checksums_on_and_off(tmp_path):
    from pipelines.benchmarks import extract_writer as bench_extract_writer

    out = tmp_path / "BENCH.md"
    argv = ["--models", "test-vit", "--frames", "48", "--repeats", "2", "--out", str(out)]
    assert bench_extract_writer.main(argv) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| test-vit | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    with_crc, without = float(cells[4].replace(",", "")), float(cells[5].replace(",", ""))
    assert with_crc > 0 and without > 0 and cells[6].endswith("%")
