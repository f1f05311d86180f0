"""pipelines/common.py and sections.py: a benchmark's section is replaced in place among the rows of
BENCHMARKS.json, the rest left alone, and BENCHMARKS.md is their rendering; the number formats; the
entry scripts run as files and as modules."""

from __future__ import annotations

import pytest

from pipelines import common, sections


def _section(name: str, text: str) -> sections.Section:
    return sections.section(name, f"title {name}", "benchmarks.loader", ["--quick"], {"CPU": "x"}, [text])


def test_a_rerun_replaces_only_its_own_section_and_the_markdown_is_rendered_from_the_rows(tmp_path):
    md = tmp_path / "BENCH.md"
    sections.save(md, [_section("a", "first a")])
    sections.save(md, [_section("b", "only b")])
    sections.save(md, [_section("a", "second a")])
    kept = sections.load(sections.data_file(md))
    assert [(s.name, s.blocks) for s in kept] == [("a", ["second a"]), ("b", ["only b"])]  # replaced where it stood
    text = md.read_text()
    assert text == sections.render(kept)
    assert text.startswith("# Benchmarks") and "first a" not in text
    assert "Written by `python -m pipelines.benchmarks.loader --quick`" in text
    assert "## title a (pipelines/benchmarks/loader.py)" in text
    with pytest.raises(SystemExit, match="must end in .md"):
        sections.save(tmp_path / "rows.json", [_section("a", "x")])
    hand = tmp_path / "HAND.md"
    hand.write_text("# figures nobody keeps as rows\n")
    with pytest.raises(SystemExit, match="no HAND.json beside it"):
        sections.save(hand, [_section("a", "x")])
    assert hand.read_text() == "# figures nobody keeps as rows\n"  # left as it was
    sections.data_file(md).write_text("{not json")
    with pytest.raises(SystemExit, match="not a file of benchmark sections"):
        sections.save(md, [_section("b", "again")])


def test_a_body_becomes_paragraphs_and_tables_of_rows():
    body = ["one", "two", "", sections.table(["a", "b"], [[1, 2.5]]), "- note"]
    s = sections.section("x", "t", "pipelines.studies.views", None, {}, body)
    assert s.module == "studies.views"
    assert s.blocks == ["one\ntwo", {"header": ["a", "b"], "rows": [["1", "2.5"]], "left": 1}, "- note"]
    assert sections.body_markdown(body) == "one\ntwo\n\n| a | b |\n| --- | ---: |\n| 1 | 2.5 |\n\n- note"


def test_benchmarks_md_is_the_rendering_of_benchmarks_json():
    """Nobody edits BENCHMARKS.md by hand: it is what BENCHMARKS.json renders to."""
    md = common.BENCHMARKS
    assert md.read_text() == sections.render(sections.load(sections.data_file(md)))


def test_merge_takes_in_another_files_sections(tmp_path):
    gpu, here = tmp_path / "out" / "BENCHMARKS.md", tmp_path / "BENCHMARKS.md"
    gpu.parent.mkdir()
    sections.save(gpu, [_section("bench_loader_gpu", "on the GPU")])
    sections.save(here, [_section("bench_loader", "on the CPU")])
    assert sections.main(["--out", str(here), "--merge", str(sections.data_file(gpu))]) == 0
    assert [s.name for s in sections.load(sections.data_file(here))] == ["bench_loader", "bench_loader_gpu"]
    with pytest.raises(SystemExit, match="no sections"):
        sections.main(["--out", str(here), "--merge", str(tmp_path / "none.json")])


def test_formats():
    assert [common.num(x) for x in (1234.5, 12.34, 1.234, 0.1234, float("nan"))] == [
        "1,234",
        "12.3",
        "1.23",
        "0.123",
        "n/a",
    ]
    assert common.pct(0.934) == "93%"
    rss, peak = common.memory()
    assert 0 < rss <= peak


@pytest.mark.parametrize("how", ["file", "module"])
def test_an_entry_script_runs_as_a_file_and_as_a_module(how, tmp_path):
    """`python pipelines/studies/ablation.py ...` (from anywhere) and `python -m pipelines.studies.ablation ...`
    (from the checkout) both run the script."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    argv = (
        [str(repo / "pipelines" / "studies" / "ablation.py")] if how == "file" else ["-m", "pipelines.studies.ablation"]
    )
    got = subprocess.run(
        [sys.executable, *argv, "--help"],
        cwd=tmp_path if how == "file" else repo,
        capture_output=True,
        text=True,
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("usage:") and "--dry-run" in got.stdout


@pytest.mark.parametrize("how", ["file", "module"])
def test_a_section_names_its_script_as_a_module_however_it_ran(how, tmp_path):
    """The "Written by" line is the `python -m` command, whether the script ran as a file or a module."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = ["-m", "pipelines.benchmarks.extract_writer"]
    if how == "file":
        script = [str(repo / "pipelines" / "benchmarks" / "extract_writer.py")]
    flags = ["--models", "test-vit", "--frames", "16", "--repeats", "1", "--no-write"]
    got = subprocess.run(
        [sys.executable, *script, *flags], cwd=tmp_path if how == "file" else repo, capture_output=True, text=True
    )
    assert got.returncode == 0, got.stderr
    assert "## The writer with frame checksums (pipelines/benchmarks/extract_writer.py)" in got.stdout
    assert f"Written by `python -m pipelines.benchmarks.extract_writer {' '.join(flags)}`" in got.stdout
