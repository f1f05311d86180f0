"""Fine-tuning, linear probing, multi-view evaluation and the average-pooling baseline."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_metrics, train_config, write_video
from typer.testing import CliRunner

from advise_cache.checkpoint import load_checkpoint, save_checkpoint
from advise_cache.cli import app
from advise_cache.configs import TMMConfig
from advise_cache.errors import MismatchError, StoreError
from advise_cache.evaluate import evaluate, video_outputs
from advise_cache.extract import extract_videos
from advise_cache.loader import collate
from advise_cache.sampling import multi_view_clips
from advise_cache.store import open_store
from advise_cache.train import train
from advise_cache.trained import load_model

runner = CliRunner()
SMALL_TMM = TMMConfig(hidden=32, out_dim=64, head_hidden=64)


@pytest.fixture(scope="module")
def temporal_runs(temporal_store, tmp_path_factory) -> dict[str, Path]:
    """On the temporal family: the TMM and average pooling, both fine-tuned from scratch."""
    base = tmp_path_factory.mktemp("temporal_runs")
    runs = {}
    for name, tmm in (("tmm", SMALL_TMM), ("avgpool", TMMConfig(tmm="none", head_hidden=64))):
        runs[name] = base / name
        train(
            train_config(
                temporal_store,
                runs[name],
                task="classify",
                epochs=30,
                lr=5e-3,
                tmm=tmm,
                batch_size=8,
                clip_mode="segment",
            )
        )
    return runs


@pytest.mark.slow  # the module's temporal_runs: two trainings
def test_the_tmm_sees_order_that_average_pooling_cannot(temporal_store, temporal_runs):
    # Fine-tuning learns the labels well above chance (0.25); and since the temporal
    # family's frames look alike in every class, pooling over time stays at chance while
    # the TMM does not (the paper's Table 5 effect).
    tmm = evaluate(temporal_store, temporal_runs["tmm"], views=2, device="cpu")
    avg = evaluate(temporal_store, temporal_runs["avgpool"], views=2, device="cpu")
    assert tmm["videos"] == avg["videos"] == 24
    assert tmm["top1"] >= 0.6, tmm["top1"]
    assert avg["top1"] <= 0.4, avg["top1"]


@pytest.mark.slow  # the module's temporal_runs: two trainings
def test_multi_view_logits_are_the_mean_of_each_views_logits(temporal_store, temporal_runs):
    store = open_store(temporal_store)
    model, meta, source = load_model(temporal_runs["tmm"], store, torch.device("cpu"))
    videos, _ = source.videos("test")
    views = 3
    got = video_outputs(model, source, videos[:4], views, 8, 2, "segment", torch.device("cpu"))
    for row, v in zip(got, videos[:4]):
        clips = multi_view_clips(int(source.frames[v]), 8, 2, views, "segment")
        by_hand = [model(collate([store.ifm().read_video(int(v))[idx]]))[0] for idx in clips]
        np.testing.assert_allclose(row, torch.stack(by_hand).mean(0).detach().numpy(), rtol=1e-5, atol=1e-5)
    # evaluate's top-1 is the argmax of those averages.
    labels = store.videos.label[videos]
    logits = video_outputs(model, source, videos, views, 8, 2, "segment", torch.device("cpu"))
    result = evaluate(temporal_store, temporal_runs["tmm"], views=views, device="cpu")
    assert result["top1"] == pytest.approx(float((logits.argmax(1) == labels).mean()))
    assert np.array(result["confusion"]).sum() == len(videos)


def test_finetune_from_pretrained_and_linear_probe(synthetic_store, tmp_path):
    pre = tmp_path / "prp"
    train(train_config(synthetic_store, pre, max_steps=4, tmm=SMALL_TMM))
    probe = tmp_path / "probe"
    train(train_config(synthetic_store, probe, task="classify", init=pre, linear_probe=True, epochs=3))
    a, b = load_checkpoint(pre).model, load_checkpoint(probe).model
    tmm_keys = [k for k in a if k.startswith("tmm.")]
    assert tmm_keys and all(torch.equal(a[k], b[k]) for k in tmm_keys)  # frozen, BN stats too
    assert load_checkpoint(probe).meta.num_classes == 8
    ft = tmp_path / "ft"
    train(train_config(synthetic_store, ft, task="classify", init=pre, max_steps=2))
    c = load_checkpoint(ft).model
    assert any(not torch.equal(a[k], c[k]) for k in tmm_keys)  # fine-tuning moves the TMM


@pytest.mark.slow  # the module's temporal_runs: two trainings
def test_evaluate_refuses_what_does_not_fit(synthetic_store, temporal_store, temporal_runs, tmp_path):
    with pytest.raises(MismatchError, match="predicts 4 classes"):
        evaluate(synthetic_store, temporal_runs["tmm"], device="cpu")
    pre = tmp_path / "prp"
    train(train_config(temporal_store, pre, max_steps=2, tmm=SMALL_TMM))
    with pytest.raises(MismatchError, match="prp checkpoint"):
        evaluate(temporal_store, pre, device="cpu")
    with pytest.raises(StoreError, match="no done video in split 'val'"):
        evaluate(temporal_store, temporal_runs["tmm"], split="val", device="cpu")
    # Same features, same number of classes, other class names (another dataset's labels).
    ckpt = load_checkpoint(temporal_runs["tmm"])
    ckpt.meta = replace(ckpt.meta, classes=ckpt.meta.classes[::-1])
    (tmp_path / "other").mkdir()
    save_checkpoint(tmp_path / "other", ckpt)
    with pytest.raises(MismatchError, match="trained for other classes than .* \\(class 0: "):
        evaluate(temporal_store, tmp_path / "other", device="cpu")


def test_unlabelled_store_cannot_be_finetuned(tmp_path):
    data = tmp_path / "data"
    rows = ["path,label,split"]
    for i in range(2):
        write_video(data / f"v{i}.mp4", 12, seed=i)
        rows.append(f"v{i}.mp4,,test")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    from conftest import extract_config

    out = tmp_path / "unlabelled.zarr"
    extract_videos(extract_config(data, out, dataset="manifest"))
    with pytest.raises(StoreError, match="unlabelled"):
        train(train_config(out, tmp_path / "ft", task="classify", split="test", batch_size=1))


def test_cli_finetune_and_evaluate(synthetic_store, tmp_path):
    r = runner.invoke(app, ["finetune", "--cache", str(synthetic_store), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--init" in r.output and "--scratch" in r.output
    run = tmp_path / "ft"
    args = ["finetune", "--cache", str(synthetic_store), "--out", str(run), "--scratch"]
    r = runner.invoke(app, [*args, *"--epochs 2 --batch-size 8 --hidden 32 --out-dim 64 --device cpu".split()])
    assert r.exit_code == 0, r.output
    assert [r["step"] for r in read_metrics(run)] == [3, 6]  # 3 steps an epoch; a line at each end
    args = ["evaluate", "--cache", str(synthetic_store), "--checkpoint", str(run)]
    r = runner.invoke(app, [*args, *"--views 2 --json --device cpu".split()])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert {"top1", "top5", "views", "videos", "per_class"} <= set(out) and out["views"] == 2
    assert Path(out["confusion_png"]).stat().st_size > 1000
    r = runner.invoke(app, ["evaluate", "--cache", str(synthetic_store), "--checkpoint", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_protocol_result_and_the_matched_run():
    """protocol.py's arithmetic: ΔAcc against scratch and against the compute-matched scratch run,
    whose fine-tune is stretched to PRP's and the fine-tune's steps together (tests/test_ablation.py
    runs the whole protocol, killed and resumed)."""
    from advise_cache.configs import TrainConfig
    from advise_cache.protocol import ProtocolResult, Stage, matched_config

    stages = {
        "prp": Stage(480, 0.7),
        "ft": Stage(120, 0.9, 0.6, 1.0, 48),
        "scratch": Stage(120, 0.8, 0.2, 1.0, 48),
        "scratch-matched": Stage(600, 1.0, 0.35, 1.0, 48),
    }
    result = ProtocolResult(stages)
    assert result.delta == pytest.approx(0.4) and result.delta_matched == pytest.approx(0.25)
    assert ProtocolResult.from_dict(result.to_dict()) == result
    assert ProtocolResult({"scratch": stages["scratch"]}).delta is None  # average pooling: no PRP
    ft = TrainConfig(Path("s"), Path("o"), task="classify", epochs=20, init=Path("prp"))
    matched = matched_config(ft, ft_steps=120, target=600)
    assert (matched.epochs, matched.max_steps, matched.init) == (100, 600, None)
    # A target that is not a whole number of epochs: the schedule spans the next whole epoch.
    assert (matched_config(ft, 120, 610).epochs, matched_config(ft, 120, 610).max_steps) == (102, 610)


def test_estimate_protocol_times_the_first_steps_of_each_training(synthetic_store, tmp_path, monkeypatch):
    """A study's ETA (pipelines/studies/ablation.py --dry-run): the first steps of PRP and of the
    fine-tune and one evaluation, timed, give each stage's seconds; the matched run costs PRP's
    steps more than the fine-tune; average pooling has the scratch stage alone."""
    import advise_cache.protocol as protocol
    from advise_cache.train import epoch_steps

    monkeypatch.setattr(protocol, "PROBE_STEPS", 2)
    prp = train_config(synthetic_store, tmp_path, task="prp", epochs=3, batch_size=4)
    ft = train_config(synthetic_store, tmp_path, task="classify", epochs=3, batch_size=4)
    assert epoch_steps(prp) > 2 and epoch_steps(ft) > 2
    got = protocol.estimate_protocol(tmp_path / "a", prp, ft, views=1)
    assert tuple(got) == protocol.STAGES and all(v > 0 for v in got.values())
    assert got["ft"] == got["scratch"] < got["scratch-matched"]
    for stage in ("prp", "ft"):  # two steps each, not the configs' three epochs
        assert [(r["epoch"], r["step"]) for r in read_metrics(tmp_path / "a" / stage, "epoch")] == [(0, 2)]
    assert "scratch-matched" not in protocol.estimate_protocol(tmp_path / "b", prp, ft, views=1, matched=False)
    pooled = replace(ft, tmm=replace(ft.tmm, tmm="none"))
    assert tuple(protocol.estimate_protocol(tmp_path / "c", prp, pooled, views=1)) == ("scratch",)
