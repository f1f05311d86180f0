"""Models trained on cached patch tokens: SFU pooling, the TMM, heads and baselines.

Every model here takes a clip of cached tokens as a float tensor (B, D, T, h, w) — the
frozen image model's patch-token maps for T frames, channels first — and knows nothing
of where the tokens came from. `R3D50` is the exception: an end-to-end pixel baseline
(B, 3, T, H, W) for the efficiency comparison, built from the same bottleneck blocks.

    config = TMMConfig(spatial_pool=9)          # TMMConfig.paper(): the paper's tables; .released(): its code
    model = create_model(config, num_classes=4)
    logits = model(tokens)                      # tokens: (B, 768, 8, 14, 14)
    model_stats(config, 4)                      # {"params", "macs", "flops"} for one clip

The counting conventions that reproduce the paper's Tables 2 and 3 are in
docs/MODEL_STATS.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from advise_cache.configs import TMMConfig
from advise_cache.errors import MismatchError


class SFU(nn.Module):
    """Spatial feature utilisation: adaptive average pooling of the grid and the channels.

    Each pooling is the identity when its size is None or equals the input's size.
    """

    def __init__(self, spatial_pool: int | None = None, channel_pool: int | None = None):
        super().__init__()
        self.spatial_pool = spatial_pool
        self.channel_pool = channel_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, t, h, w = x.shape
        s = self.spatial_pool
        if s is not None and (s, s) != (h, w):
            if s > h or s > w:
                raise MismatchError(f"spatial_pool {s} is larger than the token grid {h}×{w}")
            x = F.adaptive_avg_pool3d(x, (t, s, s))
        c = self.channel_pool
        if c is not None and c != d:
            if c > d:
                raise MismatchError(f"channel_pool {c} is larger than the token dim {d}")
            grid = x.shape[2:]
            # (B, D, N) -> (B, N, D): adaptive_avg_pool1d pools the last axis.
            x = F.adaptive_avg_pool1d(x.flatten(2).transpose(1, 2), c)
            x = x.transpose(1, 2).reshape(b, c, *grid)
        return x

    def extra_repr(self) -> str:
        return f"spatial_pool={self.spatial_pool}, channel_pool={self.channel_pool}"


class Bottleneck3D(nn.Module):
    """ResNet bottleneck in 3D: k×1×1 → 1×3×3 → 1×1×1, each followed by BN.

    `stride` down-samples space only (in the 1×3×3 conv and the shortcut); the TMM keeps
    the default 1, the pixel baseline uses 2 at stage starts. The shortcut is a 1×1×1
    conv + BN wherever the identity would not fit (width or stride changes).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        temporal_kernel: int = 1,
        stride: int = 1,
    ):
        super().__init__()
        if temporal_kernel % 2 == 0:
            raise MismatchError(f"temporal_kernel must be odd, got {temporal_kernel}")
        self.conv1 = nn.Conv3d(
            in_dim,
            hidden,
            (temporal_kernel, 1, 1),
            padding=(temporal_kernel // 2, 0, 0),
            bias=False,
        )
        self.bn1 = nn.BatchNorm3d(hidden)
        self.conv2 = nn.Conv3d(hidden, hidden, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)
        self.bn2 = nn.BatchNorm3d(hidden)
        self.conv3 = nn.Conv3d(hidden, out_dim, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_dim)
        self.shortcut: nn.Module
        if in_dim != out_dim or stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_dim, out_dim, 1, stride=(1, stride, stride), bias=False),
                nn.BatchNorm3d(out_dim),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


def _init_weights(module: nn.Module) -> None:
    # He init for convs (fan_out, as torchvision's ResNets); BN starts as the identity.
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class TMM(nn.Module):
    """Temporal modelling module: SFU, then `blocks` bottlenecks at full T and grid."""

    def __init__(self, config: TMMConfig):
        super().__init__()
        self.config = config
        self.sfu = SFU(config.spatial_pool, config.channel_pool)
        blocks: list[nn.Module] = []
        if config.tmm == "r3d":
            dims = [config.pooled_dim] + [config.out_dim] * config.blocks
            for d_in, d_out in zip(dims[:-1], dims[1:]):
                blocks.append(Bottleneck3D(d_in, config.hidden, d_out, config.temporal_kernel))
        self.blocks = nn.Sequential(*blocks)  # empty (identity) for tmm="none"
        self.out_dim = config.feature_dim
        if config.weight_init == "he":
            _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.config.in_dim:
            raise MismatchError(f"expected tokens (B, {self.config.in_dim}, T, h, w), got {tuple(x.shape)}")
        return self.blocks(self.sfu(x))


