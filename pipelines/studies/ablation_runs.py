"""An ablation's runs (pipelines/studies/ablation.py) as worker processes: how many at once
(`default_jobs`), the ETA measured before a study starts (`measure_eta`), a progress line with
the time left after each finished run, and Ctrl-C: workers start deaf to it, so the driver
alone handles it and ends every worker within seconds (`run_all`); finished runs stay finished.

Run as a script it is one worker (the driver starts it):

    python -m pipelines.studies.ablation_runs run THREADS FOLDER       # the setting in FOLDER/setting.json
    python -m pipelines.studies.ablation_runs eta THREADS FOLDER...    # times its first steps: FOLDER/estimate.json
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.studies import ablation_setting as setting

GIB_PER_RUN = 2  # a worker's peak resident memory on the synthetic stores: 1.3 GB
STOP_GRACE_S = 3  # seconds a worker has to exit on SIGTERM before it is killed
POLL_S = 0.2


def on_gpu(device: str) -> bool:
    """Whether runs on `device` (auto, cpu, cuda[:K]) train on a GPU here."""
    import torch

    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def default_jobs(device: str) -> tuple[int, str]:
    """Runs at once where --jobs is not given, and the rule that chose it: one per GPU on a GPU,
    else one per usable core; at most one per GIB_PER_RUN GiB of available memory."""
    import torch

    from advise_cache.runtime import free_memory, usable_cores

    gpu = on_gpu(device)
    jobs, rule = (torch.cuda.device_count(), "one per GPU") if gpu else (usable_cores(), "one per usable core")
    memory = free_memory(torch.device("cpu"))
    if memory is not None and memory // (GIB_PER_RUN * 2**30) < jobs:
        jobs, rule = memory // (GIB_PER_RUN * 2**30), f"one per {GIB_PER_RUN} GiB of available memory"
    return max(1, jobs), rule


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


@dataclass
class Run:
    """One worker's task: `mode` (run or eta) on the setting in `folder` (eta: and in `more`)."""

    folder: Path
    label: str
    estimate: float = 0.0  # seconds, from measure_eta
    mode: str = "run"
    more: list[Path] = field(default_factory=list)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    start: float = 0.0
    seconds: float = 0.0


def start(run: Run, threads: int, gpu: int | None) -> None:
    """Start `run`'s worker (inside `sigint_blocked`, so that it boots deaf to Ctrl-C)."""
    env = dict(os.environ)
    if gpu is not None:  # several GPUs: a worker each
        visible = env.get("CUDA_VISIBLE_DEVICES", "").split(",")
        env["CUDA_VISIBLE_DEVICES"] = visible[gpu] if visible[0] else str(gpu)
    folders = [str(f) for f in (run.folder, *run.more)]
    repo = str(Path(__file__).resolve().parents[2])  # where `pipelines` imports from, whatever the cwd
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "pipelines.studies.ablation_runs", run.mode, str(threads), *folders]
    run.start = time.perf_counter()
    run.proc = subprocess.Popen(command, env=env)


