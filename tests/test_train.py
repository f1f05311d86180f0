"""Stage 2 from the cache: loader, PRP training, resume, errors, and a 2-process run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import extract_config, read_metrics, train_config

from advise_cache.errors import AdviseCacheError, MismatchError, StoreError
from advise_cache.extract import extract_videos
from advise_cache.loader import ClipLoader, TokenSource
from advise_cache.models import TMMConfig
from advise_cache.sampling import SamplerConfig, prp_epoch
from advise_cache.store import open_store
from advise_cache.train import TrainingDiverged, load_checkpoint, train


def test_loader_returns_exactly_the_stored_tokens(synthetic_store):
    store = open_store(synthetic_store)
    source = TokenSource(store)
    videos, skipped = source.videos("train")
    assert skipped == 0 and len(videos) == 24
    plan = prp_epoch(videos, source.frames[videos], SamplerConfig(), seed=3, epoch=0)
    loader = ClipLoader(source, plan, batch_size=8)
    batches = list(loader)
    assert len(batches) == len(plan) // 8
    for (x, y), requests in zip(batches, loader.batches):
        assert x.shape == (8, 64, 8, 4, 4) and x.dtype == torch.float32
        for b, r in enumerate(requests):
            expected = store.ifm().read_video(r.video)[r.indices]  # (T, h, w, D)
            np.testing.assert_array_equal(x[b].permute(1, 2, 3, 0).numpy(), expected.astype(np.float32))
            assert y[b] == r.label
    # Preloaded tokens are the same tokens.
    source.preload(videos)
    r = plan[0]
    np.testing.assert_array_equal(source.clip(r.video, r.indices), store.ifm().read_video(r.video)[r.indices])


def test_prp_loss_falls_and_accuracy_ends_well_above_chance(synthetic_store, tmp_path):
    final = train(train_config(synthetic_store, tmp_path / "prp", epochs=25, lr=5e-3, seed=0))
    epochs = read_metrics(tmp_path / "prp", "epoch")
    first, last = epochs[0], epochs[-1]
    assert last["loss"] < first["loss"] - 0.2, (first, last)
    assert final["acc"] >= 0.5, final  # chance is 0.25 with four rates
    ckpt = load_checkpoint(tmp_path / "prp")
    assert ckpt["meta"]["fingerprint"]["features"][0]["model"] == "test-vit"
    assert json.loads((tmp_path / "prp" / "checkpoint.json").read_text())["step"] == final["step"]
    assert {"loss", "acc", "lr", "clips_per_s"} <= set(read_metrics(tmp_path / "prp")[0])
    assert 0 <= last["data_wait_frac"] <= 1


def test_resumed_run_has_the_losses_of_an_uninterrupted_run(synthetic_store, tmp_path):
    full = tmp_path / "full"
    train(train_config(synthetic_store, full, epochs=3))
    cut = tmp_path / "cut"
    # Stop mid-epoch (6 steps an epoch here), then resume from that checkpoint.
    train(train_config(synthetic_store, cut, epochs=3, max_steps=8))
    assert load_checkpoint(cut)["step"] == 8
    train(train_config(synthetic_store, cut, epochs=3, resume=True))
    a = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(full)]
    b = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(cut)]
    assert len(a) == 18 and a == b
    sa, sb = load_checkpoint(full)["model"], load_checkpoint(cut)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Resuming a finished run trains nothing and reports where it ended.
    again = train(train_config(synthetic_store, cut, epochs=3, resume=True))
    assert again["step"] == 18 and len(read_metrics(cut)) == 18


def test_errors_before_any_training(synthetic_store, tmp_path):
    with pytest.raises(StoreError, match="no done video in split 'val'"):
        train(train_config(synthetic_store, tmp_path / "a", split="val"))
    with pytest.raises(AdviseCacheError, match="fewer than --batch-size"):
        train(train_config(synthetic_store, tmp_path / "b", batch_size=4096))
    with pytest.raises(MismatchError, match="larger than the store's 4x4 token grid"):
        train(train_config(synthetic_store, tmp_path / "e", tmm=TMMConfig(spatial_pool=9, hidden=8, out_dim=8)))
    with pytest.raises(StoreError, match="no image model 'nope'"):
        train(train_config(synthetic_store, tmp_path / "c", ifm=("nope",)))
    train(train_config(synthetic_store, tmp_path / "d", max_steps=2))
    with pytest.raises(AdviseCacheError, match="--resume"):
        train(train_config(synthetic_store, tmp_path / "d", max_steps=2))
    with pytest.raises(MismatchError, match="another model"):
        train(train_config(synthetic_store, tmp_path / "d", resume=True, tmm=TMMConfig(hidden=16, out_dim=64)))
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").glob("checkpoint*"))


def test_checkpoint_from_other_features_is_refused(synthetic_root, synthetic_store, tmp_path):
    other = tmp_path / "seed1.zarr"  # same videos, other weights of test-vit
    extract_videos(extract_config(synthetic_root, other, seed=1))
    train(train_config(other, tmp_path / "pre", max_steps=2))
    with pytest.raises(MismatchError, match="trained on features test-vit .* this store gives test-vit"):
        train(train_config(synthetic_store, tmp_path / "ft", task="classify", init=tmp_path / "pre"))


def test_store_with_no_done_video_is_refused(synthetic_root, tmp_path, monkeypatch):
    from advise_cache import store as store_mod

    out = tmp_path / "empty.zarr"
    monkeypatch.setattr(store_mod.IFMArrays, "write_shard", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        extract_videos(extract_config(synthetic_root, out))
    with pytest.raises(StoreError, match="no done video"):
        train(train_config(out, tmp_path / "run"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_store, tmp_path):
    run = tmp_path / "run"
    train(train_config(synthetic_store, run, epochs=2, max_steps=6))
    before = load_checkpoint(run)
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at step \d+; stopped"):
        train(train_config(synthetic_store, run, epochs=2, resume=True, lr=1e38))
    after = load_checkpoint(run)
    assert after["step"] == before["step"] == 6
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])


def test_two_process_gloo_run(synthetic_store, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "advise_cache.cli", "train", "--cache", str(synthetic_store), "--out", str(run),
           "--epochs", "2", "--batch-size", "8", "--hidden", "32", "--out-dim", "64", "--device", "cpu",
           "--loader-threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = load_checkpoint(run)["meta"]
    assert meta["world"] == 2
    steps = read_metrics(run)
    # 24 videos x 4 clips = 96 clips an epoch, split over 2 ranks of batch 8: 6 steps an epoch.
    assert [r["step"] for r in steps] == list(range(1, 13))
    epochs = read_metrics(run, "epoch")
    assert [e["clips"] for e in epochs] == [96, 96]


def test_loader_stops_cleanly_when_the_consumer_stops_early(synthetic_store):
    import threading
    import time

    source = TokenSource(open_store(synthetic_store))
    videos, _ = source.videos("train")
    plan = prp_epoch(videos, source.frames[videos], SamplerConfig(), seed=0, epoch=0)[:32]

    def consume() -> None:
        for i, _ in enumerate(ClipLoader(source, plan, batch_size=8, prefetch=2)):
            if i == 1:
                time.sleep(0.5)  # the producer fills the queue and waits to hand over its end
                break

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "ClipLoader did not stop after its consumer did"
