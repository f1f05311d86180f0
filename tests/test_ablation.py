"""pipelines/studies/ablation.py: the setting rules, a tiny spatial-res ablation end to end, its plan and
ETA (--dry-run), how many runs at once, the CPU-sized default, and Ctrl-C on a running study.

Run: .venv/bin/python -m pytest tests/test_ablation.py

The end-to-end test runs the real driver (PRP, both fine-tunes, evaluation, stats, report)
on the session's tiny synthetic store, with a tiny TMM and two training steps per stage:
first two settings at once in subprocesses (--jobs 2), then again (everything skipped),
then once more after a setting lost its last stage: the trainings resume as finished runs
(`train(cfg)` with `resume=True` returns their metrics) and only that evaluation runs again.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.studies import ablation_plan, ablation_report, ablation_runs

pytestmark = pytest.mark.slow  # `make test-fast` leaves this file out


def tiny(max_steps: int) -> list[str]:
    """A recipe of a few steps with a tiny TMM: the runner's plumbing, not its results."""
    flags = "--device cpu --epochs 1 --ft-epochs 1 --batch-size 8 --ft-batch-size 8 --hidden 8 --out-dim 16 --views 1"
    return [*flags.split(), "--max-steps", str(max_steps)]


@pytest.fixture(scope="module")
def ablation():
    from pipelines.studies import ablation

    return ablation


def test_spatial_settings_follow_the_grid(ablation):
    assert ablation_plan.spatial_values(14) == ([14, 9, 5, 3, 1], [])
    values, notes = ablation_plan.spatial_values(4)
    assert values == [4, 3, 2, 1]
    assert [n for n in notes if "skipped" in n] == [
        f"spatial pool {s} does not fit the 4x4 grid: skipped" for s in (14, 9, 5)
    ]
    assert ablation_plan.spatial_values(16)[0] == [16, 9, 5, 3, 1]
    assert ablation_plan.spatial_values(7)[0] == [7, 6, 5, 3, 1]
    assert ablation_plan.spatial_values(1)[0] == [1]


def test_channel_settings_keep_the_papers_factors(ablation):
    assert ablation_plan.channel_values(768) == ([768, 192, 48, 12, 3], [])
    values, notes = ablation_plan.channel_values(64)
    assert values == [64, 16, 4, 1]
    assert "channel pool 768 does not fit 64-dim tokens: skipped" in notes
    assert ablation_plan.channel_values(1024)[0] == [1024, 256, 64, 16, 4]


