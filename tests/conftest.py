"""Shared fixtures: tiny generated videos and stores, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from advise_cache.testing import video_table, write_folder_tree, write_video  # noqa: F401 (tests import them from here)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests


TINY = dict(train_per_class=3, test_per_class=2, min_frames=24, max_frames=40)
# `extract` as extract_config below runs it, in flags: the random-init test-vit (no weights to
# fetch), decoding in this process, on the CPU. Shard and batch sizes stay with each test.
FAST_EXTRACT = "--model test-vit --pretrained none --workers 0 --device cpu".split()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from advise_cache.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, family="both", seed=0, **TINY)
    return root


def extract_config(root: Path, out: Path, **kw):
    from advise_cache.extract import ExtractConfig

    base = dict(
        dataset="synthetic",
        root=root,
        out=out,
        model="test-vit",
        pretrained="none",
        workers=0,
        device="cpu",
        frames_per_shard=8,
        batch_size=16,
        progress=False,
    )
    return ExtractConfig(**{**base, **kw})


@pytest.fixture(scope="session")
def synthetic_store(synthetic_root, tmp_path_factory) -> Path:
    from advise_cache.extract import extract_videos

    out = tmp_path_factory.mktemp("stores") / "synthetic.zarr"
    summary = extract_videos(extract_config(synthetic_root, out))
    assert summary.exit_code == 0, summary.failed
    return out


@pytest.fixture(scope="session")
def lz4_store(synthetic_root, tmp_path_factory) -> Path:
    """The synthetic store with lz4-compressed frames: zarr reads and writes its shards."""
    from advise_cache.extract import extract_videos

    out = tmp_path_factory.mktemp("lz4") / "lz4.zarr"
    assert extract_videos(extract_config(synthetic_root, out, codec="lz4")).exit_code == 0
    return out


@pytest.fixture(scope="session")
def temporal_store(tmp_path_factory) -> Path:
    """The temporal family alone (like Diving48), with enough videos to learn from."""
    from advise_cache.extract import extract_videos
    from advise_cache.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("temporal")
    generate_synthetic(
        root, family="temporal", seed=1, train_per_class=12, test_per_class=6, min_frames=24, max_frames=40
    )
    out = tmp_path_factory.mktemp("stores") / "temporal.zarr"
    summary = extract_videos(extract_config(root, out, dataset="synthetic-temporal"))
    assert summary.exit_code == 0, summary.failed
    return out


VIEWS = dict(train_per_class=2, test_per_class=1, min_frames=12, max_frames=20)  # 12 videos


@pytest.fixture(scope="session")
def views_root(tmp_path_factory) -> Path:
    """A few appearance videos, for stores with views (each view is a pass of the model)."""
    from advise_cache.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("views")
    generate_synthetic(root, family="appearance", seed=2, **VIEWS)
    return root


@pytest.fixture(scope="session")
def views_store(views_root, tmp_path_factory) -> Path:
    """`extract synthetic-appearance --aug-views 2 --crops 3`: 6 views of every frame."""
    from advise_cache.extract import extract_videos

    out = tmp_path_factory.mktemp("stores") / "views.zarr"
    cfg = extract_config(views_root, out, dataset="synthetic-appearance", aug_views=2, crops=3)
    summary = extract_videos(cfg)
    assert summary.exit_code == 0, summary.failed
    return out


def assert_same_tokens(path: Path, reference: Path) -> None:
    """The store at `path` holds the test-vit statuses and tokens of `reference`, bit for bit."""
    from advise_cache.store import open_store

    a, b = open_store(path).ifm("test-vit"), open_store(reference).ifm("test-vit")
    np.testing.assert_array_equal(a.status(), b.status())
    np.testing.assert_array_equal(a.tokens[:], b.tokens[:])


def small_store(path: Path, lengths=(5, 8, 13)):
    """A store with one IFM group and no model behind it: for the store's own rules. Returns the group,
    open for writing, and the tokens its videos should get."""
    from advise_cache.store import create_store, open_store

    table = video_table(lengths)
    info = {
        "model": "m",
        "pretrained": "none",
        "weights_sha256": "0",
        "input_size": 8,
        "grid": [2, 3],
        "dim": 4,
        "normalisation": "n",
        "precision": "fp32",
    }
    create_store(path, "t", "r", ["a"], table)
    a = open_store(path, mode="a").add_ifm("k", info, 1, 4)
    rng = np.random.default_rng(0)
    return a, [rng.standard_normal((m, 2, 3, 4)).astype(np.float16) for m in lengths]


def train_config(cache: Path, out: Path, **kw):
    """A small, fast training config: a tiny TMM, fixed seed, CPU."""
    from advise_cache.configs import TMMConfig
    from advise_cache.train import TrainConfig

    tmm = kw.pop("tmm", TMMConfig(hidden=32, out_dim=64, head_hidden=64))
    base = dict(
        cache=cache,
        out=out,
        epochs=4,
        batch_size=16,
        device="cpu",
        progress=False,
        tmm=tmm,
        loader_threads=2,
        log_every=1,
    )
    return TrainConfig(**{**base, **kw})


def read_metrics(run: Path, kind: str = "step") -> list[dict]:
    import json

    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def frame_chunk(store: Path, video: int, frame: int, key: str = "test-vit") -> tuple[Path, int, int]:
    """Where a stored frame lies: (its shard file, the byte offset of its chunk, the bytes of its
    values), from the shard's index as any reader of the sharding codec finds it."""
    from advise_cache.store import open_store

    a = open_store(store).ifm(key)
    per = a.meta.frames_per_shard
    path = store / "ifm" / key / "tokens" / "c" / str(int(a.offset[video]) // per + frame // per) / "0/0/0"
    tail = path.read_bytes()[-(16 * per + 4) : -4]
    start = int(np.frombuffer(tail, "<u8").reshape(per, 2)[frame % per, 0])
    return path, start, int(np.prod(a.tokens.shape[1:])) * a.tokens.dtype.itemsize


def patch_frame(store: Path, video: int, frame: int, at: int, data: bytes, key: str = "test-vit") -> None:
    """Overwrite bytes of a stored frame's values (from byte `at` of the frame) and its crc32c
    to match: damage that only the values themselves, or --deep, can show."""
    import google_crc32c

    path, start, size = frame_chunk(store, video, frame, key)
    raw = bytearray(path.read_bytes())
    raw[start + at : start + at + len(data)] = data
    crc = google_crc32c.value(bytes(raw[start : start + size]))
    raw[start + size : start + size + 4] = np.uint32(crc).astype("<u4").tobytes()
    path.write_bytes(bytes(raw))
