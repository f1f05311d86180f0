"""Decoding and resizing real footage: what extraction's pixels cost on the CPU, by path, side by
side in alternating rounds, and how far the tokens of the tensor resize are from PIL's.

    python -m pipelines.benchmarks.decode                       # ~4 minutes on 2 shared cores
    python -m pipelines.benchmarks.decode --quick --no-write    # smoke run on a generated clip, seconds

The clip: OpenCV's sample `vtest.avi` (768x576 msmpeg4, 795 frames of people walking, a fixed
camera), which Debian ships in its `opencv-doc` package (`apt-get install opencv-doc` puts it at
/usr/share/doc/opencv-doc/examples/data/vtest.avi); or any clip given with --video. Nothing is
committed: the script transcodes it to 320x240 mpeg4 (UCF101's size and codec family) in a
temporary folder. Three measurements, each in CPU-seconds of this process or its children:

- decode + resize to the model's 224 px crops, frames per CPU-second, on the 320x240 clip, one
  torch thread: decord alone; today's path before issue 23 (decord + PIL in the decode process,
  `--resize pil`); the tensor path on the CPU (decord + torch's uint8 antialiased resize); the
  decode process's share on a GPU (decord + the copy into a pinned buffer; the resize runs there);
- `advise-cache extract` of the 768x576 clip repeated to ~8,000 frames with the random test-vit,
  one thread, decoding in line, its whole CPU cost (imports included) against a bare decord
  decode of the same frames in a fresh process, and where the rest goes;
- the tokens of the tensor resize against PIL's on real frames: test-vit and ViT-B-16, random
  weights (no pretrained ones offline), relative L2 and cosine per token.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as `python pipelines/NAME.py`: import the checkout's packages, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from pipelines.benchmarks.footage import SMALL, find_clip, token_difference, transcode
from pipelines.common import REPO, describe_machine, num, parser, quiet, say
from pipelines.sections import Section, publish, section, table

EXTRACT_FRAMES = 8000  # frames of the 768x576 clip the extraction measurement decodes


# -- 1: decode + resize per CPU-second ---------------------------------------------------------
def path_costs(clip: Path, rounds: int, decoders_only: bool = False) -> dict[str, list[float]]:
    """Frames per CPU-second of each path over the whole clip, rounds alternating the paths."""
    import torch

    from advise_cache.ifm import create_ifm
    from advise_cache.pixels import resize_crop_tensor
    from advise_cache.video import FramePlan, decoder_available, iter_frames, open_video

    torch.set_num_threads(1)
    spec = create_ifm("test-vit", "none", "cpu").spec
    spec = type(spec)(224, spec.mean, spec.std, spec.interpolation)  # the 224 px of CLIP ViT-B-16
    pinned = np.empty((16, *SMALL, 3), np.uint8)

    def decord_only() -> int:
        vr = open_video(clip)
        n = len(vr)
        for i in range(0, n, 16):
            vr.frames(list(range(i, min(n, i + 16))))
        return n

    def pil() -> int:
        return sum(len(f) for _, f in iter_frames(clip, FramePlan(spec, resize="pil")))

    def tensor_cpu() -> int:
        return sum(len(resize_crop_tensor(torch.from_numpy(f), spec)) for _, f in iter_frames(clip, FramePlan(spec)))

    def gpu_share() -> int:
        n = 0
        for _, f in iter_frames(clip, FramePlan(spec)):
            pinned[: len(f)] = f  # the model loop's copy into its pinned buffer
            n += len(f)
        return n

    def torchcodec_only() -> int:
        vr = open_video(clip, "torchcodec")
        n = len(vr)
        for i in range(0, n, 16):
            vr.frames(list(range(i, min(n, i + 16))))
        return n

    paths = {"decord alone": decord_only, "pil": pil, "tensor, CPU": tensor_cpu, "decode process on a GPU": gpu_share}
    if decoders_only:
        paths = {"decord alone": decord_only}
        if not decoder_available("torchcodec"):
            paths["torchcodec alone"] = torchcodec_only
    out: dict[str, list[float]] = {k: [] for k in paths}
    for r in range(rounds):
        for name, fn in paths.items():
            t0 = time.process_time()
            frames = fn()
            out[name].append(frames / (time.process_time() - t0))
        say(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in out.items()))
    return out


# -- 2: extraction's whole CPU cost --------------------------------------------------------------
def child_cpu(argv: list[str], env: dict) -> float:
    """CPU-seconds (user + system) of a fresh process running `argv`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def extraction_cost(clip: Path, work: Path, frames: int, rounds: int) -> dict:
    """CPU-seconds of `advise-cache extract` (test-vit, one thread, in line) by --resize, and of a
    bare decord decode of the same frames in a fresh process, rounds alternating them."""
    from advise_cache.video import probe_video

    n = probe_video(clip).frames
    copies = max(1, round(frames / n))
    rows = []
    for i in range(copies):  # hard links: the same bytes under other names
        link = work / "videos" / "walk" / f"copy{i:02d}{clip.suffix}"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(clip, link) if clip.stat().st_dev == link.parent.stat().st_dev else shutil.copy(clip, link)
        rows.append(f"{link},walk,train")
    manifest = work / "manifest.csv"
    manifest.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    decode = [sys.executable, "-c", _DECODE.format(paths=json.dumps([r.split(",")[0] for r in rows]))]
    imports = [sys.executable, "-c", "import advise_cache.extract, advise_cache.ifm, open_clip"]

    def extract(resize: str) -> list[str]:
        out = work / f"{resize}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        return [sys.executable, "-m", "advise_cache.cli", "extract", "manifest", "--root", str(manifest)]  + [
            "--out", str(out), "--model", "test-vit", "--pretrained", "none", "--workers", "0",
            "--device", "cpu", "--resize", resize,
        ]  # fmt: skip

    cost: dict[str, list[float]] = {"decord decode": [], "imports": [], "tensor": [], "pil": []}
    for r in range(rounds):
        cost["decord decode"].append(child_cpu(decode, env))
        cost["imports"].append(child_cpu(imports, env))
        for resize in ("tensor", "pil"):
            cost[resize].append(child_cpu(extract(resize), env))
        say(f"extraction round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in cost.items()))
    return {"frames": copies * n, "videos": copies, "cost": cost}


_DECODE = """
import decord
decord.logging.set_level(decord.logging.QUIET)
for p in {paths}:
    vr = decord.VideoReader(p, num_threads=1)
    for i in range(0, len(vr), 16):
        vr.get_batch(list(range(i, min(len(vr), i + 16)))).asnumpy()
"""


def breakdown(clip: Path, frames: int) -> dict[str, float]:
    """CPU-seconds per frame of the extraction's in-process pieces on the clip, one thread:
    resizing decoded frames (tensor, PIL) and the test-vit forward on 224 px crops."""
    import torch

    from advise_cache.ifm import create_ifm
    from advise_cache.pixels import resize_crop, resize_crop_tensor
    from advise_cache.video import FramePlan, iter_frames

    torch.set_num_threads(1)
    ifm = create_ifm("test-vit", "none", "cpu")
    decoded = [f for _, f in iter_frames(clip, FramePlan(ifm.spec))][:8]
    n = sum(len(f) for f in decoded)
    out = {}
    for name, fn in (
        ("tensor resize", lambda f: resize_crop_tensor(torch.from_numpy(f), ifm.spec)),
        ("PIL resize", lambda f: resize_crop(f, ifm.spec)),
    ):
        t0 = time.process_time()
        crops = [fn(f) for f in decoded]
        out[name] = (time.process_time() - t0) / n
    t0 = time.process_time()
    for c in crops:
        ifm.encode(c, dtype=torch.float16)
    out["test-vit forward"] = (time.process_time() - t0) / n
    return out


def render(machine, clip, costs, extraction, parts, tokens, argv) -> Section:
    med = {k: float(np.median(v)) for k, v in costs.items()}
    base = med["pil"]
    out = [
        f"Clip: `{clip}` transcoded by the script to {SMALL[1]}x{SMALL[0]} mpeg4 (decode + resize) and as it "
        "is (extraction). Frames per CPU-second of this process, one torch thread; median of "
        f"{len(costs['pil'])} rounds alternating the paths.",
        "",
        table(
            ["path, decode + resize to 224 px crops", "frames / CPU-second", "vs PIL (today's path)"],
            [[k, num(v), f"{v / base:.2f}x"] for k, v in med.items()],
        ),
    ]
    if extraction:
        c = {k: float(np.median(v)) for k, v in extraction["cost"].items()}
        dec = c["decord decode"]
        out += [
            "",
            f"`advise-cache extract` of the clip as it is, {extraction['videos']} copies ({extraction['frames']} "
            "frames), test-vit (random weights), `--workers 0`, one thread (OMP_NUM_THREADS=1), whole CPU cost "
            f"of the process (imports included), median of {len(extraction['cost']['pil'])} rounds; a bare "
            "decord decode of the same frames in a fresh process beside it:",
            "",
            table(
                ["run", "CPU-seconds", "vs the bare decode"],
                [[k, f"{v:.1f}", f"{v / dec:.2f}x"] for k, v in c.items()],
            ),
            "",
            "Where the CPU goes, per frame of the clip, measured in this process (one thread): "
            + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in parts.items())
            + f"; decode {dec / extraction['frames'] * 1e3:.2f} ms; imports {c['imports']:.1f} s a run.",
        ]
    out += [
        "",
        "Tokens of the tensor resize against PIL's (random weights: no pretrained ones offline), on frames "
        "spread over the clip at its own size; pixels: max abs difference / share of values that differ.",
        "",
        table(["model", "resize", "frames", "pixels", "relative L2", "cosine, mean", "cosine, min"], tokens, left=2),
    ]
    return section("bench_decode", "Decoding and resizing real footage", __name__, argv, machine, out)


