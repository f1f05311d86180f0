"""Weights that are not on this machine: one clear line before the slow imports, no store.

How fast is measured, not asserted (a timed test flakes on a loaded machine): what makes it
fast is that neither open_clip nor timm (each pulls in torchvision and torch._dynamo, seconds)
is imported before the error, and that is what these tests check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_video

from advise_cache.errors import WeightsError
from advise_cache.ifm import _open_clip_pretrained_cfg, check_weights

ROOT = Path(__file__).resolve().parents[1]

# The CLI as `advise-cache` runs it, then which heavy modules it had imported by the end.
CLI = """
import sys
from advise_cache.cli import app
try:
    app(sys.argv[1:], prog_name="advise-cache")
finally:
    print("imported:", sorted(m for m in ("open_clip", "timm", "torchvision") if m in sys.modules))
"""


@pytest.mark.slow
def test_offline_missing_weights_fail_before_open_clip_is_imported(tmp_path):
    write_video(tmp_path / "data" / "a" / "one.mp4", 6)
    out = tmp_path / "never.zarr"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "empty-cache"),
        "HOME": str(tmp_path),
    }
    args = [sys.executable, "-c", CLI, "extract", "folder", "--root", str(tmp_path / "data"), "--out", str(out)]
    args += "--model ViT-B-16 --pretrained openai --device cpu --workers 0".split()
    r = subprocess.run(args, check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the weights 'openai' of ViT-B-16 are not on this machine")
    assert "--pretrained PATH" in lines[0] and "--pretrained none" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert r.stdout.strip().splitlines()[-1] == "imported: []"
    assert not out.exists()


def test_check_weights_reads_open_clip_table_and_files(tmp_path, monkeypatch):
    # The table read on its own agrees with open_clip's (importing it here is fine: the
    # subprocess test above is the one about what gets imported).
    import open_clip.pretrained
    from huggingface_hub import constants

    monkeypatch.delitem(sys.modules, "open_clip")  # as if not imported yet: the private read
    ours = _open_clip_pretrained_cfg("ViT-B-16", "openai")
    monkeypatch.undo()
    assert ours["hf_hub"] and ours == open_clip.pretrained.get_pretrained_cfg("ViT-B-16", "openai")
    assert not any(k.startswith("_advise_cache_open_clip_table") for k in sys.modules)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError, match="not on this machine"):
        check_weights("ViT-B-16", "auto")  # auto means openai for ViT-B-16
    with pytest.raises(WeightsError, match="does not exist"):
        check_weights("ViT-B-16", str(tmp_path / "missing.pt"))
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    check_weights("ViT-B-16", str(weights))  # a file is enough here; create_ifm loads it
    check_weights("ViT-B-16", "none")
    check_weights("test-vit", "auto")
    check_weights("ViT-B-16", "no-such-tag")  # open_clip names the unknown tag itself, later
