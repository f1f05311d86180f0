"""The loader benchmark runs (one tiny round of the readers, two training steps of each mode), so
that a rename in the library cannot break it silently; its figures come from `make bench-loader`,
never from a test."""

from __future__ import annotations

import sys

import pytest


@pytest.mark.slow
def test_bench_loader_smoke(tmp_path, capsys, monkeypatch):
    from pipelines.benchmarks import loader as bench_loader

    assert bench_loader.main(["--quick", "--no-write", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| ceiling: minimal preadv reader |" in out and "| `ClipLoader` (this commit), every frame checked |" in out
    assert (
        "| `ClipLoader`, frame crc32c checks off |" in out
        and "| the same, each frame's crc32c read and checked |" in out
    )
    assert "loader / ceiling:" in out and "the same loader not checking:" in out
    assert "| `train.train` from the store |" in out and "| `train_step` on a batch in memory | " in out
    assert "from the store / in memory:" in out
    # issue 21: the same readers over a store with views, each clip reading its drawn view
    assert "Loader with views in the store" in out and "views [0, 1, 2]" in out
    assert "loader / minimal reader of the same frames, both checking each frame's crc32c:" in out
    sys.modules.pop("bench_loader", None)
