"""The paper's effects on the synthetic families, as means over several data draws: PRP teaches the
TMM something a broken pretext task does not, and pooling the grid to 1 costs a motion task more
accuracy than an appearance task; and PRP never reads the store's class labels.

    .venv/bin/python -m pytest tests/test_effects.py
    ADVISE_EFFECT_DRAWS=3,4,5 .venv/bin/python -m pytest tests/test_effects.py   # other draws

Each effect is measured as pipelines/studies/demo.py measures it, with a linear probe (logistic regression
on the frozen TMM's pooled features, fitted on the train split, scored on the test split), on
stores smaller than the demo's and with a shorter PRP so that CI can afford them, and asserted on
its mean over DRAWS: the videos generated anew with each seed (the training seed stays 0). One
draw is too few: in an earlier version of this file (one draw, a TMM of hidden 64), the pooling
difference was 0.33, 0.05 and 0.36 on draws 0, 1 and 2. The margins follow from the test-set
sizes (below); this configuration (a TMM of hidden 32, so that three draws cost about what one
did) was chosen after a run of draws 0 and 1, and then checked on draws it had not seen
(README's Layout section says which, and what they gave).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import extract_config

import advise_cache.train as train_module
from advise_cache.checkpoint import load_checkpoint
from advise_cache.configs import TMMConfig
from advise_cache.sampling import ClipRequest, SamplerConfig
from advise_cache.store import open_store
from advise_cache.train import TrainConfig, train
from advise_cache.trained import load_model

pytestmark = pytest.mark.slow  # `make test-fast` leaves this file out

DRAWS = tuple(int(s) for s in os.environ.get("ADVISE_EFFECT_DRAWS", "0,1,2").split(",") if s.strip())
# Videos per class (train, test): 64 motion test videos a draw (one is 1.6 points), 192 over three.
SIZES = {"motion": (12, 16), "appearance": (6, 8)}
FRAMES = {"min_frames": 24, "max_frames": 48}  # shorter videos break PRP's fast rates on motion
TMM = TMMConfig(hidden=32, out_dim=128, head_hidden=128)
SEED = 0  # training seed; the draws vary the data
# A probe accuracy near 0.5 on 64 videos has a standard error of 0.063, the difference of two 0.088,
# its mean over three draws 0.051. A pretext task that taught nothing stays within about that of
# the random TMM; PRP must beat the random TMM by about twice it.
MARGIN = 0.10
# Pooling must cost motion more than appearance by more than the standard error of the mean
# difference of the four probes (motion near 0.5 and 0.25 on 64, appearance near 1 and 0.9 on 32
# videos: 0.098 a draw, 0.057 over three) by a clear step: 0.10.
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
    from pipelines.studies import demo

    return demo


def _store(tmp_path_factory, family: str, draw: int) -> Path:
    from advise_cache.extract import extract_videos
    from advise_cache.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp(f"{family}{draw}")
    train_n, test_n = SIZES[family]
    generate_synthetic(root, family, draw, train_per_class=train_n, test_per_class=test_n, **FRAMES)
    out = tmp_path_factory.mktemp("stores") / f"{family}{draw}.zarr"
    # Bigger shards and batches than conftest's: half the time for the same tokens.
    summary = extract_videos(
        extract_config(root, out, dataset=f"synthetic-{family}", frames_per_shard=64, batch_size=64)
    )
    assert summary.exit_code == 0, summary.failed
    return out


def pretrain(store: Path, out: Path, spatial_pool: int | None = None, epochs: int = 12) -> Path:
    """PRP as the demo runs it (full recipe: rates 1, 2, 4, 8, jitter 0.2), shortened."""
    cfg = TrainConfig(
        cache=store,
        out=out,
        task="prp",
        epochs=epochs,
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


def shuffled_pretrain(store: Path, out: Path) -> Path:
    """PRP on the same clips with their rate labels permuted: nothing left to learn from a clip."""
    real = train_module.prp_epoch

    def shuffled_labels(*args, **kwargs):
        plan = real(*args, **kwargs)
        rng = np.random.default_rng([7, kwargs.get("epoch", args[4] if len(args) > 4 else 0)])
        labels = rng.permutation([c.label for c in plan])
        return [ClipRequest(c.video, c.indices, int(y)) for c, y in zip(plan, labels)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "prp_epoch", shuffled_labels)
        return pretrain(store, out)


def probe(demo, store: Path, run: Path, mode: str = "stride") -> float:
    model, _, _ = load_model(run, open_store(store), torch.device("cpu"))
    return demo.probe_accuracy(model, store, mode)


@pytest.fixture(scope="module")
def draws(demo, tmp_path_factory) -> list[dict]:
    """Per data draw, the probe accuracy of every TMM the tests compare."""
    results = []
    for draw in DRAWS:
        runs = tmp_path_factory.mktemp(f"runs{draw}")
        motion, appearance = (_store(tmp_path_factory, f, draw) for f in ("motion", "appearance"))
        in_dim = open_store(motion).ifm().dim
        acc = {
            "random": demo.probe_accuracy(demo.random_model(TMM, in_dim, SEED), motion, "stride"),
            "prp": probe(demo, motion, pretrain(motion, runs / "prp")),
            "shuffled": probe(demo, motion, shuffled_pretrain(motion, runs / "shuffled")),
            "motion_pool1": probe(demo, motion, pretrain(motion, runs / "motion-pool1", spatial_pool=1)),
            "appearance": probe(demo, appearance, pretrain(appearance, runs / "appearance")),
            "appearance_pool1": probe(demo, appearance, pretrain(appearance, runs / "appearance-pool1", 1)),
        }
        print(f"draw {draw}: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
        results.append(acc)
    return results


def mean(draws: list[dict], fn) -> float:
    return float(np.mean([fn(a) for a in draws]))


def test_prp_probe_beats_random_and_shuffled_pretext(draws):
    gain = mean(draws, lambda a: a["prp"] - a["random"])
    broken = mean(draws, lambda a: a["shuffled"] - a["random"])
    print(f"mean over draws {DRAWS}: PRP - random {gain:+.3f}, shuffled PRP - random {broken:+.3f}")
    assert gain > MARGIN
    assert broken < MARGIN


def test_pooling_the_grid_to_1_costs_motion_more_than_appearance(draws):
    """Finding 1 (README, "Ablations"): pooled to 1 x 1, the motion family loses what its class
    is (a small disc's speed is seen only through its position), the appearance family keeps
    most of it (a large shape's colour survives the average over the grid). The claim is in
    absolute points of probe accuracy, as the issue states it."""
    motion = mean(draws, lambda a: a["prp"] - a["motion_pool1"])
    appearance = mean(draws, lambda a: a["appearance"] - a["appearance_pool1"])
    print(f"mean over draws {DRAWS}: pooling costs motion {motion:.3f}, appearance {appearance:.3f}")
    assert motion - appearance > POOL_MARGIN


def test_prp_never_reads_class_labels(synthetic_store, tmp_path):
    """PRP's labels are playback rates: the same store with its class labels permuted gives the
    same PRP checkpoint, bit for bit (weights and optimizer state)."""
    import zarr

    permuted = tmp_path / "permuted.zarr"
    shutil.copytree(synthetic_store, permuted)
    labels = zarr.open_group(permuted, mode="r+", zarr_format=3)["videos"]["label"]
    before = labels[:]
    labels[:] = np.roll(before, 1)
    assert (open_store(permuted).videos.label != before).any()
    ckpts = [
        load_checkpoint(pretrain(store, tmp_path / name, epochs=2))
        for store, name in ((synthetic_store, "as-is"), (permuted, "permuted"))
    ]
    for part in ("model", "optimizer"):
        a, b = (torch.utils._pytree.tree_leaves(getattr(c, part)) for c in ckpts)
        assert len(a) == len(b) > 0
        assert all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b)), part


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
    # Mean and sample standard deviation over seeds, ΔAcc signed; average pooling shared by the rows.
    row = dict(ft_prp=0.5, delta=-0.1, delta_matched=0.2, probe_prp=0.5, probe_random=0.25)
    runs = {"default": [row, {**row, "ft_prp": 0.7, "delta": 0.1}], "avgpool": [{"avgpool": 0.25}] * 2}
    table = demo.render({0: {"motion": runs}}, [0, 1])
    assert (
        "| synthetic-motion | default | 60.0 ± 14.1 | +0.0 ± 14.1 | +20.0 ± 0.0 | 50.0 ± 0.0 | 25.0 ± 0.0 | 25.0 ± 0.0 |"
        in table
    )
    assert "released" not in table  # a TMM that did not run has no row
