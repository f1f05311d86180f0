"""pipelines/common.py: a benchmark's section of BENCHMARKS.md is replaced in place, the rest
of the file left alone; a child process answers with one line."""

from __future__ import annotations

import pytest

from pipelines import common


def test_write_section_replaces_only_its_own_block(tmp_path):
    md = tmp_path / "BENCH.md"
    common.write_section(md, "a", "first a")
    common.write_section(md, "b", "only b")
    common.write_section(md, "a", "second a")
    text = md.read_text()
    assert text.startswith("# Benchmarks")
    assert "second a" in text and "first a" not in text and "only b" in text
    assert text.index("<!-- a:start -->") < text.index("<!-- b:start -->")  # replaced where it stood
    md.write_text(text.replace("<!-- b:end -->", ""))
    with pytest.raises(SystemExit, match="markers are damaged"):
        common.write_section(md, "b", "again")


def test_formats():
    assert [common.num(x) for x in (1234.5, 12.34, 1.234, 0.1234, float("nan"))] == [
        "1,234",
        "12.3",
        "1.23",
        "0.123",
        "n/a",
    ]
    assert common.pct(0.934) == "93%"
    assert common.table(["a", "b"], [[1, 2]]) == ["| a | b |", "| --- | ---: |", "| 1 | 2 |"]
    rss, peak = common.memory()
    assert 0 < rss <= peak


@pytest.mark.parametrize("how", ["file", "module"])
def test_an_entry_script_runs_as_a_file_and_as_a_module(how, tmp_path):
    """`python pipelines/ablation.py ...` (from anywhere) and `python -m pipelines.ablation ...`
    (from the checkout) both run the script."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    argv = [str(repo / "pipelines" / "ablation.py")] if how == "file" else ["-m", "pipelines.ablation"]
    got = subprocess.run(
        [sys.executable, *argv, "--help"],
        cwd=tmp_path if how == "file" else repo,
        capture_output=True,
        text=True,
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("usage:") and "--dry-run" in got.stdout
