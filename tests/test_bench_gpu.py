"""`make bench-gpu`'s driver on the CPU: the pre-flight and a quick part, results under $OUT."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_preflight_and_a_quick_part_write_under_out(tmp_path, monkeypatch):
    from pipelines.benchmarks import gpu as bench_gpu

    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert bench_gpu.main(["extract", "--device", "cpu", "--quick"]) == 0
    out = tmp_path / "out"
    text = (out / "BENCHMARKS.md").read_text()
    assert "<!-- bench_gpu_extract:start -->" in text and "<!-- bench_extract:start -->" in text
    assert "| direct shard reader and writer | on |" in text
    kept = {s["name"]: s for s in json.loads((out / "BENCHMARKS.json").read_text())["sections"]}
    assert list(kept) == ["bench_extract", "bench_gpu_extract"]  # each part's section, then the pre-flight's
    summary = kept["bench_gpu_extract"]["settings"]["figures"]
    assert summary["preflight"]["direct"] is True
    assert summary["preflight"]["direct_run"]["cpu"] < 1e-2  # float16 storage of the same forward
    assert [(p["script"], p["exit"]) for p in summary["parts"]] == [("extract", 0)]
    assert kept["bench_extract"]["settings"]["quick"] is True


def test_preflight_says_when_the_direct_shard_io_is_off(tmp_path, monkeypatch):
    from advise_cache import ifm_arrays
    from pipelines.benchmarks import gpu as bench_gpu

    monkeypatch.setattr(ifm_arrays, "token_layout", lambda array: (False, True))
    ok, why = bench_gpu.direct_io(tmp_path)
    assert not ok and why.startswith("off")


@pytest.mark.slow
def test_info_says_when_the_direct_shard_io_is_off(synthetic_store, monkeypatch):
    from advise_cache import ifm_arrays
    from advise_cache.store import open_store
    from advise_cache.summary import summarize, summary_lines

    on = summarize(open_store(synthetic_store))
    assert on["ifms"]["test-vit"]["direct_shard_io"] is True
    assert not any("direct shard reader" in line for line in summary_lines(on))
    monkeypatch.setattr(ifm_arrays, "token_layout", lambda array: (False, True))
    off = summarize(open_store(synthetic_store))
    assert off["ifms"]["test-vit"]["direct_shard_io"] is False
    assert any("direct shard reader and writer: not in use" in line for line in summary_lines(off))
