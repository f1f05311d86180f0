"""Transfer between stores, activation-map figures and clip embeddings, on tiny synthetic stores.

PRP is pretrained on the shared "both"-family store and fine-tuned on a separately generated
temporal-family store: other root, other videos, same test-vit weights.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, extract_config
from PIL import Image
from typer.testing import CliRunner

from advise_cache import train as train_module
from advise_cache.checkpoint import check_features, load_checkpoint
from advise_cache.cli import app
from advise_cache.embed import load_embeddings, tsne_2d
from advise_cache.errors import DecodeError, MismatchError, StoreError
from advise_cache.extract import extract_videos
from advise_cache.loader import TokenSource, collate
from advise_cache.models import create_model
from advise_cache.sampling import multi_view_clips
from advise_cache.store import open_store
from advise_cache.visualize import (
    BOTTOM,
    GAP,
    LABEL,
    cell_pixels,
    channel_norm,
    compose_grid,
    compute_activations,
    figure_size,
    normalise,
    visualize,
)

runner = CliRunner()
TINY_TMM = "--hidden 32 --out-dim 64 --device cpu --loader-threads 1".split()
FINETUNE = "--epochs 1 --batch-size 4 --device cpu --loader-threads 1".split()
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def cli(*args: str) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def temporal_root(tmp_path_factory) -> Path:
    from advise_cache.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("temporal")
    generate_synthetic(root, family="temporal", seed=0, **TINY)
    return root


@pytest.fixture(scope="module")
def temporal_store(temporal_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tstores") / "temporal.zarr"
    summary = extract_videos(extract_config(temporal_root, out, dataset="synthetic-temporal"))
    assert summary.exit_code == 0, summary.failed
    return out


@pytest.fixture(scope="module")
def runs(synthetic_store, temporal_store, tmp_path_factory) -> dict[str, Path]:
    """PRP on the "both" store; fine-tunes on the temporal store from it and from scratch."""
    base = tmp_path_factory.mktemp("runs")
    out = {name: base / name for name in ("prp", "ft", "scratch")}
    # Whole epochs (24 train videos x 1 clip / 8 = 3 steps; 12 / 4 = 3): no --max-steps, since
    # stopping mid-epoch can leave ClipLoader waiting on its full queue.
    epoch = "--epochs 1 --clips-per-video 1 --batch-size 8".split()
    cli("train", "--cache", synthetic_store, "--out", out["prp"], *epoch, *TINY_TMM)
    for name, start in (("ft", ["--init", out["prp"]]), ("scratch", ["--scratch", *TINY_TMM[:4]])):
        cli("finetune", "--cache", temporal_store, "--out", out[name], *start, *FINETUNE)
    return out


@pytest.fixture(scope="module")
def video(temporal_store) -> str:
    """The name of the store's first test video (as `info` and the table list it)."""
    table = open_store(temporal_store).videos
    return str(table.name[table.split == "test"][0])


def relative_file(store_path: Path, name: str) -> Path:
    """Where a video's file lies relative to the dataset root recorded in the store."""
    store = open_store(store_path)
    path = Path(str(store.videos.path[store.videos.name == name][0]))
    return path.relative_to(store.meta["root"])


def tmm_params(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("tmm.") and not k.endswith(BN_BUFFERS)}


# -- transfer ------------------------------------------------------------------------------
def test_stores_of_other_roots_with_the_same_ifm_share_features(synthetic_store, temporal_store):
    a, b = open_store(synthetic_store), open_store(temporal_store)
    assert a.root != b.root and a.dataset != b.dataset
    check_features(a.fingerprint(["test-vit"]), b.fingerprint(["test-vit"]), "x")


def test_finetune_on_another_store_from_a_pretrained_tmm(runs, temporal_store):
    meta = load_checkpoint(runs["ft"]).meta
    assert meta.task == "classify" and meta.init == str(runs["prp"])
    assert meta.dataset == "synthetic-temporal" and meta.num_classes == 4
    assert meta.tmm == load_checkpoint(runs["prp"]).meta.tmm  # the TMM comes from --init
    assert np.isfinite(meta.metrics["loss"])


