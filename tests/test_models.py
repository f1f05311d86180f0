"""Tests for advise_cache.models: shapes, residual wiring, gradients, and the paper's counts.

Run: .venv/bin/python -m pytest tests/test_models.py
"""

import pytest
import torch
from torch import nn

from advise_cache.errors import MismatchError
from advise_cache.models import (
    R3D50,
    SFU,
    TMM,
    Bottleneck3D,
    TMMConfig,
    count_params,
    create_model,
    forward_cost,
    model_stats,
)

# (label, overrides of TMMConfig.paper(), params in M or None, FLOPs in G) for a clip of
# 8 × 14 × 14 × 768 tokens and a 4-way (PRP) head.
PAPER_TABLE = [
    ("t3-hidden64", dict(hidden=64), 0.94, 1.47),
    ("t3-hidden256", dict(hidden=256), 1.84, 2.88),
    ("t3-hidden512", dict(hidden=512), 4.07, 6.37),
    ("t3-hidden1024", dict(hidden=1024), 12.06, 18.91),
    ("t3-hidden2048", dict(hidden=2048), 42.21, 66.18),
    ("t2-blocks1", dict(blocks=1), 1.84, 2.88),
    ("t2-blocks2", dict(blocks=2), 2.95, 4.62),
    ("t2-blocks4", dict(blocks=4), 5.18, 8.12),
    ("t2-blocks6", dict(blocks=6), 7.41, 11.61),
    ("t2-blocks8", dict(blocks=8), 9.63, 15.11),
    # Pooling leaves the parameters alone, so they stay those of hidden 2048.
    ("t2-spatial14", dict(hidden=2048, spatial_pool=14), 42.21, 66.18),
    ("t2-spatial9", dict(hidden=2048, spatial_pool=9), 42.21, 27.35),
    ("t2-spatial5", dict(hidden=2048, spatial_pool=5), 42.21, 8.44),
    ("t2-spatial3", dict(hidden=2048, spatial_pool=3), 42.21, 3.04),
    ("t2-spatial1", dict(hidden=2048, spatial_pool=1), 42.21, 0.34),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors are tiny: threads cost more in contention than they gain.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(**overrides) -> TMMConfig:
    base = dict(in_dim=32, hidden=8, out_dim=48, head_hidden=16)
    return TMMConfig(**{**base, **overrides})


def tokens(b=2, d=32, t=4, h=7, w=7) -> torch.Tensor:
    return torch.randn(b, d, t, h, w)


@pytest.mark.parametrize("label,overrides,params_m,flops_g", PAPER_TABLE, ids=lambda v: v)
def test_paper_tables_within_one_percent(label, overrides, params_m, flops_g):
    stats = model_stats(TMMConfig.paper(**overrides), num_classes=4)
    assert stats["params"] == pytest.approx(params_m * 1e6, rel=0.01)
    assert stats["macs"] == pytest.approx(flops_g * 1e9, rel=0.01)  # the paper's FLOPs are MACs


def test_paper_preset_fields():
    config = TMMConfig.paper(hidden=512)
    assert (config.in_dim, config.out_dim, config.blocks) == (768, 1024, 1)
    assert (config.temporal_kernel, config.head, config.hidden) == (1, "linear", 512)


def test_released_preset_fields_and_head():
    """The released code's TMM (models/temporal_modeling.py, configs/pretrain/AdViSe.yaml) and its
    head: Linear without bias (BatchNorm follows), BatchNorm, ReLU, Linear with bias."""
    config = TMMConfig.released()
    assert (config.blocks, config.hidden, config.out_dim, config.temporal_kernel) == (4, 256, 512, 1)
    assert (config.head, config.head_hidden, config.weight_init) == ("bn-mlp", 1024, "torch")
    head = create_model(small(head="bn-mlp"), num_classes=5).head
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].bias is None and head[3].bias is not None
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (48, 16, 5)


def test_torch_init_keeps_pytorchs_layer_defaults():
    # "torch" initialises nothing itself (as the released TemporalModel): the first conv is what
    # nn.Conv3d draws from the same seed; "he" redraws it.
    torch.manual_seed(3)
    tmm = TMM(small(weight_init="torch", temporal_kernel=1))
    torch.manual_seed(3)
    plain = nn.Conv3d(32, 8, (1, 1, 1), bias=False)
    torch.testing.assert_close(tmm.blocks[0].conv1.weight, plain.weight)
    torch.manual_seed(3)
    assert not torch.allclose(TMM(small(temporal_kernel=1)).blocks[0].conv1.weight, plain.weight)


