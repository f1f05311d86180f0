"""What the scripts under pipelines/ share: flags, machine facts, a memory probe, number formats,
a measurement in a fresh process, and the synthetic stores of the demo and the ablations. Their
results go to BENCHMARKS.md through sections.py."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "BENCHMARKS.md"
RESULT = "BENCH_RESULT "  # prefix of the one stdout line a child process answers with


def say(message: str) -> None:
    """Progress for the person running a benchmark (stderr; stdout holds the report)."""
    print(message, file=sys.stderr, flush=True)


def quiet() -> None:
    """Random weights only: never wait on a hub; open_clip's warnings about them are known."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")


def parser(doc: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes; a script adds its own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:K (a section of the GPU's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=BENCHMARKS, help="the markdown file to render (its rows: the .json beside it)"
    )
    p.add_argument("--no-write", action="store_true", help="print the section only")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def fill_in(args: argparse.Namespace, defaults: dict) -> None:
    """Each of `defaults` where its flag was not given."""
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def parse_sized(p: argparse.ArgumentParser, argv, sizes: dict[str, dict], quick: str) -> argparse.Namespace:
    """`argv` parsed with an int flag per size (`--videos` for "videos") and --quick (`quick` says
    what it runs). A size not given comes from sizes["quick"] with --quick, else from
    sizes["cuda"] on a CUDA device where there is one, else from sizes["cpu"]."""
    for key in sizes["cpu"]:
        defaults = ", ".join(f"{kind} {size[key]}" for kind, size in sizes.items())
        p.add_argument("--" + key.replace("_", "-"), type=int, help=f"default: {defaults}")
    p.add_argument("--quick", action="store_true", help=quick)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda") and "cuda" in sizes
    fill_in(args, sizes["quick" if args.quick else "cuda" if cuda else "cpu"])
    return args


def clock(device) -> float:
    """perf_counter, once a CUDA `device` has finished the work queued on it."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
    return time.perf_counter()


# -- the machine -----------------------------------------------------------------------------
def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def load_1min() -> str:
    lines = _lines("/proc/loadavg")
    return lines[0].split()[0] if lines else "unknown"


def git_stamp() -> str:
    """The commit measured, and whether the library had uncommitted changes."""
    # no optional locks: never refresh the index under other people's git commands
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    try:
        head, dirty = (
            subprocess.run([*git, *a], capture_output=True, text=True, check=True).stdout.strip()
            for a in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "advise_cache"])
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes in advise_cache/" if dirty else "")


def describe_machine(device: str, packages=("zarr", "decord", "open_clip_torch")) -> dict[str, str]:
    """The machine rows of a section: date, CPU and RAM, GPU, software, code, load at the start."""
    import torch

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in _lines("/proc/cpuinfo") if ln.startswith("model name")),
        platform.processor() or "unknown CPU",
    )
    mem = next((int(ln.split()[1]) for ln in _lines("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "none used"
    versions = ", ".join(f"{p} {_version(p)}" for p in packages)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{cpu}, {os.cpu_count()} cores ({usable} usable), {mem / 2**20:.0f} GiB RAM",
        "GPU": gpu,
        "software": f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {versions}",
        "code": git_stamp(),
        "load average (1 min) at start": load_1min(),
    }


def memory() -> tuple[int, int]:
    """(resident, peak resident) bytes of this process, from /proc (VmRSS, VmHWM)."""
    got = {
        ln.split(":")[0]: int(ln.split()[1]) * 1024
        for ln in _lines("/proc/self/status")
        if ln.startswith(("VmRSS:", "VmHWM:"))
    }
    if "VmHWM" not in got:  # no /proc: getrusage's peak (KiB on Linux, bytes on macOS)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        got["VmHWM"] = peak if sys.platform == "darwin" else peak * 1024
    return got.get("VmRSS", 0), got["VmHWM"]


def filesystem(path: Path) -> str:
    """The type of the filesystem that holds `path` (its longest mount point in /proc/mounts)."""
    best, kind = "", "unknown filesystem"
    for parts in (ln.split() for ln in _lines("/proc/mounts")):
        if len(parts) > 2 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


# -- numbers and tables ----------------------------------------------------------------------
def num(x: float | None) -> str:
    """A rate or a time with the digits that matter: 1,234 / 12.3 / 1.23 / 0.123."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"


def pct(x: float | None) -> str:
    return f"{100 * x:.0f}%" if x is not None and math.isfinite(x) else "n/a"


def mean_sd(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value) of the values that are numbers;
    (None, None) where none is."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0


def pm(mean: float | None, sd: float | None = None, signed: bool = False, scale: float = 100) -> str:
    """An accuracy as tables show it: `scale * mean` to one decimal, `± scale * sd` where `sd` is
    given, "—" where there is no mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = f"{scale * mean:+.1f}" if signed else f"{scale * mean:.1f}"
    return text if sd is None else f"{text} ± {scale * sd:.1f}"


# -- one measurement per fresh process --------------------------------------------------------
def module_of(name: str) -> str:
    """The dotted module ("pipelines.benchmarks.loader") of a script's `__name__`, also where it
    runs as `__main__`, with -m or as a file."""
    if name != "__main__":
        return name
    main = sys.modules["__main__"]
    if main.__spec__ is not None:
        return main.__spec__.name
    return ".".join(Path(main.__file__).resolve().relative_to(REPO).with_suffix("").parts)


def run_child(module: str, spec: dict, env: dict | None = None) -> dict:
    """Run `python -m module --child SPEC` in a fresh interpreter (its own peak memory, nothing
    shared) and return the dict its `child_main` printed."""
    argv = [sys.executable, "-m", module, "--child", json.dumps(spec)]
    env = {**os.environ, **(env or {})}
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode or not lines:
        raise SystemExit(f"{module}: the child process failed (exit {proc.returncode}) on {spec}")
    return json.loads(lines[-1][len(RESULT) :])


def child_main(measure, spec: dict) -> int:
    """The child's side: quiet logging, no hub, one measurement, one answer line."""
    quiet()
    print(RESULT + json.dumps(measure(spec)), flush=True)
    return 0


# -- the synthetic stores of the demo and the ablations --------------------------------------
# Videos per class (train, test). The motion family gets more test videos: its effects are
# the ones the tests and the ablation rely on, and 12 per class make one video 2.1 points.
SYNTHETIC = {"appearance": (12, 6), "temporal": (12, 6), "motion": (12, 12)}


def extract_cpu(root: Path, out: Path, dataset: str, **fields) -> Path:
    """`root`'s videos into the store `out` on the CPU, decoded in line, no progress bar; `fields`
    are the rest of the ExtractConfig. A video that fails stops the script."""
    from advise_cache.configs import ExtractConfig
    from advise_cache.extract import extract_videos

    cfg = ExtractConfig(dataset=dataset, root=root, out=out, device="cpu", workers=0, progress=False, **fields)
    if failed := extract_videos(cfg).failed:
        raise SystemExit(f"extracting {out} failed for {len(failed)} videos: {failed[0]}")
    return out


def synthetic_store(videos: Path, out: Path, family: str, data_seed: int = 0, **fields) -> Path:
    """The synthetic `family`'s videos (drawn with `data_seed`, SYNTHETIC's sizes) generated into
    `videos`, then extracted into `out` as `extract_cpu` does."""
    from advise_cache.synthetic import generate_synthetic

    train_n, test_n = SYNTHETIC[family]
    generate_synthetic(videos, family, data_seed, train_per_class=train_n, test_per_class=test_n)
    return extract_cpu(videos, out, f"synthetic-{family}", **fields)
