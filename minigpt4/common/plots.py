"""One way to draw a figure to a PNG file, for every plot of the package (training curves, the
evaluation report, the HIC tool).

Figures are made with Matplotlib's object API (``matplotlib.figure.Figure``), not ``pyplot``: no
global backend to switch, no figure registry to leak into, safe in a worker thread. The PNG carries
no software or date metadata, so the same figure gives the same bytes, and it is written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from minigpt4.common.atomic import atomic_write_bytes


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(8, 6), dpi: int = 100, **subplot_kw):
    """``(figure, axes)`` as ``pyplot.subplots`` returns them (``axes`` is one Axes for a 1x1 grid)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(nrows, ncols, **subplot_kw)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes, laid out tightly, without metadata that changes from run to run."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def save_png(fig: Figure, path) -> Path:
    """Write the figure to ``path`` (whole or not at all); returns the path."""
    atomic_write_bytes(path, png_bytes(fig))
    return Path(path)
