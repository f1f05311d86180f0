"""8-bit tokens: int8 values with one float16 scale per token, packed in one int8 row.

    q = quantise(tokens)           # (..., D) float on any device -> (..., D + 2) int8, same device
    x = dequantise(q, torch.half)  # (..., D + 2) int8 -> (..., D), where q lives

Each token (one frame, y, x) keeps its D channels as round(x / s) in [-127, 127] with
s = max|x| / 127, rounded to float16 and stored little-endian in the token's last 2 bytes.
A frame therefore stays one contiguous run of bytes (the direct reader reads it with one
`preadv`), and a plain zarr user dequantises it with numpy alone (docs/STORE.md). Per element the
error is at most s / 2: the scale is rounded before quantising, so x / s stays within
127 * (1 + 2^-11) < 127.5 and nothing is clipped. Rounding errors spread evenly over
[-s/2, s/2] give a relative L2 error of about max|x| / (127 * sqrt(12) * rms(x)): for D = 768
Gaussian channels (max ~3.2 rms) about 0.7%, whatever their scale (tests/test_int8.py). A
token whose absmax is an outlier channel far above the rest loses the rest's precision: the
per-video error recorded at extraction is how a user checks real tokens.

Quantising happens on the extraction device, in the model loop; dequantising on the training
device after the transfer, so the host only ever moves bytes. Training on the CPU, the loader's
reading threads dequantise each batch into its buffer (`dequantise_into`).

Either way a value comes out as the float16 (or other `dtype`) nearest to q * s: that product of
a 7-bit integer and an 11-bit float16 significand is exact in float32, so the only rounding is
the final cast, at most half a unit in the last place (2^-11 relative; 2^-25 absolute for
float16 subnormals).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported by each function that computes: the store (store.py, ifm_arrays.py,
# integrity.py) needs only the constants and the numpy dequantiser, and `info` / `verify` stay
# free of torch's seconds of import.

SCHEME = "int8-absmax-per-token-f16-scale"  # the group attribute `quantisation` of int8 stores
SCALE_BYTES = 2  # a float16 after each token's D int8 values
_F16_MAX = 65504.0
_BLOCK_VALUES = 32767  # dequantise_into's blocks: under ATen's grain size, 32768 elements


def quantise(x: torch.Tensor) -> torch.Tensor:
    """(..., D) float tokens -> (..., D + 2) int8: D values, then the token's float16 scale."""
    import torch

    x = x.float()
    absmax = x.abs().amax(dim=-1, keepdim=True)
    scale = (absmax / 127).clamp(max=_F16_MAX).half()
    divisor = scale.float()
    q = torch.round(x / torch.where(divisor > 0, divisor, torch.ones_like(divisor))).clamp_(-127, 127)
    out = torch.empty((*x.shape[:-1], x.shape[-1] + SCALE_BYTES), dtype=torch.int8, device=x.device)
    out[..., : x.shape[-1]] = q.to(torch.int8)
    out[..., x.shape[-1] :] = scale.view(torch.int8)
    return out


def dequantise(q: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(..., D + 2) int8 -> (..., D) tokens of `dtype` (default float16), computed where `q` is."""
    import torch

    dtype = torch.float16 if dtype is None else dtype
    d = q.shape[-1] - SCALE_BYTES
    if q.device.type == "cpu":
        return dequantise_into(q, torch.empty((*q.shape[:-1], d), dtype=dtype))
    scale = q[..., d:].contiguous().view(torch.float16).float()
    return (q[..., :d].float() * scale).to(dtype)


def dequantise_into(q: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`dequantise(q, out.dtype)` written into `out` (..., D), which may be a channel slice of a
    wider buffer (its tokens evenly strided). Returns `out`.

    For the CPU, where the whole-array expression's two float32 temporaries of twice the result's
    size cost more than its arithmetic: one multiplication per block of tokens, its temporaries
    in cache. A block stays under ATen's grain size, so it runs in the calling thread: the
    loader's reading threads are the parallelism. Larger blocks start an OpenMP team per pass,
    and on a busy machine a call waits on hundreds of them: a batch (32 x 8 x 14 x 14 tokens) on
    2 shared cores took 0.06 to 1.8 s that way, a steady 0.1 s this way."""
    import torch

    d = q.shape[-1] - SCALE_BYTES
    if out.shape != (*q.shape[:-1], d):
        raise ValueError(f"cannot dequantise {tuple(q.shape)} int8 rows into {tuple(out.shape)}")
    rows, dst = q.reshape(-1, q.shape[-1]), out.view(-1, d)
    scale = rows[:, d:].contiguous().view(torch.float16).float()
    block = max(1, _BLOCK_VALUES // max(d, 1))
    for qb, sb, ob in zip(rows[:, :d].split(block), scale.split(block), dst.split(block)):
        torch.mul(qb, sb, out=ob)  # int8 x float32, exact (see above), then cast once to out's dtype
    return out


def dequantise_numpy(q: np.ndarray) -> np.ndarray:
    """The same in numpy, float32: for checks that read whole videos on the host (verify)."""
    d = q.shape[-1] - SCALE_BYTES
    return q[..., :d].astype(np.float32) * np.ascontiguousarray(q[..., d:]).view("<f2").astype(np.float32)


def error_sums(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(3,) float64 sums over the tokens of x (..., D) and q, their int8 packing: squared error,
    squared norm, and 1 - cosine similarity between each token and its dequantised copy (taken as
    |u - v|^2 / 2 of the unit vectors, which keeps its precision where the cosine is near 1).
    Summed per video on the device, no sync; `summarise_error` turns them into figures."""
    import torch

    x = x.float().reshape(-1, x.shape[-1])
    y = dequantise(q, torch.float32).reshape(x.shape)
    norm = x.square().sum(dim=1)
    err = (x - y).square().sum(dim=1)
    u = x / norm.sqrt().clamp_min(1e-30)[:, None]
    v = y / y.norm(dim=1).clamp_min(1e-30)[:, None]
    deficit = (u - v).square().sum(dim=1) / 2  # a zero token dequantises to zero: 0
    return torch.stack([err.sum(), norm.sum(), deficit.sum()]).double()


def summarise_error(sums, tokens: int) -> tuple[float, float]:
    """(relative L2 error, mean cosine similarity) of a video from its `error_sums` total."""
    err, norm, deficit = (float(s) for s in sums)
    rel = (err / norm) ** 0.5 if norm > 0 else 0.0
    return rel, 1.0 - deficit / tokens if tokens else 1.0
