"""Real footage for the decoding benchmark (benchmarks/decode.py): the clip (Debian's opencv-doc sample,
or one given), transcoded as UCF101's are; and the tokens of the tensor resize against PIL's on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipelines.common import say

DEBIAN_CLIP = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
SMALL = (240, 320)  # height, width of the transcoded clip


def find_clip(given: Path | None) -> Path:
    for p in (given, os.environ.get("ADVISE_REAL_VIDEO"), DEBIAN_CLIP):
        if p and Path(p).is_file():
            return Path(p)
    raise SystemExit(
        f"no real clip: pass --video PATH, set ADVISE_REAL_VIDEO, or `apt-get install opencv-doc` ({DEBIAN_CLIP})"
    )


def transcode(src: Path, dest: Path, size: tuple[int, int], frames: int | None = None) -> Path:
    """`src` re-encoded as mpeg4 at `size` (h, w), as UCF101's clips are (xvid, 320x240)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dest), "w") as out:
        s_in = inp.streams.video[0]
        s = out.add_stream("mpeg4", rate=25)
        s.height, s.width = size
        s.pix_fmt, s.bit_rate = "yuv420p", 800_000
        for i, frame in enumerate(inp.decode(s_in)):
            if frames is not None and i >= frames:
                break
            for pkt in s.encode(frame.reformat(width=size[1], height=size[0], format="yuv420p")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return dest


# -- 3: tokens of the tensor resize against PIL's ---------------------------------------------------
def token_difference(clip: Path, models: list[str], frames: int) -> list[list]:
    import torch

    from advise_cache.ifm import create_ifm
    from advise_cache.pixels import resize_crop, resize_crop_tensor
    from advise_cache.video import FramePlan, iter_frames

    rows = []
    for model in models:
        ifm = create_ifm(model, "none", "cpu", "fp32")
        decoded = np.concatenate([f for _, f in iter_frames(clip, FramePlan(ifm.spec))])
        pick = decoded[np.linspace(0, len(decoded) - 1, frames).astype(int)]
        pil = resize_crop(pick, ifm.spec)
        ref = ifm.encode(pil).double().flatten(0, 2)
        for name, gpu in (("tensor, CPU (uint8)", False), ("tensor, GPU kernels (float)", True)):
            crops = resize_crop_tensor(torch.from_numpy(pick), ifm.spec, gpu_kernels=gpu).contiguous()
            tok = ifm.encode(crops).double().flatten(0, 2)
            cos = torch.nn.functional.cosine_similarity(ref, tok, dim=1)
            px = np.abs(crops.numpy().astype(int) - pil)
            rows.append(
                [
                    model,
                    name,
                    frames,
                    f"{px.max()} / {(px > 0).mean():.2%}",
                    f"{float((tok - ref).norm() / ref.norm()):.2e}",
                    f"{float(cos.mean()):.6f}",
                    f"{float(cos.min()):.6f}",
                ]
            )
        say(f"tokens {model}: {rows[-2][4:]} {rows[-1][4:]}")
    return rows
