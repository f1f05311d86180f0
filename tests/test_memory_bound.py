"""Extraction memory does not grow with a video's length (issue 15): frames and tokens stream
through a few shard buffers, so a long video peaks where a short one does.

Each video is extracted in a fresh process that reports its own peak RSS. The model is a
test-only open_clip config with many tokens a frame (a 16 x 16 grid of 64 channels: 64 kB a
frame in float32) at little compute, so the long video's tokens (52 MB) are five times the
bound: an extraction that held a whole video's tokens, or its frames and tokens, would
exceed it by far.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_video

pytestmark = pytest.mark.slow  # `make test-fast` leaves this file out

ROOT = Path(__file__).resolve().parents[1]
SHORT, LONG = 200, 800  # frames; both many batches (64) and shards (16) long
BOUND_MB = 10.0  # five times below the long video's tokens
FRAME_BYTES = 16 * 16 * 64 * 4  # grid x grid x dim x float32

WIDE_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 2},
    "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 32, "heads": 2, "layers": 1},
}

CHILD = """
import resource, sys
from pathlib import Path
import open_clip
open_clip.add_model_config(Path(sys.argv[3]))
from advise_cache.extract import ExtractConfig, extract_videos
s = extract_videos(ExtractConfig(dataset="folder", root=Path(sys.argv[1]), out=Path(sys.argv[2]),
                                 model="test-vit-wide", pretrained="none", workers=0, device="cpu",
                                 dtype="float32", frames_per_shard=16, writers=1, progress=False))
assert s.done == 1, s.failed
print(s.bytes, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(frames: int, tmp_path: Path, configs: Path) -> tuple[float, int]:
    """(peak RSS in MB, token bytes written) of extracting one generated video of `frames`."""
    root = tmp_path / f"videos-{frames}"
    write_video(root / "a" / "v.mp4", frames, size=(32, 32))
    # One thread, few malloc arenas, and large blocks always mapped and unmapped (glibc would
    # otherwise raise its mmap threshold as buffers are freed and keep them in a heap that
    # fragments): the peak then follows the memory in use, not the allocator's history.
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
        "MALLOC_MMAP_THRESHOLD_": str(2**16),
    }
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(tmp_path / f"s-{frames}.zarr"), str(configs)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    written, maxrss = map(int, r.stdout.split())
    return maxrss * (1 if sys.platform == "darwin" else 1024) / 1e6, written  # bytes on macOS, kB on Linux


@pytest.mark.skipif(sys.platform == "win32", reason="resource.getrusage")
def test_peak_memory_does_not_grow_with_the_video_length(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "test-vit-wide.json").write_text(json.dumps(WIDE_VIT))
    short, _ = peak_rss_mb(SHORT, tmp_path, configs)
    long, written = peak_rss_mb(LONG, tmp_path, configs)
    tokens_mb = LONG * FRAME_BYTES / 1e6  # 52 MB
    assert written >= LONG * FRAME_BYTES and tokens_mb > 5 * BOUND_MB  # the bound: far below one video's tokens
    assert long - short < BOUND_MB, f"peak {short:.1f} MB for {SHORT} frames, {long:.1f} MB for {LONG}"
