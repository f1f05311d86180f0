"""The bucket benchmark runs (one tiny round against moto's S3 server on 127.0.0.1), so that a
rename in the library cannot break it silently; its figures come from `make bench-bucket`, never
from a test."""

from __future__ import annotations

import sys

import pytest


@pytest.mark.slow
def test_bench_bucket_smoke(tmp_path, capsys, monkeypatch):
    from pipelines.benchmarks import bucket as bench_bucket

    assert bench_bucket.main(["--quick", "--no-write", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| raw range-GET reader (obstore) |" in out and "| `ClipLoader`, bucket, no cache (range requests) |" in out
    assert "first epoch from the bucket / raw range-GET reader:" in out
    assert "cached epoch / local raw preadv reader:" in out
    sys.modules.pop("bench_bucket", None)
