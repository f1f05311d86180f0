"""8-bit tokens: int8 values with one float16 scale per token, packed in one int8 row.

    q = quantize(tokens)           # (..., D) float on any device -> (..., D + 2) int8, same device
    x = dequantize(q, torch.half)  # (..., D + 2) int8 -> (..., D), where q lives

Each token (one frame, y, x) keeps its D channels as round(x / s) in [-127, 127] with
s = max|x| / 127, rounded to float16 and stored little-endian in the token's last 2 bytes.
A frame therefore stays one contiguous run of bytes (the direct reader reads it with one
`preadv`), and a plain zarr user decodes it with numpy alone (docs/STORE.md). Per element the
error is at most s / 2: the scale is rounded before quantising, so x / s stays within
127 * (1 + 2^-11) < 127.5 and nothing is clipped. Rounding errors spread evenly over
[-s/2, s/2] give a relative L2 error of about max|x| / (127 * sqrt(12) * rms(x)): for D = 768
Gaussian channels (max ~3.2 rms) about 0.7%, whatever their scale (tests/test_int8.py). A
token whose absmax is an outlier channel far above the rest loses the rest's precision: the
per-video error recorded at extraction is how a user checks real tokens.

Quantising happens on the extraction device, in the model loop; dequantising on the training
device after the transfer, so the host only ever moves bytes.
"""

from __future__ import annotations

import numpy as np
import torch

SCHEME = "int8-absmax-per-token-f16-scale"  # the group attribute `quantisation` of int8 stores
SCALE_BYTES = 2  # a float16 after each token's D int8 values
_F16_MAX = 65504.0


def quantize(x: torch.Tensor) -> torch.Tensor:
    """(..., D) float tokens -> (..., D + 2) int8: D values, then the token's float16 scale."""
    x = x.float()
    absmax = x.abs().amax(dim=-1, keepdim=True)
    scale = (absmax / 127).clamp(max=_F16_MAX).half()
    divisor = scale.float()
    q = torch.round(x / torch.where(divisor > 0, divisor, torch.ones_like(divisor))).clamp_(-127, 127)
    out = torch.empty((*x.shape[:-1], x.shape[-1] + SCALE_BYTES), dtype=torch.int8, device=x.device)
    out[..., : x.shape[-1]] = q.to(torch.int8)
    out[..., x.shape[-1] :] = scale.view(torch.int8)
    return out


def dequantize(q: torch.Tensor, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """(..., D + 2) int8 -> (..., D) tokens of `dtype`, computed where `q` is."""
    d = q.shape[-1] - SCALE_BYTES
    scale = q[..., d:].contiguous().view(torch.float16).float()
    return (q[..., :d].float() * scale).to(dtype)


def dequantize_numpy(q: np.ndarray) -> np.ndarray:
    """The same in numpy, float32: for checks that read whole videos on the host (verify)."""
    d = q.shape[-1] - SCALE_BYTES
    return q[..., :d].astype(np.float32) * np.ascontiguousarray(q[..., d:]).view("<f2").astype(np.float32)


def error_sums(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(3,) float64 sums over the tokens of x (..., D) and q, their int8 packing: squared error,
    squared norm, and 1 - cosine similarity between each token and its decoded copy (taken as
    |u - v|^2 / 2 of the unit vectors, which keeps its precision where the cosine is near 1).
    Summed per video on the device, no sync; `summarise_error` turns them into figures."""
    x = x.float().reshape(-1, x.shape[-1])
    y = dequantize(q, torch.float32).reshape(x.shape)
    norm = x.square().sum(dim=1)
    err = (x - y).square().sum(dim=1)
    u = x / norm.sqrt().clamp_min(1e-30)[:, None]
    v = y / y.norm(dim=1).clamp_min(1e-30)[:, None]
    deficit = (u - v).square().sum(dim=1) / 2  # a zero token decodes to zero: 0
    return torch.stack([err.sum(), norm.sum(), deficit.sum()]).double()


def summarise_error(sums, tokens: int) -> tuple[float, float]:
    """(relative L2 error, mean cosine similarity) of a video from its `error_sums` total."""
    err, norm, deficit = (float(s) for s in sums)
    rel = (err / norm) ** 0.5 if norm > 0 else 0.0
    return rel, 1.0 - deficit / tokens if tokens else 1.0
