"""Frozen image foundation models (IFMs): building them, loading weights, encoding frames.

The only module that imports open_clip or timm. Whatever the backend, an `IFM` turns a
batch of uint8 crops (N, S, S, 3) into the last block's patch-token grid (N, h, w, D),
class and register tokens dropped:

- open_clip ViTs (`ViT-B-16`, `ViT-L-14`, ... and our `test-vit`): the last residual block's
  output with the model's final LayerNorm (`ln_post`) applied to every patch token; no
  projection to the joint embedding space.
- timm ViTs (`timm/<name>`, and the aliases `MAE-B-16`, `DINOv2-B-14`): `forward_features`,
  which ends with the model's final norm when it has one (MAE's is an identity: its tokens
  are the raw last-block output).

Weights come from a tag (resolved through the local hub cache, so it works offline once
downloaded), a local checkpoint file, or `none` (random init, stated explicitly and
recorded). A tag or file that cannot be loaded is an error, never a silent random model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import logging
import os
import socket
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from .errors import WeightsError, first_line
from .pixels import PixelSpec, normalise
from .runtime import autocast_dtype, resolve_device, resolve_precision

log = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).parent / "model_configs"
# Short names for the timm models the paper compares against CLIP.
TIMM_ALIASES = {
    "MAE-B-16": ("vit_base_patch16_224.mae", {}),
    "DINOv2-B-14": ("vit_base_patch14_dinov2.lvd142m", {"img_size": 224}),
}
# Models that exist only with random weights; their weights are a function of the seed.
RANDOM_ONLY = {"test-vit"}
DEFAULT_TAGS = {"ViT-B-16": "openai", "ViT-L-14": "openai", "ViT-B-32": "openai"}


@dataclass
class IFM:
    """A frozen image model that maps uint8 crops to patch-token grids."""

    name: str
    pretrained: str  # tag, absolute path, or "none"
    backbone: nn.Module
    spec: PixelSpec
    grid: tuple[int, int]
    dim: int
    device: torch.device
    precision: str  # "fp32", "bf16" or "fp16"
    normalisation: str
    weights_sha256: str
    _tokens: object = None  # callable(backbone, x) -> (N, L, D) patch tokens

    @torch.no_grad()
    def encode(self, frames: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, S, S, 3) uint8 crops → (N, h, w, D) tokens on `self.device`, cast to `dtype`
        there (so only the stored bytes cross back to the host)."""
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        x = normalise(frames.to(self.device, non_blocking=True), self.spec)
        compute = autocast_dtype(self.precision)
        with torch.autocast(self.device.type, dtype=compute, enabled=compute is not None):
            tokens = self._tokens(self.backbone, x)
        h, w = self.grid
        return tokens.to(dtype).reshape(len(x), h, w, self.dim)

    def info(self) -> dict:
        """What a store records about the model that produced its tokens."""
        return {
            "model": self.name,
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            "input_size": self.spec.size,
            "interpolation": self.spec.interpolation,
            "mean": list(self.spec.mean),
            "std": list(self.spec.std),
            "normalisation": self.normalisation,
            "grid": list(self.grid),
            "dim": self.dim,
            "precision": self.precision,
        }


def create_ifm(
    name: str = "ViT-B-16",
    pretrained: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
) -> IFM:
    """Build a frozen IFM. `pretrained`: a tag, a checkpoint path, "none", or "auto"."""
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    if name.startswith("timm/") or name in TIMM_ALIASES:
        model, spec, grid, dim, tokens, norm, pretrained = _create_timm(name, pretrained, seed)
    else:
        model, spec, grid, dim, tokens, norm, pretrained = _create_open_clip(name, pretrained, seed)
    model.eval().requires_grad_(False).to(dev)
    return IFM(
        name=name,
        pretrained=pretrained,
        backbone=model,
        spec=spec,
        grid=grid,
        dim=dim,
        device=dev,
        precision=precision,
        normalisation=norm,
        weights_sha256=weights_checksum(model),
        _tokens=tokens,
    )


