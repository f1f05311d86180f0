"""Figures written to disk: matplotlib without a display, and one way of saving a figure.

    plt = pyplot()
    fig, ax = plt.subplots()
    ...
    save_figure(fig, Path("runs/ft/confusion-test.png"))

matplotlib is imported when a figure is made, never at start-up.
"""

from __future__ import annotations

from pathlib import Path

from .errors import writing


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """Write `fig` to `path` (its folder made as needed) and close it; a full disk or a folder
    that cannot be written is one `DiskError` line."""
    path = Path(path)
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=dpi)
    finally:
        pyplot().close(fig)