@pytest.mark.parametrize(
    "overrides,grid,dim",
    [
        (dict(), (7, 7), 48),
        (dict(spatial_pool=3), (3, 3), 48),
        (dict(spatial_pool=1, blocks=3), (1, 1), 48),
        (dict(channel_pool=8), (7, 7), 48),
        (dict(tmm="none"), (7, 7), 32),
        (dict(tmm="none", spatial_pool=5, channel_pool=12), (5, 5), 12),
        (dict(head="linear", temporal_kernel=1), (7, 7), 48),
    ],
)
def test_output_shapes(overrides, grid, dim):
    config = small(**overrides)
    model = create_model(config, num_classes=5)
    x = tokens()
    assert model.feature_maps(x).shape == (2, dim, 4, *grid)
    assert model.features(x).shape == (2, dim)
    assert model(x).shape == (2, 5)
    assert config.feature_dim == dim


def test_features_are_pooled_feature_maps():
    model = create_model(small(), num_classes=3).eval()
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), model.feature_maps(x).mean(dim=(2, 3, 4)))


def test_sfu_identity_and_averages():
    x = tokens()
    assert SFU()(x) is x
    assert SFU(spatial_pool=7, channel_pool=32)(x) is x
    torch.testing.assert_close(SFU(spatial_pool=1)(x), x.mean(dim=(3, 4), keepdim=True))
    torch.testing.assert_close(SFU(channel_pool=1)(x), x.mean(dim=1, keepdim=True))
    # Channel pooling to 8 of 32 averages groups of 4 neighbouring channels.
    expected = x.reshape(2, 8, 4, 4, 7, 7).mean(dim=2)
    torch.testing.assert_close(SFU(channel_pool=8)(x), expected)


def test_projection_only_where_dims_differ():
    tmm = TMM(small(blocks=3))
    shortcuts = [block.shortcut for block in tmm.blocks]
    assert isinstance(shortcuts[0], nn.Sequential)  # 32 -> 48
    assert all(isinstance(s, nn.Identity) for s in shortcuts[1:])  # 48 -> 48
    same = TMM(small(in_dim=48, blocks=2))
    assert all(isinstance(block.shortcut, nn.Identity) for block in same.blocks)
    assert isinstance(Bottleneck3D(16, 4, 16, stride=2).shortcut, nn.Sequential)


def test_tmm_none_is_identity_after_sfu():
    model = create_model(small(tmm="none", spatial_pool=3), num_classes=2)
    x = tokens()
    torch.testing.assert_close(model.feature_maps(x), SFU(spatial_pool=3)(x))
    assert count_params(model.tmm) == 0


def test_bottleneck_keeps_time_and_space():
    block = Bottleneck3D(16, 8, 24, temporal_kernel=3)
    assert block(torch.randn(1, 16, 5, 6, 6)).shape == (1, 24, 5, 6, 6)
    assert Bottleneck3D(16, 8, 24, stride=2)(torch.randn(1, 16, 5, 6, 6)).shape == (1, 24, 5, 3, 3)


def test_paper_tmm_is_blind_to_frame_order():
    # With a 1×1×1 first conv no layer spans time, so pooling makes the model a function of
    # the set of frames; our default temporal kernel of 3 is not.
    x = tokens()
    perm = torch.randperm(4)
    paper = create_model(small(temporal_kernel=1), num_classes=4).eval()
    ours = create_model(small(), num_classes=4).eval()
    with torch.no_grad():
        torch.testing.assert_close(paper(x), paper(x[:, :, perm]))
        assert not torch.allclose(ours(x), ours(x[:, :, perm]), atol=1e-5)