def weights_checksum(model: nn.Module) -> str:
    """sha256 of the parameters and buffers in key order: identifies the weights in use,
    whether they came from a tag, a file or a seed."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _register_configs() -> None:
    import open_clip

    if "test-vit" not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


def _resolve_pretrained(name: str, pretrained: str) -> str:
    if pretrained == "auto":
        return "none" if name in RANDOM_ONLY else DEFAULT_TAGS.get(name, "hub")
    if name in RANDOM_ONLY and pretrained != "none":
        raise WeightsError(f"{name} has no pretrained weights; use --pretrained none")
    path = Path(pretrained).expanduser()
    if pretrained not in ("none", "hub") and (path.suffix or "/" in pretrained):
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        return str(path.resolve())
    return pretrained


def _check_open_clip_name(name: str) -> None:
    import open_clip

    _register_configs()
    if name not in open_clip.list_models():
        raise WeightsError(
            f"unknown image model {name!r}; open_clip ViTs such as ViT-B-16, ViT-L-14, the "
            f"aliases {', '.join(TIMM_ALIASES)}, timm/<name>, or test-vit"
        )


def _create_open_clip(name: str, pretrained: str, seed: int):
    import open_clip

    _check_open_clip_name(name)
    pretrained = _resolve_pretrained(name, pretrained)
    if pretrained == "hub":
        raise WeightsError(f"{name}: give a weights tag ({_tags(name)}), a file, or none")
    offline = False
    if pretrained != "none" and not Path(pretrained).is_file():
        from open_clip.pretrained import get_pretrained_cfg

        offline = _cached_or_reachable(name, pretrained, _open_clip_sources(get_pretrained_cfg(name, pretrained)))
    with torch.random.fork_rng(devices=[]), _hub_offline(offline):
        torch.manual_seed(seed)
        try:
            clip = open_clip.create_model(name, pretrained=None if pretrained == "none" else pretrained)
        except Exception as e:
            raise WeightsError(
                f"cannot load weights {pretrained!r} for {name}: {first_line(e)}. Tags of "
                f"{name}: {_tags(name)}. Offline, download them once on a connected machine "
                "(they land in the hub cache) or pass --pretrained /path/to/checkpoint"
            ) from e
    visual = clip.visual
    if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "grid_size"):
        raise WeightsError(f"{name}: only ViT image towers give a patch-token grid")
    cfg = visual.preprocess_cfg
    spec = PixelSpec(
        size=int(cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bicubic"),
    )
    dim = visual.transformer.width
    norm = "open_clip last block output, ln_post applied to patch tokens, class token dropped"
    return visual, spec, tuple(visual.grid_size), dim, _open_clip_tokens, norm, pretrained


def _open_clip_tokens(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = visual.forward_intermediates(
        x, indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NLC"
    )
    return out["image_intermediates"][-1]


def _create_timm(name: str, pretrained: str, seed: int):
    import timm

    arch, kwargs = TIMM_ALIASES.get(name, (name.removeprefix("timm/"), {}))
    pretrained = _resolve_pretrained(name, pretrained)
    offline = False
    if pretrained == "hub":
        cfg = timm.models.get_pretrained_cfg(arch)
        if cfg is not None:  # an unknown name is reported by create_model below
            files = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
            hub = [(cfg.hf_hub_id, f) for f in files] if cfg.hf_hub_id else []
            offline = _cached_or_reachable(name, "hub", (hub, cfg.url or ""))
    with torch.random.fork_rng(devices=[]), _hub_offline(offline):
        torch.manual_seed(seed)
        try:
            model = timm.create_model(arch, pretrained=pretrained == "hub", num_classes=0, **kwargs)
            if pretrained not in ("hub", "none"):
                timm.models.load_checkpoint(model, pretrained, strict=False)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise WeightsError(f"unknown timm model {arch!r}") from e
            raise WeightsError(
                f"cannot load weights {pretrained!r} for {arch}: {first_line(e)}. Offline, "
                "download them once on a connected machine or pass --pretrained FILE"
            ) from e
        except Exception as e:
            raise WeightsError(f"cannot load weights {pretrained!r} for {arch}: {first_line(e)}") from e
    if not hasattr(model, "patch_embed"):
        raise WeightsError(f"{arch}: only ViT models give a patch-token grid")
    cfg = timm.data.resolve_data_config({}, model=model)
    size = model.patch_embed.img_size[0]
    spec = PixelSpec(
        size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), interpolation=cfg.get("interpolation", "bicubic")
    )
    grid = tuple(model.patch_embed.grid_size)
    prefix = getattr(model, "num_prefix_tokens", 1)

    def tokens(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m.forward_features(x)[:, prefix:]

    norm = f"timm forward_features (final norm: {type(model.norm).__name__}), prefix tokens dropped"
    return model, spec, grid, model.embed_dim, tokens, norm, pretrained


# -- weights that are not on this machine: one fast, clear error instead of a minute of retries
def check_weights(name: str, pretrained: str = "auto") -> None:
    """Raise the WeightsError `create_ifm` would raise for weights that are neither a file
    nor in the hub cache and cannot be downloaded, without importing open_clip or timm
    (their imports pull in torchvision and torch._dynamo: seconds before a one-line error).
    What it cannot decide cheaply (timm's tags, unknown names) it leaves to `create_ifm`."""
    pretrained = _resolve_pretrained(name, pretrained)  # a missing file fails here
    if pretrained in ("none", "hub") or Path(pretrained).is_file():
        return
    if name.startswith("timm/") or name in TIMM_ALIASES:
        return  # timm's table lives in its model files: only its own import reads it
    cfg = _open_clip_pretrained_cfg(name, pretrained)
    if cfg:
        _cached_or_reachable(name, pretrained, _open_clip_sources(cfg))


def _open_clip_pretrained_cfg(name: str, tag: str) -> dict:
    """open_clip's entry for `tag` of `name` ({} if unknown), read from its pretrained.py
    alone: that module needs only its package's constants and version, not the package's
    __init__, which imports every model. Loaded under a private name, so a later
    `import open_clip` is untouched; any surprise from a newer open_clip means {} (and
    `create_ifm` checks the weights the slow way)."""
    if "open_clip" in sys.modules:
        from open_clip.pretrained import get_pretrained_cfg

        return get_pretrained_cfg(name, tag)
    private = "_advise_cache_open_clip_table"
    try:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            return {}
        package = types.ModuleType(private)
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules[private] = package
        return importlib.import_module(f"{private}.pretrained").get_pretrained_cfg(name, tag)
    except Exception as e:  # noqa: BLE001 - only a shortcut; create_ifm has the last word
        log.debug("open_clip's weights table could not be read on its own: %s", first_line(e))
        return {}
    finally:
        for key in [k for k in sys.modules if k == private or k.startswith(private + ".")]:
            del sys.modules[key]


def _open_clip_sources(cfg: dict) -> tuple[list[tuple[str, str]], str]:
    """Where open_clip would fetch a tag's weights from: hub (repo, file) pairs and a URL."""
    hub = []
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        stem = filename.rsplit(".", 1)[0]
        hub = [(repo, stem + ".safetensors"), (repo, filename)]
    return hub, cfg.get("url", "")


def _cached_or_reachable(name: str, tag: str, sources: tuple[list[tuple[str, str]], str]) -> bool:
    """True when the weights are already on this machine (load them without asking the
    network); False when they must be downloaded and the server answers. Raises when neither:
    offline, the hub's retries would otherwise take about a minute to say the same."""
    hub, url = sources
    if not hub and not url:
        return False  # a tag open_clip does not know: it says so itself
    try:
        from huggingface_hub import constants, try_to_load_from_cache

        if any(isinstance(try_to_load_from_cache(repo, f), str) for repo, f in hub):
            return True
        endpoint, offline = constants.ENDPOINT, constants.HF_HUB_OFFLINE
    except ImportError:
        endpoint, offline = "https://huggingface.co", False
    if url and os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))):
        return False  # open_clip finds its own download cache without the network
    if url and not hub:
        torch_hub = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        if os.path.isfile(torch_hub):
            return False
    server = urlparse(endpoint if hub else url)
    host = server.hostname or ""
    if offline or not _reachable(host, server.port or (80 if server.scheme == "http" else 443)):
        why = "HF_HUB_OFFLINE is set" if offline else f"{host} cannot be reached"
        what = f"the pretrained weights of {name}" if tag == "hub" else f"the weights {tag!r} of {name}"
        raise WeightsError(
            f"{what} are not on this machine and {why}: pass --pretrained PATH "
            "(a checkpoint file), or --pretrained none (random weights), or download them once on a "
            "connected machine (they land in the hub cache)"
        )
    return False


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` (name lookup included)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


@contextlib.contextmanager
def _hub_offline(on: bool):
    """Keep huggingface_hub off the network while loading weights already in its cache."""
    if not on:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _tags(name: str) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    return ", ".join(tags[:6]) + (", ..." if len(tags) > 6 else "") if tags else "none known"
