"""What the benchmark scripts share: machine facts and their sections of BENCHMARKS.md.

Each script owns the text between `<!-- NAME:start -->` and `<!-- NAME:end -->`;
`write_section` replaces only that, so the scripts can run in any order.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

HEADER = (
    "# Benchmarks\n\n"
    "Measured numbers. Each section is written by the script named in its heading, between\n"
    "its own `<!-- NAME:start -->` and `<!-- NAME:end -->` markers; rerunning a script\n"
    "replaces its section and leaves the rest of this file alone.\n"
)


def read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    text = read_lines("/proc/loadavg")
    return " ".join(text[0].split()[:3]) if text else "unknown"


def say(message: str) -> None:
    """Progress for the person running a benchmark (stderr; stdout holds the report)."""
    print(message, file=sys.stderr, flush=True)


def load_1min() -> str:
    lines = read_lines("/proc/loadavg")
    return lines[0].split()[0] if lines else "unknown"


def describe_machine(device: str, packages=("zarr", "decord", "open_clip_torch")) -> dict[str, str]:
    """The machine rows of a section: date, CPU and RAM, GPU, software, load at the start."""
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in read_lines("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor() or "unknown CPU")
    mem = next((int(ln.split()[1]) for ln in read_lines("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "none used"
    versions = ", ".join(f"{p} {package_version(p)}" for p in packages)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{cpu}, {os.cpu_count()} cores ({usable} usable), {mem / 2**20:.0f} GiB RAM",
        "GPU": gpu,
        "software": f"Python {platform.python_version()}, torch {torch.__version__} "
                    f"({torch.get_num_threads()} threads), {versions}",
        "load average (1 min) at start": load_1min(),
    }


def write_section(path: Path, name: str, section: str) -> None:
    """Replace the text between NAME's markers (or append them); leave the rest alone."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{section.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    if start in text and end in text and text.index(start) < text.index(end):
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    elif start in text or end in text:
        raise SystemExit(f"{path}: the {name} markers are damaged; mend them by hand")
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