def test_plans_on_a_one_ifm_store(ablation, synthetic_store):
    info = ablation_plan.describe_store(synthetic_store)
    assert (info.keys, info.grids["test-vit"], info.dims["test-vit"]) == (("test-vit",), (4, 4), 64)
    args = ablation.parse_args(["spatial-res", "--seeds", "1"])
    labels = {name: [s.label for s in ablation_plan.plan(name, info, args)[0]] for name in ablation_plan.ABLATIONS}
    assert labels["spatial-res"] == ["4", "3", "2", "1"]
    assert labels["channel-dim"] == ["64", "16", "4", "1"]
    assert labels["tmm-depth"] == ["1", "2", "4", "6", "8"]
    assert labels["tmm-width"] == ["64", "256", "512", "1024", "2048"]
    assert labels["temporal"] == ["test-vit TMM", "test-vit avg-pool"]
    assert labels["ifm"] == ["test-vit"]
    assert labels["storage"] == ["float16, frame stride 1 (sampler stride 2)"]
    notes = ablation_plan.plan("ifm", info, args)[1]
    assert any("holds one IFM" in n for n in notes)
    full, pooled = ablation_plan.plan("spatial-res", info, args)[0][0::3]
    assert (full.tmm["spatial_pool"], pooled.tmm["spatial_pool"]) == (None, 1)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_spatial_ablation_runs_resumes_and_skips(ablation, synthetic_store, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["spatial-res", "--cache", str(synthetic_store), "--out", str(out), *tiny(max_steps=2), "--settings", "4,1"]
    assert ablation.main([*argv, "--jobs", "2"]) == 0
    first = capsys.readouterr().out
    assert "2 runs on 1 store(s); 0 already finished, 2 to run, 2 at a time (--jobs)" in first
    assert re.search(r"ETA: about \d+ s for 2 runs, 2 at a time", first)
    assert re.search(r"\[1/2 runs\] synthetic [41]: \d+ s; about \d+ s left", first)
    assert re.search(r"\[2/2 runs\] synthetic [41]: \d+ s; about 0 s left", first)
    assert "spatial pool 14 does not fit the 4x4 grid: skipped" in first

    folder = out / "spatial-res"
    rows = read_csv(folder / "results.csv")
    assert [r["setting"] for r in rows] == ["4", "1"]
    assert set(ablation_report.CSV_COLUMNS) <= set(rows[0])
    for r in rows:
        assert r["dataset"] == "synthetic"
        assert 0.0 <= float(r["acc_ft"]) <= 1.0 and 0.0 <= float(r["acc_scratch"]) <= 1.0
        assert float(r["delta_acc"]) == pytest.approx(float(r["acc_ft"]) - float(r["acc_scratch"]))
        assert int(r["prp_steps"]) == 2 and int(r["ft_steps"]) == 2
        assert int(r["matched_steps"]) == 4  # as many as PRP and the fine-tune together
        assert float(r["delta_matched"]) == pytest.approx(float(r["acc_ft"]) - float(r["acc_matched"]))
        assert int(r["params"]) > 0
    assert rows[0]["params"] == rows[1]["params"]  # pooling adds no weights ...
    assert int(rows[1]["macs"]) < int(rows[0]["macs"])  # ... and saves compute
    md = (folder / "results.md").read_text()
    assert "| dataset | setting | clip | params (M) | GMACs |" in md
    assert md.count("| synthetic |") == 2
    assert (folder / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = sorted(folder.glob("synthetic/*/result.json"))
    assert len(results) == 2
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.suffix in (".json", ".pt")}

    # Again: nothing to do, nothing rewritten but the report.
    assert ablation.main(argv) == 0
    again = capsys.readouterr().out
    assert "2 already finished, 0 to run" in again and "ETA" not in again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # A setting killed before its scratch evaluation (so before the protocol's and the setting's
    # results were written): only that evaluation runs again.
    setting = folder / "synthetic" / "1"
    before = json.loads((setting / "result.json").read_text())
    for name in ("result.json", "protocol.json", "scratch/eval.json"):
        (setting / name).unlink()
    assert ablation.main(argv) == 0
    assert "1 already finished, 1 to run, 1 at a time" in capsys.readouterr().out
    after = json.loads((setting / "result.json").read_text())
    keys = ("prp_acc", "prp_steps", "acc_ft", "acc_scratch", "ft_steps", "acc_matched", "matched_steps")
    assert {k: after[k] for k in keys} == {k: before[k] for k in keys}
    assert (setting / "scratch" / "eval.json").exists()
    untouched = ("prp/checkpoint.pt", "ft/checkpoint.pt", "scratch/checkpoint.pt", "ft/eval.json")
    for name in (*untouched, "scratch-matched/checkpoint.pt", "scratch-matched/eval.json"):
        assert (setting / name).stat().st_mtime_ns == stamps[setting / name]
    assert len(read_csv(folder / "results.csv")) == 2

    # Another recipe into the same folder is refused rather than mixed in.
    with pytest.raises(SystemExit, match="another recipe"):
        ablation.main([*argv[:-2], "--settings", "4", "--epochs", "2"])


def test_tiny_storage_ablation_reads_int8_and_stride_2_stores(ablation, synthetic_root, tmp_path, capsys):
    from conftest import extract_config

    from advise_cache.extract import extract_videos

    stores = []
    for dtype, stride in (("float16", 1), ("int8", 1), ("float16", 2), ("int8", 2)):
        stores.append(tmp_path / f"{dtype}-s{stride}.zarr")
        assert (
            extract_videos(extract_config(synthetic_root, stores[-1], dtype=dtype, frame_stride=stride)).exit_code == 0
        )
    bench = tmp_path / "BENCHMARKS.md"
    out = tmp_path / "runs"
    argv = ["storage", "--cache", ",".join(map(str, stores)), "--out", str(out), *tiny(max_steps=1)]
    assert ablation.main([*argv, "--vit-per-class", "0", "--benchmarks", str(bench)]) == 0
    assert "4 runs on 4 store(s)" in capsys.readouterr().out
    rows = read_csv(out / "storage" / "results.csv")
    assert [(r["setting"], r["source_stride"]) for r in rows] == [
        ("float16, frame stride 1 (sampler stride 2)", "2"),
        ("int8, frame stride 1 (sampler stride 2)", "2"),
        ("float16, frame stride 2 (sampler stride 1)", "2"),
        ("int8, frame stride 2 (sampler stride 1)", "2"),
    ]
    assert all(int(r["ft_steps"]) == 1 and 0.0 <= float(r["acc_ft"]) <= 1.0 for r in rows)
    for folder in (out / "storage" / "synthetic").iterdir():  # every stage sampled at the setting's stride
        stride = 1 if "frame-stride-2" in folder.name else 2
        for stage in ("prp", "ft", "scratch"):
            assert json.loads((folder / stage / "config.json").read_text())["config"]["sampler"]["stride"] == stride
    md = (out / "storage" / "results.md").read_text()
    assert md.count("| synthetic |") == 8  # the ablation's table and the storage table
    own = md.split("| dataset | store")[1].splitlines()[2:6]
    assert "(1.00)" in own[0] and own[0].endswith("| — | — |")  # float16 at every frame: the reference
    assert "(0.5" in own[1] and "(0.5" in own[2] and "(0.2" in own[3]  # bytes per source frame
    assert not any(ln.endswith("| — | — |") for ln in own[1::2])  # int8: the error recorded in the store
    section = bench.read_text()
    assert "<!-- ablation_storage:start -->" in section and "not real CLIP tokens" in section


def test_dry_run_prints_the_plan_and_a_measured_eta_only(ablation, synthetic_store, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["spatial-res", "--cache", str(synthetic_store), "--out", str(out), *tiny(max_steps=2), "--settings", "4,1"]
    assert ablation.main([*argv, "--jobs", "1", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "plan: spatial-res, 2 setting(s) x 1 seed(s) on each of 1 store(s) = 2 runs, 8 trainings" in text
    assert "0 already finished, 2 to run, 1 at a time (--jobs)" in text
    assert "measuring the ETA: the first steps of each training of 2 setting(s)" in text  # two models: both timed
    eta = re.search(r"ETA: about (\d+) s for 2 runs, 1 at a time \((\d+) s to (\d+) s a run", text)
    assert eta and 1 <= int(eta[2]) <= int(eta[3]) and int(eta[1]) >= int(eta[3])
    assert "Acc_ft" not in text and not out.exists()  # nothing trained, nothing written


def test_jobs_default_to_what_the_machine_runs(ablation, monkeypatch):
    import torch

    import advise_cache.runtime as runtime

    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)
    monkeypatch.setattr(runtime, "free_memory", lambda device: 64 * 2**30)
    assert ablation_runs.default_jobs("cpu") == (8, "one per usable core")
    monkeypatch.setattr(runtime, "free_memory", lambda device: 5 * 2**30)
    assert ablation_runs.default_jobs("cpu") == (2, "one per 2 GiB of available memory")
    monkeypatch.setattr(runtime, "free_memory", lambda device: 2**30)
    assert ablation_runs.default_jobs("cpu")[0] == 1
    monkeypatch.setattr(runtime, "free_memory", lambda device: None)  # unknown: the cores decide
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert ablation_runs.default_jobs("cuda") == (3, "one per GPU")
    assert ablation_runs.default_jobs("cpu") == (8, "one per usable core")


def test_time_left_scales_the_estimates_by_the_finished_runs(ablation):
    from pipelines.studies.ablation_runs import time_left

    done = [ablation_runs.Run(Path("a"), "a", estimate=10.0, seconds=20.0)]  # took twice its estimate
    waiting = [ablation_runs.Run(Path(x), x, estimate=10.0) for x in "bc"]
    assert time_left(done, [], waiting, jobs=2) == pytest.approx(20.0)
    assert time_left(done, [], [], jobs=2) == 0.0


def test_cpu_sized_default_without_a_gpu(ablation, monkeypatch, tmp_path):
    monkeypatch.setattr(ablation, "on_gpu", lambda device: False)
    args = ablation.parse_args(["spatial-res", "--out", str(tmp_path)])
    assert args.cpu_sized and args.recipe.seeds == (0,) and ablation.study_folder(args) == tmp_path / "spatial-res-cpu"
    for asked in (["--full"], ["--seeds", "3"], ["--recipe", "synthetic"], ["--cache", "x.zarr"]):
        args = ablation.parse_args(["spatial-res", "--out", str(tmp_path), *asked])
        assert not args.cpu_sized and ablation.study_folder(args) == tmp_path / "spatial-res"
        assert len(args.recipe.seeds) == 3 or asked == ["--cache", "x.zarr"]
    monkeypatch.setattr(ablation, "on_gpu", lambda device: True)
    args = ablation.parse_args(["spatial-res"])
    assert not args.cpu_sized and args.recipe.seeds == (0, 1, 2)


def group_members(pgid: int) -> list[str]:
    """`pid (name)` of every process in process group `pgid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text.rsplit(")", 1)[1].split()[2]) == pgid:
            found.append(text.split(")", 1)[0] + ")")
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes through /proc")
def test_ctrl_c_stops_the_study_and_its_workers_and_keeps_finished_runs(synthetic_store, tmp_path):
    """Ctrl-C, as a terminal sends it (SIGINT to the study's process group), while one run has
    finished (average pooling: one fine-tune of one epoch) and another is in its PRP (500
    epochs): every process ends within 10 s, exit 130, one line saying how to resume; the
    finished run is kept, and the same command again finds it finished."""
    out = tmp_path / "runs"
    flags = "--device cpu --epochs 500 --ft-epochs 1 --batch-size 8 --ft-batch-size 8 --hidden 8 --out-dim 16 --views 1"
    repo = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "-m",
        "pipelines.studies.ablation",
        "temporal",
        "--cache",
        str(synthetic_store),
        "--out",
        str(out),
        *flags.split(),
    ]
    folder = out / "temporal" / "synthetic"
    pooled, tmm = folder / "test-vit-avg-pool", folder / "test-vit-TMM"
    proc = subprocess.Popen(
        [*cmd, "--jobs", "2"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own process group with SIGINT at its default, as a terminal's foreground job: a
        # runner that starts the tests with SIGINT ignored (a background job) would pass that on,
        # and Python then never turns SIGINT into KeyboardInterrupt.
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 180
        while not ((pooled / "result.json").exists() and (tmm / "prp" / "metrics.jsonl").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        output = proc.communicate(timeout=10)[0]
        while group_members(proc.pid) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        assert group_members(proc.pid) == [] and time.monotonic() - t0 < 10
    finally:
        if group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("interrupted: 1 of 2 runs finished, kept in ") and "run the same command again" in last
    assert (pooled / "result.json").exists() and not (tmm / "result.json").exists()
    again = subprocess.run([*cmd, "--jobs", "1", "--dry-run"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "1 already finished, 1 to run" in again.stdout, again.stdout + again.stderr