def test_init_loads_the_pretrained_tmm_weights(runs, temporal_store, tmp_path, monkeypatch):
    # The parameters handed to the optimiser are the ones the first step starts from.
    made, start = [], []
    real_create, real_adamw = train_module.create_model, torch.optim.AdamW

    def create(*args):
        made.append(real_create(*args))
        return made[-1]

    def adamw(params, **kw):
        start.append({n: p.detach().clone() for n, p in made[-1].named_parameters()})
        return real_adamw(params, **kw)

    monkeypatch.setattr(train_module, "create_model", create)
    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    prp = tmm_params(load_checkpoint(runs["prp"]).model)
    for name, how in (("init", ["--init", runs["prp"]]), ("scratch", ["--scratch", *TINY_TMM[:4]])):
        cli("finetune", "--cache", temporal_store, "--out", tmp_path / name, *how, *FINETUNE)
        initial = tmm_params(start[-1])
        assert initial.keys() == prp.keys()
        same = all(torch.equal(initial[k], prp[k]) for k in prp)
        assert same == (name == "init"), name
        final = tmm_params(load_checkpoint(tmp_path / name).model)
        assert not all(torch.equal(final[k], initial[k]) for k in prp)  # and then it trained


def test_finetune_refuses_a_store_of_other_weights(runs, temporal_root, tmp_path):
    other = tmp_path / "seed1.zarr"
    extract_videos(extract_config(temporal_root, other, dataset="synthetic-temporal", seed=1, shard=(0, 4)))
    args = ["finetune", "--cache", str(other), "--out", str(tmp_path / "ft"), "--init", str(runs["prp"])]
    r = runner.invoke(app, [*args, "--device", "cpu"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    ours = open_store(other).ifm("test-vit").meta.weights_sha256[:12]
    theirs = load_checkpoint(runs["prp"]).meta.fingerprint["features"][0]["weights_sha256"][:12]
    assert ours != theirs
    assert f"--init {runs['prp']} was trained on features" in r.output
    assert f"weights {theirs}" in r.output
    assert f"this store gives test-vit (none, grid [4, 4], dim 64, weights {ours}" in r.output
    assert not (tmp_path / "ft" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "field, value",
    [("model", "ViT-B-16"), ("dim", 768), ("grid", [14, 14]), ("normalisation", "timm forward_features")],
)
def test_other_image_models_are_refused_naming_both_sides(synthetic_store, field, value):
    ours = open_store(synthetic_store).fingerprint(["test-vit"])
    theirs = copy.deepcopy(ours)
    theirs["features"][0][field] = value
    with pytest.raises(MismatchError) as e:
        check_features(theirs, ours, "--init X")
    theirs_text, ours_text = str(e.value).split("; this store gives ")
    assert theirs_text.startswith("--init X was trained on features ") and ours_text.startswith("test-vit (")
    if field != "normalisation":  # the message does not print the normalisation
        assert str(value) in theirs_text and str(value) not in ours_text


# -- visualize -----------------------------------------------------------------------------
def test_visualize_draws_one_row_per_model(runs, video, temporal_store, tmp_path):
    png = tmp_path / "fig.png"
    args = ["--cache", temporal_store, "--checkpoint", runs["ft"], "--compare", runs["scratch"], "--video", video]
    out = cli("visualize", *args, "--out", png, "--frames", "6", "--device", "cpu")
    assert "4 rows (ft, scratch, untrained TMM, IFM tokens) x 6 frames" in out
    size = open_store(temporal_store).ifm("test-vit").meta.input_size
    with Image.open(png) as im:
        assert im.size == figure_size(4, 6, size)  # frames row + 4 model rows, 6 columns
        pixels = np.asarray(im.convert("RGB"))
    # The grid itself: 5 rows of cells, each cell the crop enlarged by a whole factor.
    cell = cell_pixels(size)
    assert cell % size == 0
    grid = compose_grid(
        compute_activations(temporal_store, [runs["ft"], runs["scratch"]], video, frames=6, device="cpu")
    )
    assert grid.shape == (5 * cell + 4 * GAP, 6 * cell + 5 * GAP, 3)
    top = pixels.shape[0] - BOTTOM - grid.shape[0]
    np.testing.assert_array_equal(pixels[top : top + grid.shape[0], LABEL : LABEL + grid.shape[1]], grid)


def test_activations_are_channel_norms_over_the_same_clip(runs, video, temporal_store):
    acts = compute_activations(temporal_store, [runs["ft"], runs["prp"]], video, frames=5, device="cpu")
    assert [r.label.splitlines()[0] for r in acts.rows] == ["ft", "prp", "untrained TMM", "IFM tokens"]
    assert "fine-tuned from prp" in acts.rows[0].label and "PRP-pretrained" in acts.rows[1].label
    store = open_store(temporal_store)
    size = store.ifm("test-vit").meta.input_size
    assert acts.frames.shape == (5, size, size, 3) and acts.frames.dtype == np.uint8
    for row in acts.rows:
        assert row.maps.shape == (5, size, size)
        assert row.maps.min() >= 0 and row.maps.max() <= 1 and row.high > row.low
    # The IFM row: the tokens' own channel-wise L2 norm of exactly this clip.
    v = int(np.flatnonzero(store.videos.name == video)[0])
    tokens = TokenSource(store).clip(v, acts.clip).numpy().astype(np.float32)
    raw = np.linalg.norm(tokens, axis=-1)
    assert acts.rows[-1].low == pytest.approx(raw.min(), rel=1e-5)
    assert acts.rows[-1].high == pytest.approx(raw.max(), rel=1e-5)
    # channel_norm reduces the channel axis of the (C, T, h, w) layout the models use.
    np.testing.assert_allclose(channel_norm(collate([tokens])[0]), raw, rtol=1e-5)
    assert normalise(raw).min() == 0 and normalise(raw).max() == 1


def test_visualize_finds_a_moved_dataset_with_video_root(runs, video, temporal_root, temporal_store, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(temporal_root, moved)
    here = compute_activations(temporal_store, [runs["ft"]], video, frames=4, device="cpu")
    there = compute_activations(temporal_store, [runs["ft"]], video, frames=4, video_root=moved, device="cpu")
    np.testing.assert_array_equal(here.frames, there.frames)


def test_visualize_refuses_a_file_that_changed(runs, video, temporal_root, temporal_store, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(temporal_root, moved)
    table = open_store(temporal_store).videos
    n = table.source_frames[table.name == video][0]
    other = next(str(name) for name, m in zip(table.name, table.source_frames) if m != n)
    shutil.copy(moved / relative_file(temporal_store, other), moved / relative_file(temporal_store, video))
    with pytest.raises(DecodeError, match="the file changed since extraction"):
        compute_activations(temporal_store, [runs["ft"]], video, frames=4, video_root=moved, device="cpu")


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown", "has no video named 'nope'"),
        ("missing", "no such file"),
        ("corrupt", "cannot open as video"),
        ("no-checkpoint", "does not exist"),
    ],
)
def test_visualize_user_mistakes_get_one_clear_line(
    runs, video, temporal_root, temporal_store, tmp_path, case, message
):
    args = ["visualize", "--cache", str(temporal_store), "--checkpoint", str(runs["ft"]), "--video", video]
    args += ["--out", str(tmp_path / "fig.png"), "--device", "cpu"]
    if case == "unknown":
        args[args.index(video)] = "nope"
    elif case == "missing":
        args += ["--video-root", str(tmp_path / "empty")]
    elif case == "corrupt":
        moved = tmp_path / "moved"
        shutil.copytree(temporal_root, moved)
        (moved / relative_file(temporal_store, video)).write_bytes(b"not a video at all" * 100)
        args += ["--video-root", str(moved)]
    else:
        args += ["--compare", str(tmp_path / "nothing-here")]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "fig.png").exists()
    if case in ("missing", "corrupt"):
        assert f"cannot read video {video}" in r.output


def test_visualize_api_errors(runs, video, temporal_store, tmp_path):
    short = video.rsplit("/", 1)[-1]  # the file's stem is not the name: the name has the split
    with pytest.raises(StoreError, match=f"has no video named '{short}'.*e.g. .*{video}"):
        visualize(temporal_store, [runs["ft"]], short, tmp_path / "x.png", device="cpu")
    with pytest.raises(MismatchError):
        visualize(temporal_store, [runs["ft"]], video, tmp_path / "x.png", frames=0, device="cpu")


# -- embed ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_embed_equals_the_pooled_tmm_output(runs, video, temporal_store, tmp_path):
    npz, png = tmp_path / "emb.npz", tmp_path / "tsne.png"
    args = ["--cache", temporal_store, "--checkpoint", runs["ft"], "--out", npz]
    out = cli("embed", *args, "--views", "3", "--plot", png, "--device", "cpu")
    store = open_store(temporal_store)
    test = np.flatnonzero(store.videos.split == "test")
    emb = load_embeddings(npz)
    assert emb.embeddings.shape == (len(test), 64) and emb.embeddings.dtype == np.float32
    assert f"{len(test)} videos x 64 dims" in out
    assert emb.names.tolist() == [str(n) for n in store.videos.name[test]]
    assert emb.labels.tolist() == store.videos.label[test].tolist() and emb.classes == store.classes
    assert emb.meta["views"] == 3 and emb.meta["split"] == "test"
    with Image.open(png) as im:
        assert im.size[0] > 100
    # Directly: the model's pooled features on the same three clips, averaged.
    ckpt = load_checkpoint(runs["ft"])
    model = create_model(ckpt.meta.tmm, ckpt.meta.num_classes)
    model.load_state_dict(ckpt.model)
    model.eval()
    i = int(np.flatnonzero(emb.names == video)[0])
    v = int(test[i])
    source = TokenSource(store)
    sampler = ckpt.meta.config.sampler
    clips = multi_view_clips(int(source.frames[v]), sampler.frames, sampler.stride, 3, "stride")
    with torch.no_grad():
        direct = model.features(collate([source.clip(v, c) for c in clips])).mean(0).numpy()
    np.testing.assert_allclose(emb.embeddings[i], direct, rtol=1e-5, atol=1e-6)


def test_embed_works_from_a_pretext_checkpoint_and_every_split(runs, synthetic_store, tmp_path):
    npz = tmp_path / "prp.npz"
    args = ["--cache", synthetic_store, "--checkpoint", runs["prp"], "--out", npz]
    cli("embed", *args, *"--views 1 --split all --device cpu".split())
    emb = load_embeddings(npz)
    assert emb.embeddings.shape == (len(open_store(synthetic_store).videos), 64)
    assert emb.meta["task"] == "prp"


def test_embed_user_mistakes(runs, temporal_store, tmp_path):
    args = ["embed", "--cache", str(temporal_store), "--checkpoint", str(runs["ft"]), "--out", str(tmp_path / "e.npz")]
    r = runner.invoke(app, [*args, *"--split val --device cpu".split()])
    assert r.exit_code == 2 and "no done video in split 'val'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, [*args, "--views", "0"])
    assert r.exit_code == 2 and "--views" in r.output


def test_tsne_keeps_separate_groups_apart_and_is_reproducible():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (10, 16)), rng.normal(8, 1, (10, 16))])
    xy = tsne_2d(x, seed=0)
    assert xy.shape == (20, 2) and np.array_equal(xy, tsne_2d(x, seed=0))
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.diag(np.full(20, np.inf))
    group = np.arange(20) >= 10
    assert (group[d.argmin(1)] == group).all()  # every point's nearest neighbour is of its group
