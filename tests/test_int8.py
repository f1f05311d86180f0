"""8-bit tokens: the packing's error bound, decoding rounded once, an int8 store end to end
(extract, loader, PRP, fine-tune, info, verify), its recorded error, and float16 stores left as
they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import patch_frame, read_metrics
from typer.testing import CliRunner

from advise_cache import quant
from advise_cache.cli import app
from advise_cache.errors import StoreError
from advise_cache.ifm import create_ifm
from advise_cache.integrity import quant_notes, verify
from advise_cache.loader import ClipLoader, TokenSource
from advise_cache.quant import dequantise, dequantise_into, dequantise_numpy, error_sums, quantise, summarise_error
from advise_cache.sampling import SamplerConfig, prp_epoch
from advise_cache.store import DONE, open_store
from advise_cache.summary import summarize
from advise_cache.video import decode_frames

runner = CliRunner()


@pytest.fixture(scope="module")
def int8_store(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "q.zarr"
    r = runner.invoke(
        app,
        [
            "extract",
            "synthetic",
            "--root",
            str(synthetic_root),
            "--out",
            str(out),
            "--model",
            "test-vit",
            "--pretrained",
            "none",
            "--dtype",
            "int8",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--frames-per-shard",
            "8",
            "--batch-size",
            "16",
        ],
    )
    assert r.exit_code == 0, r.output
    return out


def test_round_trip_stays_within_half_a_step_per_value():
    # Every value is off by at most half its token's step s = absmax / 127 (the float16 scale is
    # rounded before dividing, so nothing clips). Over D values that bounds a token's relative L2
    # error by sqrt(D) / 254 whatever its values; for Gaussian channels the errors spread evenly
    # over [-s/2, s/2], about absmax / (127 sqrt(12) rms): 0.76% on average at D = 768 (absmax
    # ~ 3.3 rms), and below 1.5% for every token (that needs absmax > 6.5 rms: p ~ 6e-8 a token).
    g = torch.Generator().manual_seed(0)
    d = 768
    x = torch.randn(4096, d, generator=g) * torch.logspace(-3, 3, 4096)[:, None] + 0.3
    x[0] = 0  # a zero token comes back exactly
    q = quantise(x)
    assert q.dtype == torch.int8 and q.shape == (4096, d + 2)
    y = dequantise(q, torch.float32)
    step = q[:, d:].contiguous().view(torch.float16).float()
    assert ((x - y).abs() <= step / 2 * (1 + 1e-5) + 1e-30).all()
    rel = (x - y).norm(dim=1) / x.norm(dim=1).clamp_min(1e-30)
    assert rel[0] == 0 and (rel <= d**0.5 / 254).all()
    gauss = torch.randn(4096, d, generator=g)
    g_rel = (gauss - dequantise(quantise(gauss), torch.float32)).norm(dim=1) / gauss.norm(dim=1)
    assert g_rel.max() < 0.015 and 0.007 < g_rel.mean() < 0.0085, (g_rel.mean(), g_rel.max())
    # numpy decodes the same bytes to the same values (the docs/STORE.md recipe)
    np.testing.assert_array_equal(dequantise_numpy(q.numpy()), y.numpy())
    rel_l2, cos = summarise_error(error_sums(gauss, quantise(gauss)).tolist(), len(gauss))
    assert rel_l2 == pytest.approx(
        float((gauss - dequantise(quantise(gauss), torch.float32)).norm() / gauss.norm()), rel=1e-4
    )
    assert 0.9999 < cos < 1


def _exact(rows: np.ndarray) -> np.ndarray:
    """Int8 rows decoded apart from quant.py: each q * s in float64, where it is exact."""
    d = rows.shape[-1] - 2
    return rows[..., :d].astype(np.float64) * np.ascontiguousarray(rows[..., d:]).view("<f2").astype(np.float64)


def _assert_nearest_float16(y: np.ndarray, exact: np.ndarray) -> None:
    # Rounded once to float16: within half a unit in the last place, 2^-11 relative (2^-25
    # absolute among subnormals), and the very float16 nearest to the product.
    assert (np.abs(y.astype(np.float64) - exact) <= np.abs(exact) * 2**-11 + 2**-25).all()
    assert y.dtype == np.float16 and y.tobytes() == exact.astype(np.float16).tobytes()


def test_decoding_rounds_each_product_once(monkeypatch):
    monkeypatch.setattr(quant, "_BLOCK_VALUES", 3 * 33)  # blocks of 3 tokens, the last one short
    g = torch.Generator().manual_seed(0)
    d = 33  # odd: each token's scale starts at an odd byte
    q = torch.randint(-127, 128, (5, 7, d + 2), dtype=torch.int8, generator=g)
    # zero, float16 subnormals, and up to 500 (127 x 500 stays below float16's largest, 65504)
    scales = torch.cat([torch.tensor([0.0, 2**-24, 3e-6, 6e-5]), torch.logspace(-4, 2.7, 31)])
    q[..., d:] = scales.half().view(torch.int8).reshape(5, 7, 2)
    exact = _exact(q.numpy())
    wide = torch.full((5, 7, d + 9), float("nan"), dtype=torch.float16)  # a channel slice of a wider buffer
    y = dequantise_into(q, wide[..., 4 : 4 + d])
    assert wide[..., :4].isnan().all() and wide[..., 4 + d :].isnan().all()
    _assert_nearest_float16(y.numpy(), exact)
    # the same bits as the whole-array expression that runs on a GPU, and float32 exact
    whole = (q[..., :d].float() * q[..., d:].contiguous().view(torch.float16).float()).half()
    assert torch.equal(y, whole) and torch.equal(dequantise(q), whole)
    np.testing.assert_array_equal(dequantise(q, torch.float32).numpy(), exact.astype(np.float32))
    with pytest.raises(ValueError, match="cannot dequantise"):
        dequantise_into(q, torch.empty(5, 7, d + 2, dtype=torch.float16))


@pytest.mark.slow
def test_int8_store_layout_and_bytes(int8_store, synthetic_store):
    a = open_store(int8_store).ifm("test-vit")
    f16 = open_store(synthetic_store).ifm("test-vit")
    assert (a.meta.dtype, a.dim, a.row_dim, a.quantised) == ("int8", 64, 66, True)
    assert a.tokens.dtype == np.int8 and a.tokens.shape[1:] == (4, 4, 66)
    assert a.meta.quantisation == "int8-absmax-per-token-f16-scale"
    # (D + 2) bytes a token against 2 D: 66 / 128 of the float16 store, both plus the same index
    per_frame = {
        s: summarize(open_store(p))["ifms"]["test-vit"] for s, p in (("q", int8_store), ("h", synthetic_store))
    }
    assert per_frame["q"]["frames"] == per_frame["h"]["frames"]
    ratio = per_frame["q"]["bytes"] / per_frame["h"]["bytes"]
    assert 66 / 128 < ratio < 66 / 128 + 0.02, ratio
    # the stored rows decode to the float16 store's tokens within the bound above (D = 64)
    for v in (0, 7):
        x = f16.read_video(v).astype(np.float32)
        y = dequantise_numpy(a.read_video(v))
        rel = np.linalg.norm(x - y, axis=-1) / np.linalg.norm(x, axis=-1)
        assert rel.max() < 64**0.5 / 254 and rel.mean() < 0.01


@pytest.mark.slow
def test_recorded_error_matches_a_recomputation(int8_store):
    store = open_store(int8_store)
    a = store.ifm("test-vit")
    rel, cos = a.quant_errors()
    assert (a.status() == DONE).all() and np.isfinite(rel).all() and np.isfinite(cos).all()
    ifm = create_ifm("test-vit", "none", device="cpu")
    for v in (0, 5, 11):
        floats = ifm.encode(decode_frames(Path(store.videos.path[v]), ifm.spec), dtype=torch.float32)
        q = quantise(floats)
        assert q.numpy().tobytes() == a.read_video(v).tobytes()  # the stored rows are these
        want = summarise_error(error_sums(floats, q).tolist(), floats[..., 0].numel())
        assert (rel[v], cos[v]) == pytest.approx(want, rel=1e-4)
        decoded = dequantise(q, torch.float32).reshape(-1, 64).double()
        flat = floats.reshape(-1, 64).double()
        assert rel[v] == pytest.approx(float((flat - decoded).norm() / flat.norm()), rel=1e-4)
        assert cos[v] == pytest.approx(float(torch.cosine_similarity(flat, decoded, dim=1).mean()), abs=1e-7)


def test_loader_dequantises_the_stored_rows(int8_store):
    store = open_store(int8_store)
    source = TokenSource(store)
    assert source.dim == 64 and source.dtype == np.float16 and source.quantised
    assert store.ifm().shard_reader() is not None  # read from the shard files, as float16 is, not via zarr
    videos, _ = source.videos("train")
    plan = prp_epoch(videos, source.frames[videos], SamplerConfig(), seed=1, epoch=0)
    loader = ClipLoader(source, plan, batch_size=8)
    seen = []
    for x, _y in loader:
        assert x.shape == (8, 64, 8, 4, 4) and x.dtype == torch.float16
        assert x.is_contiguous(memory_format=torch.channels_last_3d)
        seen.append(x.permute(0, 2, 3, 4, 1).numpy().copy())
    for x, requests in zip(seen, loader.batches):
        for b, r in enumerate(requests):
            raw = torch.from_numpy(store.ifm().read_video(r.video)[r.indices])
            assert x[b].tobytes() == dequantise(raw, torch.float16).numpy().tobytes()
    r = plan[0]
    want = dequantise(torch.from_numpy(store.ifm().read_video(r.video)[r.indices]), torch.float16).numpy()
    np.testing.assert_array_equal(source.clip(r.video, r.indices), want)
    source.preload(videos)  # resident rows stay int8: 66 bytes a token
    assert source.resident[0].dtype == torch.int8 and source.resident[0].shape[-1] == 66
    np.testing.assert_array_equal(source.clip(r.video, r.indices), want)
    x, _ = next(iter(ClipLoader(source, plan, batch_size=8)))
    assert x.permute(0, 2, 3, 4, 1).numpy().tobytes() == seen[0].tobytes()


@pytest.mark.slow
def test_cpu_batches_are_the_stored_rows_rounded_once(int8_store, tmp_path):
    # Two int8 IFMs (the second of random tokens): on the CPU the reading threads decode each
    # into its channels of the batch.
    path = tmp_path / "two.zarr"
    shutil.copytree(int8_store, path)
    first = open_store(path).ifm("test-vit")
    info = {k: first.meta.stored[k] for k in ("model", "pretrained", "weights_sha256", "input_size", "grid", "dim")}
    second = open_store(path, mode="r+").add_ifm("second", info, first.meta.frame_stride, 8, dtype="int8")
    g = torch.Generator().manual_seed(1)
    for v in np.flatnonzero(first.status() == DONE).tolist():
        x = torch.randn((int(second.frames[v]), 4, 4, 64), generator=g) * (v + 1)
        second.write_video(v, quantise(x).numpy(), (0.0, 1.0))
    store = open_store(path)
    source = TokenSource(store, store.ifm_keys())
    assert source.dim == 128 and source.quantised
    videos, _ = source.videos("train")
    plan = prp_epoch(videos, source.frames[videos], SamplerConfig(), seed=2, epoch=0)
    assert len(plan) % 7  # a short last batch
    exact = {
        v: np.concatenate([_exact(a.read_video(v)) for a in source.arrays], axis=-1) for v in {r.video for r in plan}
    }
    seen = 0
    for x, y in ClipLoader(source, plan, batch_size=7, threads=3, drop_last=False):
        x = x.permute(0, 2, 3, 4, 1).numpy()
        assert x.shape[1:] == (8, 4, 4, 128)
        for b in range(len(y)):
            r = plan[seen + b]
            _assert_nearest_float16(x[b], exact[r.video][r.indices])
            assert y[b] == r.label
        seen += len(y)
    assert seen == len(plan)


@pytest.mark.slow
def test_int8_store_trains_prp_and_finetunes_through_the_cli(int8_store, tmp_path):
    small = ["--batch-size", "8", "--hidden", "32", "--out-dim", "64", "--device", "cpu"]
    r = runner.invoke(
        app, ["train", "--cache", str(int8_store), "--out", str(tmp_path / "prp"), "--epochs", "2", *small]
    )
    assert r.exit_code == 0, r.output
    assert all(np.isfinite(m["loss"]) for m in read_metrics(tmp_path / "prp"))
    r = runner.invoke(
        app,
        [
            "finetune",
            "--cache",
            str(int8_store),
            "--out",
            str(tmp_path / "ft"),
            "--init",
            str(tmp_path / "prp"),
            "--epochs",
            "2",
            *small,
        ],
    )
    assert r.exit_code == 0, r.output
    assert read_metrics(tmp_path / "ft", "epoch")[-1]["step"] > 0
    r = runner.invoke(
        app,
        [
            "evaluate",
            "--cache",
            str(int8_store),
            "--checkpoint",
            str(tmp_path / "ft"),
            "--views",
            "1",
            "--json",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    assert 0 <= json.loads(r.output)["top1"] <= 1


def test_info_and_verify_show_the_error(int8_store, tmp_path):
    rel = open_store(int8_store).ifm("test-vit").quant_errors()[0]
    r = runner.invoke(app, ["info", str(int8_store), "--json"])
    assert r.exit_code == 0, r.output
    q = json.loads(r.output)["ifms"]["test-vit"]["quant_error"]
    assert q["videos"] == len(rel) and q["unmeasured"] == 0
    assert q["rel_l2_mean"] == pytest.approx(float(rel.mean())) and q["rel_l2_worst"] == pytest.approx(float(rel.max()))
    assert 0 < q["rel_l2_worst"] < 0.02 and 0.999 < q["cos_worst"] <= q["cos_mean"] < 1
    r = runner.invoke(app, ["info", str(int8_store)])
    assert "int8 error vs float tokens" in r.output and f"{rel.max():.2%}" in r.output
    r = runner.invoke(app, ["verify", str(int8_store), "--deep"])
    assert r.exit_code == 0 and r.output.rstrip().endswith("ok"), r.output
    assert "note: test-vit: int8 error over" in r.output
    # An abnormal error is named (not counted as damage); a NaN scale is damage.
    copy = tmp_path / "copy.zarr"
    shutil.copytree(int8_store, copy)
    g = zarr.open_group(copy / "ifm" / "test-vit", mode="a")
    g["quant_rel_l2"][3] = 0.2
    store = open_store(copy)
    name = str(store.videos.name[3])
    assert any(name in n and "above 5%" in n for n in quant_notes(store))
    # the scale of the first token of the first frame, its crc32c made to match (else that is what fails)
    patch_frame(copy, 3, 0, 64, np.float16(np.nan).tobytes())
    assert any("NaN or Inf" in p for p in verify(open_store(copy)))


def test_float16_stores_are_unchanged_and_unknown_schemes_refused(synthetic_store, tmp_path):
    a = open_store(synthetic_store).ifm("test-vit")
    assert not a.quantised and a.quant_errors() is None and a.meta.quantisation is None
    assert a.row_dim == a.dim == 64 and a.tokens.dtype == np.float16
    assert "quant_rel_l2" not in a.group and "quant_cos" not in a.group
    assert "quant_error" not in summarize(open_store(synthetic_store))["ifms"]["test-vit"]
    assert quant_notes(open_store(synthetic_store)) == []
    copy = tmp_path / "newer.zarr"
    shutil.copytree(synthetic_store, copy)
    g = zarr.open_group(copy / "ifm" / "test-vit", mode="a")
    g.attrs["advise_cache"] = {**g.attrs["advise_cache"], "dtype": "int8", "quantisation": "int4-someday"}
    with pytest.raises(StoreError, match="cannot decode: upgrade advise-cache"):
        open_store(copy).ifm("test-vit")