def test_gradients_reach_every_parameter():
    model = create_model(small(blocks=2, spatial_pool=5), num_classes=4)
    loss = nn.functional.cross_entropy(model(tokens()), torch.tensor([0, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_reset_head_keeps_tmm():
    model = create_model(small(), num_classes=4).eval()  # eval: BN stats stay put
    before = {k: v.clone() for k, v in model.tmm.state_dict().items()}
    model.reset_head(11)
    assert model(tokens()).shape == (2, 11)
    for k, v in model.tmm.state_dict().items():
        torch.testing.assert_close(v, before[k])
    other = create_model(small(), num_classes=7)
    other.tmm.load_state_dict(model.tmm.state_dict())


def test_r3d50_forward_and_gradients():
    model = R3D50(num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 64, 64)).shape == (1, 10)
    model.train()
    loss = model(torch.randn(2, 3, 1, 32, 32)).logsumexp(dim=1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.stem[0].weight.grad.abs().sum() > 0


def test_r3d50_size_matches_slow_r50():
    with torch.device("meta"):
        model = R3D50(num_classes=400)
    assert count_params(model) == pytest.approx(32.45e6, rel=0.001)


def test_counting_conventions():
    model = create_model(small(head="linear"), num_classes=4).train()
    cost = forward_cost(model, (32, 4, 7, 7))
    assert cost["flops"] == 2 * cost["macs"]
    assert model.training  # restored
    n_bn = sum(m.weight.numel() * 2 for m in model.modules() if isinstance(m, nn.BatchNorm3d))
    assert count_params(model, norm=False) == count_params(model) - n_bn
    # A linear layer's MACs are in × out (the bias is not counted).
    assert forward_cost(nn.Linear(10, 3), (10,)) == {"macs": 30, "flops": 60}
    # A convolution's: every kernel tap of every output value, padding included. Here a 1x3x3
    # conv over a 1x1 grid: 9 taps of which 8 see only padding (the paper's 0.34 G at S = 1).
    conv = nn.Conv3d(4, 5, (1, 3, 3), padding=(0, 1, 1), bias=False)
    assert forward_cost(conv, (4, 2, 1, 1))["macs"] == 2 * 5 * 4 * 9


# MACs of one clip as the forward-hook count that FlopCounterMode replaced gave them (the
# hook counted convolutions and linear layers by hand): the same numbers, to the unit.
HAND_COUNTED = [
    (TMMConfig.paper(hidden=256), 4, (8, 14, 14, 768), 2_877_296_640),
    (TMMConfig(), 4, (8, 14, 14, 768), 3_494_907_904),
    (TMMConfig(hidden=2048, spatial_pool=9, blocks=2), 101, (8, 14, 14, 768), 59_285_541_888),
    (TMMConfig(channel_pool=192, tmm="none"), 4, (8, 14, 14, 768), 200_704),
]


@pytest.mark.parametrize("config,classes,clip,macs", HAND_COUNTED)
def test_macs_are_those_of_the_former_hand_count(config, classes, clip, macs):
    assert model_stats(config, classes, clip=clip)["macs"] == macs


def test_r3d50_macs_are_those_of_the_former_hand_count():
    with torch.device("meta"):
        model = R3D50(num_classes=4)
    assert forward_cost(model, (3, 8, 112, 112))["macs"] == 10_993_377_280


@pytest.mark.parametrize(
    "overrides",
    [
        dict(tmm="transformer"),
        dict(head="attention"),
        dict(channel_pool=64),
        dict(temporal_kernel=2),
        dict(blocks=0),
        dict(spatial_pool=0),
        dict(weight_init="xavier"),
    ],
)
def test_bad_config_raises(overrides):
    with pytest.raises(MismatchError):
        small(**overrides)


def test_bad_input_raises():
    model = create_model(small(spatial_pool=9), num_classes=2)
    with pytest.raises(MismatchError):
        model(tokens(d=16))
    with pytest.raises(MismatchError):
        model(tokens())  # 9 > 7
    with pytest.raises(MismatchError):
        model_stats(small(), 2, clip=(8, 14, 14, 768))


def test_forward_cost_counts_a_vits_attention():
    # test-vit: 64-px input, 16-px patches (16 tokens + class token), width 64, MLP 256, two
    # blocks, a 64 -> 32 projection of the class token. Worked out by hand: fused attention
    # kernels are invisible to torch's counter, so the two attention products must be counted.
    from advise_cache.ifm import create_ifm

    n, w = 17, 64
    block = 3 * n * w * w + n * w * w + 2 * n * w * 256 + 2 * n * n * w  # qkv, out, MLP, attention
    expected = 16 * 3 * 16 * 16 * w + 2 * block + w * 32
    ifm = create_ifm("test-vit", "none", "cpu", "fp32", 0)
    assert forward_cost(ifm.backbone, (3, 64, 64))["macs"] == expected
