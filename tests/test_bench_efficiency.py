"""The efficiency benchmark (the paper's Table 6) as a smoke run: one timed iteration of a tiny
batch per configuration, so that a rename in the library cannot break it silently. Its figures
come from `make bench-efficiency`, never from a test."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow  # `make test-fast` leaves this file out

TINY = [
    "--batch-size",
    "1",
    "--frames",
    "2",
    "--warmup",
    "0",
    "--iters",
    "1",
    "--max-iters",
    "1",
    "--min-time",
    "0",
    "--rounds",
    "1",
    "--threads",
    "1",
]


@pytest.fixture()
def bench(monkeypatch):
    from pipelines.benchmarks import efficiency as bench_efficiency

    return bench_efficiency


def test_cached_config_runs_in_fresh_processes(bench, capsys):
    """The whole script: a store of random tokens, a timing and a memory process, the table."""
    assert bench.main(["--configs", "cached-B16", *TINY, "--no-write"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| AdViSe from the cache | ViT-B-16 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "3.29" and cells[3] == "0.87"  # params (M); GMACs of the TMM on a 2-frame clip
    assert float(cells[5]) > 0


@pytest.mark.parametrize("config", ["online-B16", "r3d50"])
def test_other_configs_measure(bench, config):
    """The online and end-to-end configurations, in this process (no store)."""
    spec = {
        "config": config,
        "device": "cpu",
        "batch_size": 1,
        "frames": 2,
        "warmup": 0,
        "iters": 1,
        "max_iters": 1,
        "min_time": 0.0,
        "threads": 1,
        "seed": 0,
        "store": None,
    }
    row = bench.measure(spec)
    assert row["seconds"] > 0 and row["params"] > 0 and row["macs_model"] > 0
    assert (row["macs_ifm"] > 0) == config.startswith("online")
