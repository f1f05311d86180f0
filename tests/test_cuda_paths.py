"""The CUDA paths, checked on the CPU: spies in place of torch.cuda pin the device and the
stream that every event, copy and allocation uses. A real GPU adds the timing, not the logic."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import extract_config, write_folder_tree

from advise_cache import extract_stages
from advise_cache.pixels import PixelSpec


class FakeCuda:
    """Stands in for torch.cuda and the pinned allocations ModelLoop makes: tensors stay on the
    CPU, and every stream asked for and every event recorded is written down."""

    def __init__(self, monkeypatch):
        import contextlib

        self.events: list = []  # the stream each event was recorded on
        self.streams: list = []  # the device each stream was asked for
        spy = self

        class Stream:
            def __init__(self, kind, device):
                self.kind, self.index = kind, None if device is None else torch.device(device).index

            def wait_event(self, event):
                pass

        class Event:
            def record(self, stream=None):
                spy.events.append(stream)

            def synchronize(self):
                pass

        def current_stream(device=None):
            spy.streams.append(device)
            return Stream("current", device)

        def side_stream(device=None):
            spy.streams.append(device)
            return Stream("side", device)

        real_to, real_empty = torch.Tensor.to, torch.empty

        def to(self, *args, **kwargs):  # a copy "to cuda:K" stays on the CPU
            args = tuple(a for a in args if not (isinstance(a, torch.device) and a.type == "cuda"))
            return real_to(self, *args, **{k: v for k, v in kwargs.items() if k != "device"})

        def empty(*args, pin_memory=False, device=None, **kwargs):
            return real_empty(*args, **kwargs)

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
        monkeypatch.setattr(torch.cuda, "Stream", side_stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.Tensor, "to", to)
        monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: None)
        monkeypatch.setattr(torch, "empty", empty)


def fake_arrays(frames: list[int], per: int = 4, grid=(2, 2), dim=3):
    frames = np.array(frames)
    return SimpleNamespace(
        tokens=SimpleNamespace(dtype=np.dtype("float16"), shape=(int(frames.sum()), *grid, dim)),
        quantised=False,
        meta=SimpleNamespace(frames_per_shard=per),
        frames=frames,
        shards_of=lambda v: -(-int(frames[v]) // per),
    )


def fake_ifm(device: str, grid=(2, 2), dim=3):
    def encode(x, dtype):
        return torch.ones((len(x), *grid, dim), dtype=dtype)

    spec = PixelSpec(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return SimpleNamespace(device=torch.device(device), spec=spec, encode=encode)


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
    assert all(s.index == index for s in spy.events), [(s.kind, s.index) for s in spy.events]
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


# -- items 2-4 of issue 23: each test below fails on 96c9d02 -------------------------------------
def many_cores(monkeypatch, cores: int, local_world: int | None) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))


def test_decode_processes_are_each_ranks_share_of_the_node(monkeypatch):
    # 96c9d02 gave every rank `cores - 2`: 8 ranks on 128 cores started 1,008 decode processes.
    from advise_cache.extract import default_workers

    many_cores(monkeypatch, 128, 8)
    assert default_workers(torch.device("cuda", 3)) == 128 // 8 - 2
    assert default_workers(torch.device("cpu")) == 128 // 8 - 1
    many_cores(monkeypatch, 128, None)
    assert default_workers(torch.device("cuda", 0)) == 126


def test_shared_memory_ring_is_sized_by_each_ranks_share_of_dev_shm(monkeypatch):
    # 96c9d02 let every rank take half of /dev/shm's free space: 8 ranks asked for 4 halves.
    import os

    from advise_cache.extract_stages import PoolDecoder

    real = os.statvfs
    free = 64 << 20  # Docker's default /dev/shm

    def statvfs(path):
        if str(path) == "/dev/shm":
            return SimpleNamespace(f_bavail=free // 4096, f_frsize=4096)
        return real(path)

    monkeypatch.setattr(os, "statvfs", statvfs)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    decoder = PoolDecoder([], 1, 224)
    try:
        assert decoder.shm.size <= free // 4 // 2
    finally:
        decoder.close()


def test_ram_preload_on_cuda_is_not_pinned_and_fits_available_memory(monkeypatch, synthetic_store):
    # 96c9d02 pinned the whole resident copy (the host allocator rounds it to a power of two and
    # locks it for the run; the loader's pinned ring carries the copies anyway) and compared its
    # size with MemFree, which the page cache keeps near zero on a busy host.
    import os

    from advise_cache.loader import TokenSource
    from advise_cache.store import open_store

    pinned = []
    real_empty, real_sysconf = torch.empty, os.sysconf

    def empty(*args, pin_memory=False, **kwargs):
        pinned.append(pin_memory)
        return real_empty(*args, **kwargs)

    def sysconf(name):  # MemFree: 1 MB, whatever MemAvailable says
        return 256 if name == "SC_AVPHYS_PAGES" else real_sysconf(name)

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(os, "sysconf", sysconf)
    source = TokenSource(open_store(synthetic_store))
    videos, _ = source.videos()
    held = source.preload(videos, torch.device("cuda", 1))
    assert held > 1 << 20 and pinned and not any(pinned)
    expected = TokenSource(open_store(synthetic_store))
    want = np.empty((3, *source.grid, source.dim), source.stored_dtype)
    expected.fill(videos[:1], np.array([[0, 1, 2]]), [want[None]])
    got = np.empty_like(want)
    source.fill(videos[:1], np.array([[0, 1, 2]]), [got[None]])
    np.testing.assert_array_equal(got, want)


def test_gpu_preload_is_filled_through_a_small_host_buffer(monkeypatch, synthetic_store):
    # 96c9d02 built the whole GPU preload in host RAM first (a host tensor of every byte, then .to).
    from advise_cache import loader
    from advise_cache.store import open_store

    host, device_allocs = [], []
    real_empty = torch.empty
    real_np_empty = np.empty

    def empty(*args, pin_memory=False, device=None, **kwargs):
        t = real_empty(*args, **kwargs)
        (device_allocs if device is not None and torch.device(device).type == "cuda" else host).append(t.nbytes)
        return t

    def np_empty(shape, dtype=float, *a, **k):
        out = real_np_empty(shape, dtype, *a, **k)
        host.append(out.nbytes)
        return out

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)  # "to cuda:1" stays here
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 40, 1 << 40))
    monkeypatch.setattr(loader, "_BOUNCE_BYTES", 4096, raising=False)
    monkeypatch.setattr(loader.np, "empty", np_empty)
    source = loader.TokenSource(open_store(synthetic_store))
    videos, _ = source.videos()
    held = source.preload(videos, torch.device("cuda", 1), on_device=True)
    monkeypatch.setattr(loader.np, "empty", real_np_empty)
    assert device_allocs == [held]  # the resident copy itself, on the GPU
    assert max(host) <= 4096 < held
    ram = loader.TokenSource(open_store(synthetic_store))
    ram.preload(videos)
    torch.testing.assert_close(source.resident[0], ram.resident[0], rtol=0, atol=0)
    # Too little GPU memory: refused before anything is allocated or read.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 10, 1 << 40))
    device_allocs.clear()
    with pytest.raises(loader.StoreError, match="GB of GPU"):
        loader.TokenSource(open_store(synthetic_store)).preload(videos, torch.device("cuda", 1), on_device=True)
    assert device_allocs == []


def test_each_torchrun_rank_probes_only_its_share_of_the_videos(monkeypatch, tmp_path):
    # 96c9d02: every rank probed every video (8 ranks: 8 times the work, on the same cores).
    from advise_cache import extract_probe

    root = write_folder_tree(tmp_path / "videos", (4, 5, 6, 7, 8))
    cfg = extract_config(root, tmp_path / "s.zarr", dataset="folder")
    probed = []
    real_probe = extract_probe.probe_or_reason
    monkeypatch.setattr(extract_probe, "probe_or_reason", lambda p, decoder="decord": probed.append(p) or real_probe(p))

    class OtherRank(extract_probe.Group):  # rank 1 of 2; rank 0's answers made here in its place
        def gather(self, mine):
            if isinstance(mine, list) and mine and isinstance(mine[0], tuple) and len(mine[0]) == 3:
                theirs = [real_probe(p) for p in paths[0::2]]
                return [theirs, mine]
            return [mine, mine]

    from advise_cache.datasets import load_dataset

    index = load_dataset("folder", root, 1, None, False)
    paths = [str(r.path) for r in index.records]
    table = extract_probe.probe_table(cfg, index, 0, OtherRank(rank=1, world=2))
    assert probed == paths[1::2]
    assert table["source_frames"] == [real_probe(p)[0] for p in paths]
    assert sorted(table["source_frames"]) == [4, 5, 6, 7, 8]


class DeviceSpy:
    """torch.cuda's current device, streams, events and pinned memory on the CPU: records the
    current device (per thread, cuda:0 unless set) at every pinned allocation."""

    def __init__(self, monkeypatch):
        import contextlib
        import threading

        self.pinned_on: list[int] = []
        local = threading.local()
        spy = self

        def current() -> int:
            return getattr(local, "device", 0)

        def set_device(d):
            local.device = torch.device("cuda", d).index if isinstance(d, int) else torch.device(d).index

        @contextlib.contextmanager
        def device(d):
            before = current()
            set_device(d)
            try:
                yield
            finally:
                local.device = before

        class Event:
            def record(self, stream=None):
                pass

            def synchronize(self):
                pass

        class Stream:
            def __init__(self, device=None):
                self.device = device

            def wait_event(self, event):
                pass

        real_empty = torch.empty

        def empty(*args, pin_memory=False, device=None, **kwargs):
            if pin_memory:
                spy.pinned_on.append(current())
            return real_empty(*args, **kwargs)

        def pin(self):
            spy.pinned_on.append(current())
            return self

        monkeypatch.setattr(torch.cuda, "current_device", current)
        monkeypatch.setattr(torch.cuda, "set_device", set_device)
        monkeypatch.setattr(torch.cuda, "device", device)
        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(device))
        monkeypatch.setattr(torch, "empty", empty)
        monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
        monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: None)
        monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)


def test_loader_pins_its_buffers_in_its_own_devices_context(monkeypatch, synthetic_store):
    # 96c9d02 allocated the ring's pinned buffers in the consumer's current device, cuda:0 unless
    # set: a CUDA context on GPU 0 from every rank of a node.
    from advise_cache.loader import ClipLoader, TokenSource
    from advise_cache.sampling import ClipRequest
    from advise_cache.store import open_store

    spy = DeviceSpy(monkeypatch)
    source = TokenSource(open_store(synthetic_store))
    videos, _ = source.videos()
    plan = [ClipRequest(int(v), np.arange(4), 0) for v in videos[:8]]
    batches = list(ClipLoader(source, plan, 4, threads=1, device=torch.device("cuda", 1)))
    assert len(batches) == 2
    assert spy.pinned_on and set(spy.pinned_on) == {1}


def test_loader_threads_default_from_each_ranks_cores(monkeypatch):
    # 96c9d02: 4 reading threads whatever the cores; a GPU-rate run needs ~3.5 copying cores a GPU.
    from advise_cache.configs import TrainConfig
    from advise_cache.loader import default_threads

    assert TrainConfig(cache=None, out=None).loader_threads == 0  # 0: from the cores
    many_cores(monkeypatch, 128, 8)
    assert default_threads(torch.device("cuda", 2)) == 15
    many_cores(monkeypatch, 2, None)
    assert default_threads(torch.device("cuda", 0)) == 4
    assert default_threads(torch.device("cpu")) == 4


@pytest.mark.parametrize(
    "env, message",
    [
        ({"LOCAL_RANK": "x"}, "LOCAL_RANK must be an integer"),
        ({"LOCAL_RANK": "2"}, "this node has 2 GPUs"),
        ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "1"}, "not within LOCAL_WORLD_SIZE 1"),
    ],
)
def test_a_bad_local_rank_is_one_line_before_any_cuda_call(monkeypatch, env, message):
    # 96c9d02 read LOCAL_RANK with int() (a traceback) and passed it to set_device unchecked.
    from advise_cache import runtime
    from advise_cache.errors import AdviseCacheError

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.dist, "init_process_group", lambda *a, **k: calls.append("init"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(AdviseCacheError, match=message):
        runtime.init_distributed("cuda")
    assert calls == []
