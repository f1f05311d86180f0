"""The paper's effects on the synthetic families: PRP teaches the TMM something a broken pretext
task does not, and pooling the grid to 1 costs a motion task more accuracy than an appearance task.

    .venv/bin/python -m pytest tests/test_effects.py

Both are measured as pipelines/demo.py measures them: a linear probe (logistic regression on
the frozen TMM's pooled features, fitted on the train split, scored on the test split), on
stores smaller than the demo's and with a shorter PRP so that CI can afford them (about a
minute for the file on 2 idle cores). The seed is fixed, so the tests never flake; README
("make demo") has the effects at the demo's size over three seeds. MARGIN was fixed before
the first run. POOL_MARGIN was set from the test-set size after exploratory runs of several
configurations (this one's among them, with seed 1 already weak) and not moved since; what
the test then gave for seeds 0, 1 and 2 is beside it.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import extract_config, load_pipeline

import advise_cache.train as train_module
from advise_cache.checkpoint import load_model
from advise_cache.models import TMMConfig
from advise_cache.sampling import ClipRequest, SamplerConfig
from advise_cache.store import open_store
from advise_cache.train import TrainConfig, train

# Videos per class (train, test). Motion gets 64 test videos, so that a probe's accuracy on it
# moves 1.6 points per video; appearance accuracies sit near 1, where 32 suffice.
SIZES = {"motion": (12, 16), "appearance": (6, 8)}
FRAMES = {"min_frames": 24, "max_frames": 48}  # shorter videos break PRP's fast rates on motion
TMM = TMMConfig(hidden=64, out_dim=256, head_hidden=256)
SEED = 0
# A pretext task that taught nothing leaves the probe within a few test videos of a random
# TMM (64 test videos: one is 1.6 points); PRP must beat the random TMM by more than that.
MARGIN = 0.15
# Pooling must cost motion more points than appearance by 6.4 of the 64 motion test videos:
# about one standard error of the difference of the two losses (four binomial accuracies near
# 0.5, 0.25, 1 and 0.9 on 64, 64, 32 and 32 videos give 0.09), so one seed passing is modest
# evidence. Run with SEED 0, 1, 2 after it was set, the differences were 0.33, 0.05 and 0.36:
# seed 1's motion probe reached only 0.44 on the full grid, and its difference, though of the
# right sign, fell under the margin. The test runs seed 0.
POOL_MARGIN = 0.10


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny 4 x 4 x 64 clips: one thread is faster than two fighting, and far faster when the
    # cores are shared (the demo runs its processes the same way).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo():
    pipelines = str(Path(__file__).resolve().parents[1] / "pipelines")
    sys.path.insert(0, pipelines)  # demo.py imports common.py, as a script does
    yield from load_pipeline("demo")
    sys.path.remove(pipelines)


def _store(tmp_path_factory, family: str) -> Path:
    from advise_cache.extract import extract_videos
    from advise_cache.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp(family)
    train_n, test_n = SIZES[family]
    generate_synthetic(root, family, SEED, train_per_class=train_n, test_per_class=test_n, **FRAMES)
    out = tmp_path_factory.mktemp("stores") / f"{family}.zarr"
    # Bigger shards and batches than conftest's: half the time for the same tokens.
    summary = extract_videos(
        extract_config(root, out, dataset=f"synthetic-{family}", frames_per_shard=64, batch_size=64)
    )
    assert summary.exit_code == 0, summary.failed
    return out


@pytest.fixture(scope="module")
def motion_store(tmp_path_factory) -> Path:
    return _store(tmp_path_factory, "motion")


@pytest.fixture(scope="module")
def appearance_store(tmp_path_factory) -> Path:
    return _store(tmp_path_factory, "appearance")


def pretrain(store: Path, out: Path, spatial_pool: int | None = None) -> Path:
    """PRP as the demo runs it (full recipe: rates 1, 2, 4, 8, jitter 0.2), shortened."""
    cfg = TrainConfig(
        cache=store,
        out=out,
        task="prp",
        epochs=15,
        batch_size=16,
        lr=1e-2,
        warmup_epochs=1,
        tmm=replace(TMM, spatial_pool=spatial_pool),
        sampler=SamplerConfig(clips_per_video=8),
        device="cpu",
        seed=SEED,
        preload="ram",
        loader_threads=1,
        progress=False,
    )
    train(cfg)
    return out


def probe(demo, store: Path, run: Path, mode: str) -> float:
    model, _, _ = load_model(run, open_store(store), torch.device("cpu"))
    return demo.probe_accuracy(model, store, mode)


@pytest.fixture(scope="module")
def motion_prp(motion_store, tmp_path_factory) -> Path:
    return pretrain(motion_store, tmp_path_factory.mktemp("prp") / "motion")


def test_prp_probe_beats_random_and_shuffled_pretext(demo, motion_store, motion_prp, tmp_path, monkeypatch):
    real = train_module.prp_epoch

    def shuffled_labels(*args, **kwargs):
        # The same clips, their rate labels permuted: nothing left to learn from the clip.
        plan = real(*args, **kwargs)
        rng = np.random.default_rng([7, kwargs.get("epoch", args[4] if len(args) > 4 else 0)])
        labels = rng.permutation([c.label for c in plan])
        return [ClipRequest(c.video, c.indices, int(y)) for c, y in zip(plan, labels)]

    monkeypatch.setattr(train_module, "prp_epoch", shuffled_labels)
    broken = pretrain(motion_store, tmp_path / "shuffled")
    monkeypatch.setattr(train_module, "prp_epoch", real)

    in_dim = open_store(motion_store).ifm().dim
    acc_prp = probe(demo, motion_store, motion_prp, "stride")
    acc_broken = probe(demo, motion_store, broken, "stride")
    acc_random = demo.probe_accuracy(demo.random_model(TMM, in_dim, SEED), motion_store, "stride")
    print(f"linear probe on motion: PRP {acc_prp:.3f}, shuffled PRP {acc_broken:.3f}, random {acc_random:.3f}")
    assert acc_prp - acc_random > MARGIN
    assert acc_broken - acc_random < MARGIN


def test_pooling_the_grid_to_1_costs_motion_more_than_appearance(
    demo, motion_store, motion_prp, appearance_store, tmp_path
):
    """Finding 1 (README, "Ablations"): pooled to 1 x 1, the motion family loses what its class
    is (a small disc's speed is seen only through its position), the appearance family keeps
    most of it (a large shape's colour survives the average over the grid). The claim is in
    absolute points of probe accuracy, as the issue states it."""
    acc = {}
    for family, store, full in (("motion", motion_store, motion_prp), ("appearance", appearance_store, None)):
        full = full or pretrain(store, tmp_path / f"{family}-full")
        pooled = pretrain(store, tmp_path / f"{family}-pool1", spatial_pool=1)
        acc[family] = [probe(demo, store, run, "stride") for run in (full, pooled)]
        print(f"{family}: probe {acc[family][0]:.3f} on the 4x4 grid, {acc[family][1]:.3f} pooled to 1x1")
    lost = {family: full - pooled for family, (full, pooled) in acc.items()}
    assert lost["motion"] - lost["appearance"] > POOL_MARGIN, lost


def test_probe_and_table_on_known_numbers(demo):
    # The probe reads a class signal that is there, and none from labels that carry none.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    y_train, y_test = np.repeat(np.arange(4), 20), np.repeat(np.arange(4), 10)
    x_train = centres[y_train] + 0.5 * rng.normal(size=(80, 16))
    x_test = centres[y_test] + 0.5 * rng.normal(size=(40, 16))
    assert demo.fit_probe(x_train, y_train, x_test, y_test) == 1.0
    noise = rng.normal(size=(80, 16)), rng.normal(size=(40, 16))
    assert demo.fit_probe(noise[0], y_train, noise[1], y_test) < 0.45
    # Mean and sample standard deviation over seeds, ΔAcc signed.
    row = dict(ft_prp=0.5, delta=-0.1, probe_prp=0.5, probe_random=0.25, avgpool=0.25)
    table = demo.render({"motion": [row, {**row, "ft_prp": 0.7, "delta": 0.1}]}, [0, 1])
    assert "| synthetic-motion | 60.0 ± 14.1 | +0.0 ± 14.1 | 50.0 ± 0.0 | 25.0 ± 0.0 | 25.0 ± 0.0 |" in table