def stop(runs: list[Run]) -> None:
    """End every worker still running: SIGTERM, then SIGKILL after STOP_GRACE_S seconds."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut this short
    try:
        live = [r.proc for r in runs if r.proc is not None and r.proc.poll() is None]
        for proc in live:
            proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def time_left(done: list[Run], running: list[Run], waiting: list[Run], jobs: int) -> float:
    """Seconds until the last run ends: the estimates of the runs not finished, scaled by how
    finished runs compared with theirs (a run without one: the finished runs' mean), shared
    among `jobs`, less what the running ones have done."""
    known = [r for r in done if r.estimate > 0]
    scale = sum(r.seconds for r in known) / sum(r.estimate for r in known) if known else 1.0
    mean = sum(r.seconds for r in done) / len(done) if done else 0.0
    now = time.perf_counter()
    left = sum(scale * r.estimate if r.estimate > 0 else mean for r in running + waiting)
    return max(0.0, (left - sum(now - r.start for r in running)) / jobs)


def run_all(runs: list[Run], jobs: int, gpus: int = 0, progress: bool = True) -> list[Run]:
    """Run `runs`, `jobs` worker processes at a time (each its own process: a broken run costs no
    other, and any can be ended); the runs that failed. Ctrl-C (KeyboardInterrupt) ends every
    worker before it propagates."""
    from advise_cache.runtime import usable_cores
    from advise_cache.video import sigint_blocked

    threads = max(1, usable_cores() // jobs)
    waiting, running, done, failed = list(runs), {}, [], []
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                slot = min(set(range(jobs)) - running.keys())
                with sigint_blocked():  # a Ctrl-C now is raised once the worker is on the books
                    start(waiting[0], threads, slot % gpus if gpus > 1 else None)
                    running[slot] = waiting.pop(0)
            time.sleep(POLL_S)
            for slot, run in list(running.items()):
                if run.proc.poll() is None:
                    continue
                run.seconds = time.perf_counter() - run.start
                done.append(running.pop(slot))
                if run.proc.returncode != 0:
                    failed.append(run)
                    why = f"exit {run.proc.returncode}; its error is above"
                    print(f"FAILED: {run.label} in {run.folder} ({why})", flush=True)
                if progress:
                    left = time_left(done, list(running.values()), waiting, jobs)
                    print(
                        f"[{len(done)}/{len(runs)} runs] {run.label}: {duration(run.seconds)}; "
                        f"about {duration(left)} left",
                        flush=True,
                    )
    finally:
        stop(list(running.values()))
    return failed


def measure_eta(folders: list[Path], jobs: int, gpus: int = 0) -> dict[Path, dict]:
    """Time the first steps of each training and one evaluation of the setting in each of `folders`
    (scratch folders, each with a setting.json), in `jobs` workers: folder -> seconds per stage
    (`protocol.estimate_protocol`) and "start", a worker's own start (process and imports).
    A folder whose measurement failed (its error printed) is left out."""
    n = min(jobs, len(folders))
    runs = [Run(folders[i], "measuring the ETA", mode="eta", more=folders[i + n :: n]) for i in range(n)]
    run_all(runs, jobs, gpus, progress=False)
    got = {}
    for run in runs:
        done = [f for f in (run.folder, *run.more) if (f / "estimate.json").exists()]
        measured = {f: json.loads((f / "estimate.json").read_text()) for f in done}
        start = max(0.0, run.seconds - sum(e["seconds"] for e in measured.values()))
        got.update({f: {**e["stages"], "start": start} for f, e in measured.items()})
    return got


def worker(mode: str, threads: int, folders: list[Path]) -> int:
    """A worker process: deaf to Ctrl-C (the driver ends it), `threads` torch threads; runs the
    setting in `folders[0]`, or times each of `folders` (those that fail print their error)."""
    from advise_cache.video import deaf_to_ctrl_c

    deaf_to_ctrl_c()
    import torch

    torch.set_num_threads(threads)
    setting.setup_logging()
    if mode == "run":
        setting.run_setting(folders[0])
        return 0
    failed = 0
    for folder in folders:
        t0 = time.perf_counter()
        try:
            stages = setting.estimate_setting(folder)
        except Exception:  # noqa: BLE001 - the others are still measured; the study shows its error again
            traceback.print_exc()
            failed = 1
            continue
        (folder / "estimate.json").write_text(json.dumps({"stages": stages, "seconds": time.perf_counter() - t0}))
    return failed


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1], int(sys.argv[2]), [Path(p) for p in sys.argv[3:]]))


def print_eta(runs: list[Run], jobs: int, partial: bool) -> None:
    """The study's ETA: the measured runs' estimates, `jobs` at a time."""
    each = sorted(r.estimate for r in runs if r.estimate > 0)
    if runs and not each:
        print("ETA: unknown (its measured run failed, the error is above)", flush=True)
    if not each:
        return
    at_once = min(jobs, len(runs))
    print(
        f"ETA: {'at least' if partial else 'about'} {duration(sum(each) / at_once)} for {len(runs)} runs, "
        f"{at_once} at a time ({duration(each[0])} to {duration(each[-1])} a run, from the first steps and an "
        f"epoch's end timed){'; unknown for those whose measured run failed' if partial else ''}",
        flush=True,
    )


def estimate_runs(args, todo: list, jobs: int, out: Path, gpus: int) -> list[Run]:
    """A Run per setting to do, with its ETA measured: the first steps of each training and one
    evaluation of each distinct model on each store (seeds share it), in scratch folders, `gpus`
    GPUs shared among `jobs` workers; each run's folder under `out`. Prints the whole study's ETA."""
    kinds = [(s.store, s.ifm, json.dumps(s.tmm, sort_keys=True), s.source_stride) for s in todo]
    probes = {k: todo[kinds.index(k)] for k in dict.fromkeys(kinds)}  # the first setting of each kind
    with tempfile.TemporaryDirectory(prefix="ablation-eta-") as scratch:
        folders = {k: Path(scratch) / str(i) for i, k in enumerate(probes)}
        for k, s in probes.items():
            setting.write_spec(folders[k], s, args)
        if probes:
            print(f"measuring the ETA: the first steps of each training of {len(probes)} setting(s)", flush=True)
        measured = measure_eta(list(folders.values()), jobs, gpus) if probes else {}
    runs = []
    for s, k in zip(todo, kinds):
        got = measured.get(folders[k], {})
        label = f"{s.dataset} {s.label}" + (f" seed {s.seed}" if s.seeds > 1 else "")
        runs.append(Run(out / s.folder, label, sum(got.values())))
    print_eta(runs, jobs, len(measured) < len(probes))
    return runs
