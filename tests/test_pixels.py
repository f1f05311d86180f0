"""Pixels and decoders: the two resizes against each other and against open_clip's own
preprocessing, and torchcodec against decord on the same real (generated) videos."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import extract_config, write_video
from test_extract import _bad_files

from advise_cache.errors import DecodeError
from advise_cache.extract import EXIT_SOME_FAILED, extract_videos
from advise_cache.pixels import PixelSpec, cap_factor, crop_box, max_pixels, normalise, resize_crop, resize_crop_tensor
from advise_cache.store import DONE, open_store
from advise_cache.video import FramePlan, decode_frames, decoder_available, iter_frames

CLIP = PixelSpec(224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
torchcodec = pytest.mark.skipif(bool(decoder_available("torchcodec")), reason=decoder_available("torchcodec"))


def frames_of(h: int, w: int, n: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random frames (upsampled noise), like video rather than white noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(small, 8, 1), 8, 2)[:, :h, :w])


@pytest.mark.parametrize("h, w", [(240, 320), (576, 768), (300, 200), (224, 224), (97, 131)])
def test_pil_crops_are_open_clips_preprocessing_byte_for_byte(h, w):
    import open_clip
    from PIL import Image

    transform = open_clip.image_transform(224, is_train=False, mean=CLIP.mean, std=CLIP.std)
    frames = frames_of(h, w)
    want = torch.stack([transform(Image.fromarray(f)) for f in frames])
    got = normalise(torch.from_numpy(resize_crop(frames, CLIP)), CLIP)
    assert torch.equal(got, want)


@pytest.mark.parametrize("h, w", [(240, 320), (576, 768), (300, 200), (224, 224)])
def test_tensor_resize_is_the_pil_resize_within_rounding(h, w):
    frames = frames_of(h, w, seed=1)
    pil = resize_crop(frames, CLIP).astype(np.int16)
    cpu = resize_crop_tensor(torch.from_numpy(frames), CLIP).numpy().astype(np.int16)
    assert cpu.shape == pil.shape == (3, 224, 224, 3)
    assert np.abs(cpu - pil).max() <= 2 and (cpu != pil).mean() < 0.02


def test_float_path_of_the_gpu_matches_the_cpu_uint8_path(monkeypatch):
    # The GPU resizes in float32 (no uint8 kernel there): run that branch on the CPU.
    frames = torch.from_numpy(frames_of(240, 320, seed=2))
    cpu = resize_crop_tensor(frames, CLIP).numpy().astype(np.int16)

    class OnGpu(torch.Tensor):  # the same data, reporting a CUDA device
        @property
        def device(self):
            return torch.device("cuda", 1)

    gpu = resize_crop_tensor(frames.as_subclass(OnGpu), CLIP).as_subclass(torch.Tensor).numpy().astype(np.int16)
    assert np.abs(gpu - cpu).max() <= 2 and (gpu != cpu).mean() < 0.02


def test_frames_are_handed_over_as_decoded_up_to_the_cap(tmp_path):
    assert (cap_factor(240, 320, 224), cap_factor(720, 1280, 224), cap_factor(1080, 1920, 224)) == (1, 1, 2)
    assert cap_factor(2160, 3840, 224) == 3 and 3840 // 3 * (2160 // 3) <= max_pixels(224)
    assert crop_box(240, 320, 224) == (224, 298, 0, 37)
    path = write_video(tmp_path / "v.mp4", 20, size=(72, 96))
    tensor = [f for _, f in iter_frames(path, FramePlan(CLIP, 2, "tensor"))]
    pil = [f for _, f in iter_frames(path, FramePlan(CLIP, 2, "pil"))]
    assert [f.shape for f in tensor] == [(10, 72, 96, 3)] and [f.shape for f in pil] == [(10, 224, 224, 3)]
    # a shared-memory slot of room for 3 frames: pieces of 3 or fewer of each 16 decoded
    pieces = list(iter_frames(path, FramePlan(CLIP, 1, "tensor"), room=3 * 72 * 96 * 3))
    assert [s for s, _ in pieces] == [0, 3, 6, 9, 12, 15, 16, 19] and sum(len(f) for _, f in pieces) == 20


@pytest.mark.parametrize("resize", ["tensor", "pil"])
def test_extraction_stores_the_tokens_of_its_resize(tmp_path, resize):
    for i in range(2):
        write_video(tmp_path / "data" / "a" / f"v{i}.mp4", 9 + i, seed=i, size=(72, 96))
    out = tmp_path / f"{resize}.zarr"
    summary = extract_videos(extract_config(tmp_path / "data", out, dataset="folder", resize=resize, workers=1))
    assert summary.exit_code == 0, summary.failed
    from advise_cache.ifm import create_ifm

    ifm = create_ifm("test-vit", "none", device="cpu")
    a = open_store(out).ifm("test-vit")
    assert a.meta.resize == resize and a.meta.decoder == "decord"
    for v in range(2):
        want = ifm.encode(decode_frames(open_store(out).videos.path[v], ifm.spec, resize=resize)).numpy()
        np.testing.assert_allclose(a.read_video(v).astype(np.float32), want, rtol=1e-3, atol=1e-3)


@torchcodec
@pytest.mark.parametrize("workers", [0, 1])
def test_torchcodec_reports_the_failures_decord_reports(tmp_path, workers):
    expected = _bad_files(tmp_path / "data")
    failed = {}
    for decoder in ("decord", "torchcodec"):
        out = tmp_path / f"{decoder}.zarr"
        cfg = extract_config(tmp_path / "data", out, dataset="folder", workers=workers, decoder=decoder)
        summary = extract_videos(cfg)
        assert summary.exit_code == EXIT_SOME_FAILED and summary.done == 1
        failed[decoder] = {f["name"]: f["reason"] for f in summary.failed}
        for name, pattern in expected.items():
            assert re.search(pattern, failed[decoder][name]), (decoder, name, failed[decoder][name])
    assert set(failed["decord"]) == set(failed["torchcodec"]) == set(expected)
    a, b = (open_store(tmp_path / f"{d}.zarr").ifm("test-vit") for d in ("decord", "torchcodec"))
    v = int(np.flatnonzero(a.status() == DONE)[0])
    np.testing.assert_array_equal(a.read_video(v), b.read_video(v))  # the same frames decoded


def test_an_unusable_decoder_or_resize_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from advise_cache import video
    from advise_cache.cli import app

    write_video(tmp_path / "data" / "a" / "v.mp4", 4)
    args = ["extract", "folder", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "s.zarr")]
    args += "--model test-vit --workers 0 --device cpu".split()
    for extra, message in ((["--resize", "lanczos"], "--resize 'lanczos'"), (["--decoder", "nope"], "unknown decoder")):
        r = CliRunner().invoke(app, [*args, *extra])
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "s.zarr").exists()
    with pytest.raises(DecodeError, match="no such file"):
        video.probe_video(tmp_path / "missing.mp4")
