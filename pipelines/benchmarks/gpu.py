"""Every GPU figure in two short commands (`make bench-gpu`), each opened by a ~20-second pre-flight,
so that a lent GPU spends its minutes measuring and a broken set-up is seen before them.

    python3 -m pipelines.benchmarks.gpu extract --device cuda   # pre-flight, then extraction (< 5 min)
    python3 -m pipelines.benchmarks.gpu train --device cuda     # pre-flight, loader + training, Table 6 (< 5 min)
    .venv/bin/python -m pipelines.benchmarks.gpu extract --device cpu   # the same on the CPU, smaller sizes
    .venv/bin/python -m pipelines.benchmarks.gpu preflight --device cpu --quick   # the smoke test

The pre-flight: CUDA visible (the GPUs' names), the versions of torch, zarr, numcodecs, av, decord
and torchcodec, whether the direct shard reader and writer are in use on a fresh store (a zarr that
writes its sharding metadata otherwise turns them off: 20-50x slower, silently until now), and a
one-batch extraction on cuda:0 and, with two GPUs, on cuda:1 too, their tokens compared with each
other and with the model run directly. With $OUT set (the device machine's result folder), every
section goes into $OUT/BENCHMARKS.json (rendered to $OUT/BENCHMARKS.md); else into BENCHMARKS.json
here. `python -m pipelines.sections --merge OUT/BENCHMARKS.json` takes a GPU session's sections in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

if not __package__:  # run as `python pipelines/NAME.py`: import the checkout's packages, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from pipelines.common import BENCHMARKS, REPO, describe_machine, parser, quiet, say
from pipelines.sections import publish, section, table

# Sizes per part and device kind: each command stays under 5 minutes, its pre-flight included.
PARTS = {
    "extract": {
        "cuda": [["extract", "--models", "ViT-B-16", "--frames", "4096", "--repeats", "2"]],
        "cpu": [["extract", "--models", "test-vit", "--frames", "512", "--repeats", "1", "--codec-frames", "0"]],
        "quick": [["extract", "--quick", "--workers", "0", "--writer-frames", "0"]],
    },
    "train": {
        "cuda": [
            ["loader", "--rounds", "3", "--clips", "4096", "--steps", "100", "--warmup", "10"],
            ["efficiency", "--batch-size", "32", "--min-time", "3", "--rounds", "1"],
        ],
        "cpu": [
            [
                "loader",
                "--videos",
                "32",
                "--clips",
                "512",
                "--rounds",
                "2",
                "--train-rounds",
                "1",
            ],
            ["efficiency", "--configs", "cached-B16", "--batch-size", "2", "--min-time", "1", "--rounds", "1"],
        ],
        "quick": [["loader", "--quick"]],
    },
}


def versions() -> dict[str, str]:
    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for package in ("zarr", "numcodecs", "av", "decord", "torchcodec"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def direct_io(work: Path) -> tuple[bool, str]:
    """Whether a fresh store's token shards are read and written directly (`ShardReader`, and the
    writer's own files checked against what zarr reads back)."""
    from advise_cache.store import create_store, open_store
    from advise_cache.testing import video_table

    create_store(work / "direct.zarr", "t", "r", ["a"], video_table([6], ["v"]))
    info = {"model": "m", "pretrained": "none", "weights_sha256": "0", "input_size": 8, "grid": [2, 2], "dim": 4}
    a = open_store(work / "direct.zarr", mode="a").add_ifm(
        "k", {**info, "normalisation": "n", "precision": "fp32"}, 1, 4
    )
    tokens = np.arange(6 * 16, dtype=np.float16).reshape(6, 2, 2, 4)
    a.claim([0])
    a.write_video(0, tokens)
    back = open_store(work / "direct.zarr").ifm("k")
    same = np.array_equal(back.tokens[0:6], tokens)
    if back.shard_reader() is None:
        return False, "off: zarr's own path (20-50x slower); the token array's metadata is not the layout expected"
    return same, "on" if same else "on, but zarr reads back other bytes than were written"


