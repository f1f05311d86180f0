"""A trained checkpoint put to use on a store: its model, and the store's tokens it reads.

    model, meta, source = load_model(Path("runs/ft"), open_store("ucf101.zarr"), device)

`token_source` checks that the store gives the features the checkpoint was trained on
(`checkpoint.check_features`) and says when a different frame stride changes what its clip
stride means; `load_model` builds the model from the checkpoint, in eval mode, on the device.
Evaluation, embedding and visualisation start here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .checkpoint import CheckpointMeta, check_features, load_checkpoint
from .loader import TokenSource
from .models import ClipClassifier, create_model

log = logging.getLogger(__name__)


def token_source(meta: CheckpointMeta, store, what: str) -> TokenSource:
    """The store's tokens a checkpoint reads (its image models, where the store has them all),
    checked to be the features it was trained on."""
    trained = meta.fingerprint["ifms"]
    source = TokenSource(store, trained if set(trained) <= set(store.ifm_keys()) else None)
    fingerprint = store.fingerprint(source.keys)
    check_features(meta.fingerprint, fingerprint, what)
    was, now = (int(f["features"][0].get("frame_stride") or 1) for f in (meta.fingerprint, fingerprint))
    if was != now:  # the same features, but the clip stride counts stored frames
        stride = meta.config.sampler.stride
        log.warning(
            "%s: its clip stride, %d stored frames, was %d frames of the video on the store it was "
            "trained on (frame stride %d) and is %d here (frame stride %d)",
            what,
            stride,
            stride * was,
            was,
            stride * now,
            now,
        )
    return source


def load_model(checkpoint: Path, store, device: torch.device) -> tuple[ClipClassifier, CheckpointMeta, TokenSource]:
    """A checkpoint's model in eval mode on `device`, checked against the store it is to be
    used on, with its metadata and the store's tokens it reads."""
    ckpt = load_checkpoint(checkpoint)
    source = token_source(ckpt.meta, store, f"checkpoint {checkpoint}")
    model = create_model(ckpt.meta.tmm, ckpt.meta.num_classes)
    model.load_state_dict(ckpt.model)
    return model.to(device).eval(), ckpt.meta, source
