"""Stage 2 from the cache: loader, PRP training, resume, errors, and a 2-process run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import extract_config, read_metrics, train_config

from advise_cache.checkpoint import load_checkpoint
from advise_cache.configs import TMMConfig
from advise_cache.errors import AdviseCacheError, MismatchError, StoreError
from advise_cache.extract import extract_videos
from advise_cache.loader import ClipLoader, TokenSource
from advise_cache.runtime import backend_spec, sum_across
from advise_cache.sampling import SamplerConfig, prp_epoch
from advise_cache.store import open_store
from advise_cache.train import TrainingDiverged, train


def test_loader_returns_exactly_the_stored_tokens(synthetic_store):
    store = open_store(synthetic_store)
    source = TokenSource(store)
    videos, skipped = source.videos("train")
    assert skipped == 0 and len(videos) == 24
    plan = prp_epoch(videos, source.frames[videos], SamplerConfig(), seed=3, epoch=0)
    loader = ClipLoader(source, plan, batch_size=8)
    seen = []
    for x, y in loader:  # each batch is checked before the next is asked for (buffers are reused)
        assert x.shape == (8, 64, 8, 4, 4) and x.dtype == torch.float16
        assert x.is_contiguous(memory_format=torch.channels_last_3d)  # the stored layout, no host copy
        seen.append((x.permute(0, 2, 3, 4, 1).numpy().copy(), y.numpy().copy()))
    assert len(seen) == len(plan) // 8 == len(loader.batches)
    for (x, y), requests in zip(seen, loader.batches):
        for b, r in enumerate(requests):
            expected = store.ifm().read_video(r.video)[r.indices]  # (T, h, w, D) through zarr
            assert x[b].tobytes() == expected.astype(np.float16).tobytes()  # bit-equal
            assert y[b] == r.label
    # Preloaded tokens are the same tokens, whichever way they are read.
    source.preload(videos)
    r = plan[0]
    np.testing.assert_array_equal(source.clip(r.video, r.indices), store.ifm().read_video(r.video)[r.indices])
    x, _ = next(iter(ClipLoader(source, plan, batch_size=8)))
    assert x.permute(0, 2, 3, 4, 1).numpy().tobytes() == seen[0][0].tobytes()


def test_prp_loss_falls_and_accuracy_ends_well_above_chance(synthetic_store, tmp_path):
    final = train(train_config(synthetic_store, tmp_path / "prp", epochs=25, lr=5e-3, seed=0))
    epochs = read_metrics(tmp_path / "prp", "epoch")
    first, last = epochs[0], epochs[-1]
    assert last["loss"] < first["loss"] - 0.2, (first, last)
    assert final["acc"] >= 0.5, final  # chance is 0.25 with four rates
    ckpt = load_checkpoint(tmp_path / "prp")
    assert ckpt.meta.fingerprint["features"][0]["model"] == "test-vit"
    assert json.loads((tmp_path / "prp" / "checkpoint.json").read_text())["step"] == final["step"]
    assert {"loss", "acc", "lr", "clips_per_s"} <= set(read_metrics(tmp_path / "prp")[0])
    assert 0 <= last["data_wait_frac"] <= 1


def test_resumed_run_has_the_losses_of_an_uninterrupted_run(synthetic_store, tmp_path):
    full = tmp_path / "full"
    train(train_config(synthetic_store, full, epochs=3))
    cut = tmp_path / "cut"
    # Stop mid-epoch (6 steps an epoch here), then resume from that checkpoint.
    train(train_config(synthetic_store, cut, epochs=3, max_steps=8))
    assert load_checkpoint(cut).step == 8
    train(train_config(synthetic_store, cut, epochs=3, resume=True))
    a = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(full)]
    b = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(cut)]
    assert len(a) == 18 and a == b
    sa, sb = load_checkpoint(full).model, load_checkpoint(cut).model
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Resuming a finished run trains nothing and reports where it ended.
    again = train(train_config(synthetic_store, cut, epochs=3, resume=True))
    assert again["step"] == 18 and len(read_metrics(cut)) == 18


def test_resuming_a_finished_run_returns_its_metrics_without_building_a_model(synthetic_store, tmp_path, monkeypatch):
    """Drivers (pipelines/studies/ablation.py) resume every run of a study; a finished one must cost
    nothing and answer what it answered the first time."""
    import advise_cache.train as train_module

    run = tmp_path / "run"
    first = train(train_config(synthetic_store, run, epochs=2, max_steps=8))  # ends by max_steps
    written = (run / "checkpoint.pt").stat().st_mtime_ns, (run / "metrics.jsonl").read_text()

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run built a model")

    monkeypatch.setattr(train_module, "create_model", no_model)
    steps = []
    again = train(
        train_config(synthetic_store, run, epochs=2, max_steps=8, resume=True),
        on_step=lambda step, loss: steps.append(step),
    )
    assert again == first == load_checkpoint(run).meta.metrics and again["step"] == 8
    assert steps == []
    assert ((run / "checkpoint.pt").stat().st_mtime_ns, (run / "metrics.jsonl").read_text()) == written
    # More steps asked for: the same call trains again (the short cut is only for finished runs).
    with pytest.raises(AssertionError, match="built a model"):
        train(train_config(synthetic_store, run, epochs=2, resume=True))


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
        train(train_config(synthetic_store, run, epochs=2, resume=True, lr=1e38, override=True))
    after = load_checkpoint(run)
    assert after.step == before.step == 6
    assert all(torch.equal(before.model[k], after.model[k]) for k in before.model)


@pytest.mark.slow
def test_two_process_gloo_run(synthetic_store, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, *"-m torch.distributed.run --standalone --nproc_per_node 2 -m advise_cache.cli".split()]
    cmd += ["train", "--cache", str(synthetic_store), "--out", str(run)]
    cmd += "--epochs 2 --batch-size 8 --hidden 32 --out-dim 64 --device cpu --loader-threads 1 --log-every 4".split()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = load_checkpoint(run).meta
    assert meta.world == 2
    steps = read_metrics(run)
    # 24 videos x 4 clips = 96 clips an epoch, split over 2 ranks of batch 8: 6 steps an epoch,
    # a metrics line every 4 steps and at each epoch's end.
    assert [r["step"] for r in steps] == [4, 6, 8, 12]
    epochs = read_metrics(run, "epoch")
    assert [e["clips"] for e in epochs] == [96, 96]
    # --preload: each rank samples (and holds) only its half of the videos; as many clips an epoch.
    pre = tmp_path / "ddp-preload"
    cmd_pre = [*cmd, "--preload", "ram"]
    cmd_pre[cmd_pre.index("--out") + 1] = str(pre)
    cmd_pre.insert(cmd_pre.index("train"), "--verbose")
    done = subprocess.run(cmd_pre, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [e["clips"] for e in read_metrics(pre, "epoch")] == [96, 96]
    assert "preloaded 12 videos" in done.stderr
    # A user error that only rank 0 sees (the folder holds a run) ends both ranks with its message.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "exitcode  : 2" in again.stderr, again.stderr[-3000:]
    assert again.stderr.count("already holds a run; pass --resume") == 2, again.stderr[-3000:]


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


@pytest.mark.parametrize(
    "spec, serves_cpu", [("cuda:gloo", False), (backend_spec("cuda").replace("nccl", "gloo"), True)]
)
def test_metric_reductions_need_a_group_with_a_cpu_backend(tmp_path, spec, serves_cpu):
    """The old trainer all-reduced CPU tensors on an NCCL-only group and failed on its first
    step. A group without a CPU backend reproduces that failure here; the group init_distributed
    makes for CUDA (NCCL, swapped for gloo on this GPU-less machine) serves CPU tensors and the
    object collectives that share errors between ranks, beside the device's own tensors."""
    import torch.distributed as dist

    from advise_cache.runtime import Dist, all_ranks_agree

    dist.init_process_group(spec, init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        d = Dist(rank=0, world=2)  # world > 1 takes the collective paths; the group has one rank
        if serves_cpu:
            assert sum_across(torch.tensor([1.5, 2.0], dtype=torch.float64), d).tolist() == [1.5, 2.0]
            all_ranks_agree(Dist(rank=0, world=1), None)
        else:
            with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
                sum_across(torch.tensor([1.5, 2.0], dtype=torch.float64), d)
    finally:
        dist.destroy_process_group()


def test_training_flags_are_checked_before_any_work(synthetic_store, tmp_path):
    with pytest.raises(AdviseCacheError, match="--precision must be one of"):
        train(train_config(synthetic_store, tmp_path / "a", precision="fp8"))
    with pytest.raises(AdviseCacheError, match="--precision fp16 needs a CUDA device"):
        train(train_config(synthetic_store, tmp_path / "b", precision="fp16"))
    with pytest.raises(AdviseCacheError, match="--preload gpu needs a CUDA device"):
        train(train_config(synthetic_store, tmp_path / "c", preload="gpu"))
    with pytest.raises(AdviseCacheError, match="--preload must be one of"):
        train(train_config(synthetic_store, tmp_path / "d", preload="disk"))
    assert not any((tmp_path / n / "checkpoint.pt").exists() for n in "abcd")


def test_preloaded_run_trains_like_a_run_from_the_store(synthetic_store, tmp_path):
    a = train(train_config(synthetic_store, tmp_path / "store", epochs=2))
    b = train(train_config(synthetic_store, tmp_path / "ram", epochs=2, preload="ram"))
    assert [r["loss"] for r in read_metrics(tmp_path / "store")] == [r["loss"] for r in read_metrics(tmp_path / "ram")]
    assert a["loss"] == b["loss"]


def test_train_step_hook_sees_every_step_and_lines_follow_log_every(synthetic_store, tmp_path):
    seen = []
    train(
        train_config(synthetic_store, tmp_path / "run", epochs=2, log_every=4),
        on_step=lambda step, loss: seen.append((step, loss.device.type)),
    )
    assert seen == [(i, "cpu") for i in range(1, 13)]  # 6 steps an epoch
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [4, 6, 8, 12]


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"save_every": 0}, "--save-every must be >= 1"),
        ({"max_steps": 0}, "--max-steps must be >= 1"),
        ({"lr": float("nan")}, "--lr must be a finite number > 0"),
        ({"warmup_epochs": float("inf")}, "--warmup-epochs must be a finite number"),
        ({"weight_decay": -1.0}, "--weight-decay must be a finite number >= 0"),
        ({"label_smoothing": 1.0}, "--label-smoothing must be < 1"),
        ({"seed": -3}, "--seed must be >= 0"),
        ({"sampler": SamplerConfig(rates=(1, 1))}, "--rates must differ"),
    ],
)
def test_nonsense_flags_are_refused_before_any_work(synthetic_store, tmp_path, flags, message):
    with pytest.raises(AdviseCacheError, match=message):
        train(train_config(synthetic_store, tmp_path / "run", **flags))
    assert not (tmp_path / "run").exists()


