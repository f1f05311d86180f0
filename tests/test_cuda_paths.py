"""The CUDA paths, checked on the CPU: spies in place of torch.cuda pin the device and the
stream that every event, copy and allocation uses. A real GPU adds the timing, not the logic."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import extract_config, write_folder_tree

from advise_cache import extract_stages


class FakeCuda:
    """Stands in for torch.cuda and the pinned allocations ModelLoop makes: tensors stay on the
    CPU, and every stream asked for and every event recorded is written down."""

    def __init__(self, monkeypatch):
        self.events: list = []  # the stream each event was recorded on
        self.streams: list = []  # the device each current_stream() was asked for
        spy = self

        class Event:
            def record(self, stream=None):
                spy.events.append(stream)

            def synchronize(self):
                pass

        def current_stream(device=None):
            spy.streams.append(device)
            return ("stream", None if device is None else torch.device(device).index)

        real_to, real_empty = torch.Tensor.to, torch.empty

        def to(self, *args, **kwargs):  # a copy "to cuda:K" stays on the CPU
            args = tuple(a for a in args if not (isinstance(a, torch.device) and a.type == "cuda"))
            return real_to(self, *args, **{k: v for k, v in kwargs.items() if k != "device"})

        def empty(*args, pin_memory=False, **kwargs):
            return real_empty(*args, **kwargs)

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
        monkeypatch.setattr(torch.Tensor, "to", to)
        monkeypatch.setattr(torch, "empty", empty)


def fake_arrays(frames: list[int], per: int = 4, grid=(2, 2), dim=3):
    frames = np.array(frames)
    return SimpleNamespace(
        tokens=SimpleNamespace(dtype=np.dtype("float16"), shape=(int(frames.sum()), *grid, dim)),
        quantised=False,
        meta={"frames_per_shard": per},
        frames=frames,
        shards_of=lambda v: -(-int(frames[v]) // per),
    )


def fake_ifm(device: str, grid=(2, 2), dim=3):
    def encode(x, dtype):
        return torch.ones((len(x), *grid, dim), dtype=dtype)

    return SimpleNamespace(device=torch.device(device), spec=SimpleNamespace(size=8), encode=encode)


@pytest.mark.parametrize("device", ["cuda:1", "cuda:3"])
def test_model_loop_records_every_event_on_its_models_device(monkeypatch, device):
    # 96c9d02 recorded with Event().record(): the current stream of the thread's current device
    # (cuda:0 unless set), while the model, its copies and its kernels ran on cuda:K. Waiting on
    # such an event returns at once, so staging and shard buffers were reused before their
    # copies landed: wrong tokens, crc'd as right, on every torchrun rank but the first.
    spy = FakeCuda(monkeypatch)
    written = []
    loop = extract_stages.ModelLoop(fake_ifm(device), 4, fake_arrays([6, 5]), written.append)
    assert loop.cuda
    for video, n in ((0, 6), (1, 5)):
        loop.add(video, 0, np.zeros((n, 8, 8, 3), np.uint8))
    loop.flush()
    index = torch.device(device).index
    assert spy.events, "no event was recorded"
    assert spy.events == [("stream", index)] * len(spy.events)
    assert all(d is not None and torch.device(d).index == index for d in spy.streams)
    assert sorted((s.video, s.index) for s in written) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_extraction_makes_its_device_current_before_building_the_model(monkeypatch, tmp_path):
    # Pinned host memory is allocated in the current device's context, and events and streams
    # default to it: a rank on cuda:K that never sets it works on cuda:0's by default.
    from advise_cache import extract

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))

    def create_ifm(name, pretrained, device, *args):
        calls.append(("create_ifm", device))
        raise RuntimeError("stop here")

    monkeypatch.setattr(extract, "create_ifm", create_ifm)
    cfg = extract_config(write_folder_tree(tmp_path / "videos", (4, 4)), tmp_path / "s.zarr", dataset="folder")
    for device in ("cuda:2", "cpu"):
        with pytest.raises(RuntimeError, match="stop here"):
            extract.extract_videos(extract.replace(cfg, device=device))
    assert calls == [("set_device", torch.device("cuda", 2)), ("create_ifm", "cuda:2"), ("create_ifm", "cpu")]
