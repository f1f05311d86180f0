"""The views study runs (tiny sizes, one seed), so that a rename in the library cannot break it
silently; its figures come from `make study-views`, never from a test."""

from __future__ import annotations

import json
import sys


def test_study_views_smoke(tmp_path, capsys, monkeypatch):
    from pipelines.studies import views as study_views

    assert study_views.main(["--quick", "--no-write", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| augmented views | bytes, MB (x no views) | Acc_ft 4 x 1 (%) | Acc_ft 10 x 3 (%) |" in out
    rows = [json.loads(p.read_text()) for p in sorted((tmp_path / "quick").glob("views*-seed0/study.json"))]
    assert sorted(r["views"] for r in rows) == [0, 2, 4]
    assert all(0.0 <= r["acc_ft_10x3"] <= 1.0 and 0.0 <= r["acc_ft_4x1"] <= 1.0 for r in rows)
    sys.modules.pop("study_views", None)