def test_a_torn_last_metrics_line_does_not_stop_a_resume(synthetic_store, tmp_path):
    run = tmp_path / "run"
    train(train_config(synthetic_store, run, epochs=2, max_steps=6))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "step": 7, "lo')  # what a kill mid-write leaves
    final = train(train_config(synthetic_store, run, epochs=2, resume=True))
    assert final["step"] == 12
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 13))


def test_resume_with_other_optimisation_flags_needs_override(synthetic_store, tmp_path):
    run = tmp_path / "run"
    train(train_config(synthetic_store, run, epochs=2, max_steps=3))
    for flags in ({"lr": 5e-3}, {"batch_size": 8}, {"seed": 1}, {"epochs": 3}):
        with pytest.raises(MismatchError, match="was started with other settings .* pass --override"):
            train(train_config(synthetic_store, run, resume=True, **{"epochs": 2, **flags}))
    final = train(train_config(synthetic_store, run, resume=True, epochs=2, lr=5e-3, override=True))
    assert final["step"] == 12
    # Threads, logging and preloading are not part of the recipe.
    train(train_config(synthetic_store, run, resume=True, epochs=2, lr=5e-3, loader_threads=1, log_every=7))


def test_a_stale_checkpoint_json_is_rewritten_from_the_checkpoint(synthetic_store, tmp_path):
    run = tmp_path / "run"
    train(train_config(synthetic_store, run, epochs=2, max_steps=3))
    first = (run / "checkpoint.json").read_text()
    train(train_config(synthetic_store, run, epochs=2, resume=True))
    (run / "checkpoint.json").write_text(first)  # a kill between the .pt and the .json
    assert load_checkpoint(run).step == 12
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 12