def one_batch(device: str, work: Path, tag: str) -> tuple[np.ndarray, float]:
    """Tokens of a one-batch extraction (16 frames, test-vit) on `device`, as stored, and their
    largest difference from the model run directly on the same crops there."""
    from advise_cache.configs import ExtractConfig
    from advise_cache.extract import extract_videos
    from advise_cache.store import open_store
    from advise_cache.testing import write_video

    root = work / "videos"
    if not root.exists():
        write_video(root / "a" / "v.mp4", 16, size=(120, 160))
    cfg = ExtractConfig(
        dataset="folder", root=root, out=work / f"{tag}.zarr", model="test-vit", pretrained="none", workers=0,
        device=device, batch_size=16, progress=False,
    )  # fmt: skip
    summary = extract_videos(cfg)
    if summary.failed:
        raise SystemExit(f"pre-flight: the one-batch extraction on {device} failed: {summary.failed}")
    from advise_cache.ifm import create_ifm
    from advise_cache.video import decode_frames

    stored = open_store(cfg.out).ifm("test-vit").read_video(0).astype(np.float32)
    ifm = create_ifm("test-vit", "none", device)
    direct = ifm.encode(decode_frames(root / "a" / "v.mp4", ifm.spec)).float().cpu().numpy()
    return stored, float(np.abs(stored - direct).max())


def preflight(device: str) -> dict:
    import torch

    t0 = time.perf_counter()
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("pre-flight: --device cuda, but torch sees no CUDA device here")
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    work = Path(tempfile.mkdtemp(prefix="bench_gpu-"))
    try:
        ok, direct = direct_io(work)
        devices = [f"cuda:{i}" for i in range(min(2, len(gpus)))] if cuda else ["cpu"]
        runs = {d: one_batch(d, work, d.replace(":", "")) for d in devices}
        first = runs[devices[0]][0]
        compared = {d: float(np.abs(t - first).max()) for d, (t, _) in runs.items()}
        direct_run = {d: e for d, (_, e) in runs.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    facts = {
        "CUDA": ", ".join(gpus) if gpus else "not used (--device cpu)",
        **versions(),
        "direct shard reader and writer": direct,
        "one-batch extraction vs the model run directly": ", ".join(f"{d}: {v:.3g}" for d, v in direct_run.items()),
        "one-batch extraction vs " + devices[0]: ", ".join(f"{d}: {v:.3g}" for d, v in compared.items()),
        "seconds": f"{time.perf_counter() - t0:.1f}",
    }
    for key, value in facts.items():
        say(f"pre-flight  {key}: {value}")
    if not ok:
        say("pre-flight WARNING: the direct shard reader/writer is off: every store figure will be zarr's path")
    if any(v > 0.05 for v in [*compared.values(), *direct_run.values()]):
        say("pre-flight WARNING: tokens differ by more than 0.05 between devices or from the model run directly")
    return {"facts": facts, "direct": ok, "compared": compared, "direct_run": direct_run}


def run_part(part: str, args, out: Path) -> list[dict]:
    """Each benchmark of `part` in a process of its own (its own memory; one that fails does not
    stop the next), writing its section into `out`'s rows."""
    kind = "quick" if args.quick else ("cuda" if args.device.startswith("cuda") else "cpu")
    done = []
    for script, *flags in PARTS[part][kind]:
        t0 = time.perf_counter()
        argv = [*flags, "--device", args.device, "--out", str(out)]
        if script == "loader":
            argv += ["--work", str(Path(tempfile.gettempdir()) / "bench_gpu_loader")]
        say(f"== {script} {' '.join(argv)}")
        code = subprocess.run([sys.executable, "-m", f"pipelines.benchmarks.{script}", *argv], cwd=REPO).returncode
        if code:
            say(f"== {script} FAILED (exit {code}); going on with the rest")
        done.append({"script": script, "argv": argv, "exit": code, "seconds": round(time.perf_counter() - t0, 1)})
    return done


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("part", choices=["preflight", *PARTS], help="what to run after the pre-flight")
    p.add_argument("--quick", action="store_true", help="the smallest sizes: a smoke run")
    args = p.parse_args(argv)
    quiet()
    result_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    out = result_dir / "BENCHMARKS.md" if result_dir else (args.out or BENCHMARKS)
    if result_dir:
        result_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pre = preflight(args.device)
    parts = [] if args.part == "preflight" else run_part(args.part, args, out)
    machine = describe_machine(args.device, packages=("zarr", "numcodecs", "av"))
    lines = [
        table(["check", ""], [list(kv) for kv in pre["facts"].items()], left=2),
        "",
        table(["script", "exit", "seconds"], [[d["script"], d["exit"], d["seconds"]] for d in parts], left=1),
        "",
        f"Whole command: {time.perf_counter() - t0:.0f} s.",
    ]
    args.out, args.figures = out, {"preflight": pre, "parts": parts, "seconds": round(time.perf_counter() - t0, 1)}
    title = f"GPU pre-flight, {args.part}"
    publish(section(f"bench_gpu_{args.part}", title, __name__, argv, machine, lines), args)
    return 1 if any(d["exit"] for d in parts) else 0


if __name__ == "__main__":
    sys.exit(main())