def render_decoders(machine, clip, costs, argv) -> Section:
    med = {k: float(np.median(v)) for k, v in costs.items()}
    body = [
        f"`{clip}` transcoded to {SMALL[1]}x{SMALL[0]} mpeg4; frames decoded per CPU-second (16 at a time, "
        f"one thread each), median of {len(costs['decord alone'])} rounds alternating the decoders.",
        "",
        table(
            ["decoder", "frames / CPU-second", "vs decord"],
            [[k, num(v), f"{v / med['decord alone']:.2f}x"] for k, v in med.items()],
        ),
    ]
    return section("bench_decode_decoders", "Decoders on real footage", __name__, argv, machine, body)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--video", type=Path, help="a real clip (default: $ADVISE_REAL_VIDEO, then Debian's vtest.avi)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--extract-rounds", type=int, default=2, help="0: skip the extraction measurement")
    p.add_argument("--models", default="test-vit,ViT-B-16")
    p.add_argument("--token-frames", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="a generated clip, one round, test-vit: a smoke run")
    p.add_argument("--decoders", action="store_true", help="decord against torchcodec only (own section)")
    args = p.parse_args(argv)
    quiet()
    work = Path(tempfile.mkdtemp(prefix="bench_decode-"))
    try:
        if args.quick:
            from advise_cache.testing import write_video

            clip = write_video(work / "generated.mp4", 48, size=(144, 192))
            args.rounds, args.extract_rounds, args.models, args.token_frames = 1, 1, "test-vit", 4
        else:
            clip = find_clip(args.video)
        small = transcode(clip, work / "small.mp4", SMALL)
        machine = describe_machine("cpu", packages=("decord", "torchcodec", "Pillow"))
        if args.decoders:
            costs = path_costs(small, args.rounds, decoders_only=True)
            return publish(render_decoders(machine, clip, costs, argv), args)
        costs = path_costs(small, args.rounds)
        frames = 200 if args.quick else EXTRACT_FRAMES
        extraction = extraction_cost(clip, work, frames, args.extract_rounds) if args.extract_rounds else None
        parts = breakdown(clip, frames)
        tokens = token_difference(clip, args.models.split(","), args.token_frames)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.figures = {"clip": str(clip), "costs": costs, "extraction": extraction, "parts": parts, "tokens": tokens}
    return publish(render(machine, clip, costs, extraction, parts, tokens, argv), args)


if __name__ == "__main__":
    sys.exit(main())