def _make_head(config: TMMConfig, num_classes: int) -> nn.Module:
    if num_classes < 1:
        raise MismatchError(f"num_classes must be at least 1, got {num_classes}")
    if config.head == "linear":
        return nn.Linear(config.feature_dim, num_classes)
    if config.head == "bn-mlp":  # the released code's: the BN makes the first layer's bias redundant
        return nn.Sequential(
            nn.Linear(config.feature_dim, config.head_hidden, bias=False),
            nn.BatchNorm1d(config.head_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.head_hidden, num_classes),
        )
    return nn.Sequential(
        nn.Linear(config.feature_dim, config.head_hidden),
        nn.ReLU(inplace=True),
        nn.Linear(config.head_hidden, num_classes),
    )


class ClipClassifier(nn.Module):
    """TMM → global average pool over (T, h, w) → head.

    `tmm` is a separate attribute so that a pretext checkpoint's temporal weights can be
    saved and loaded alone (`model.tmm.state_dict()`) and the head replaced for a new task.
    """

    def __init__(self, config: TMMConfig, num_classes: int):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.tmm = TMM(config)
        self.head = _make_head(config, num_classes)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The TMM's output (B, C, T, h', w'), e.g. for visualisation."""
        return self.tmm(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled embedding (B, C) that the head sees."""
        return self.feature_maps(x).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def reset_head(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one (fine-tuning on a new task)."""
        old = next(self.head.parameters())
        self.head = _make_head(self.config, num_classes).to(device=old.device, dtype=old.dtype)
        self.num_classes = num_classes


def create_model(config: TMMConfig, num_classes: int) -> ClipClassifier:
    return ClipClassifier(config, num_classes)


class R3D50(nn.Module):
    """End-to-end 3D ResNet-50 on pixels (B, 3, T, H, W): the efficiency baseline.

    Slow-only style: no temporal down-sampling; temporal kernels of 1 in the first two
    stages and 3 in the last two (where the receptive field is large enough for motion).
    """

    widths = (64, 128, 256, 512)
    depths = (3, 4, 6, 3)
    expansion = 4

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        stem_temporal_kernel: int = 1,
        temporal_kernels: tuple[int, int, int, int] = (1, 1, 3, 3),
    ):
        super().__init__()
        if stem_temporal_kernel not in (1, 3):
            raise MismatchError(f"stem_temporal_kernel must be 1 or 3, got {stem_temporal_kernel}")
        kt = stem_temporal_kernel
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, 64, (kt, 7, 7), stride=(1, 2, 2), padding=(kt // 2, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        stages: list[nn.Module] = []
        d_in = 64
        for i, (width, depth, k) in enumerate(zip(self.widths, self.depths, temporal_kernels)):
            d_out = width * self.expansion
            blocks = []
            for j in range(depth):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(Bottleneck3D(d_in, width, d_out, k, stride=stride))
                d_in = d_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(d_in, num_classes)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def count_params(module: nn.Module, *, norm: bool = True) -> int:
    """Trainable parameters; `norm=False` leaves out BatchNorm's affine parameters."""
    skip: set[int] = set()
    if not norm:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                skip.update(id(p) for p in m.parameters(recurse=False))
    return sum(p.numel() for p in module.parameters() if p.requires_grad and id(p) not in skip)


def forward_cost(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Forward cost of ONE clip, `input_shape` without the batch axis (e.g. (D, T, h, w)):
    {"macs": multiply-accumulates (what the paper calls FLOPs), "flops": two per MAC}.

    Counted by torch's FlopCounterMode, which counts matrix products and convolutions only
    (BN, ReLU and pooling are left out, as in the paper), a convolution at every kernel tap of
    every output value, padding included (see docs/MODEL_STATS.md). Works on a model built on
    the meta device, which costs no memory or compute.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    counter = FlopCounterMode(display=False)
    was_training, fastpath = model.training, torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        # Fused attention (nn.MultiheadAttention's inference path, the CPU flash kernel) is
        # invisible to the counter: a ViT's attention is counted through the plain math kernel.
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        model.train(was_training)
        torch.backends.mha.set_fastpath_enabled(fastpath)
    flops = counter.get_total_flops()
    return {"macs": flops // 2, "flops": flops}


def model_stats(
    config: TMMConfig,
    num_classes: int,
    clip: tuple[int, int, int, int] = (8, 14, 14, 768),
) -> dict[str, int]:
    """Trainable params, forward MACs and FLOPs (`forward_cost`) for one clip (T, h, w, D)."""
    t, h, w, d = clip
    if d != config.in_dim:
        raise MismatchError(f"clip dim {d} does not match config.in_dim {config.in_dim}")
    # Built on the meta device: shapes only, so even the 66 GFLOP configs count instantly.
    with torch.device("meta"):
        model = create_model(config, num_classes)
    return {"params": count_params(model), **forward_cost(model, (d, t, h, w))}
