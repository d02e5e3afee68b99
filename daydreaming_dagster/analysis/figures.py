"""Figures of the results, rendered off-screen to PNG bytes (no display, no global pyplot state)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

# matplotlib is imported where used: it adds ~1.5 s to the start of every process that loads
# the code location, and only the heatmap asset needs it.

CMAP = "viridis"
MISSING_COLOUR = "#d9d9d9"
DPI = 110


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def heatmap_png(
    values: pd.DataFrame,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    value_label: str = "mean score",
    counts: pd.DataFrame | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> bytes:
    """A heatmap of `values` (rows x columns, NaN = no data) as PNG bytes.

    Each cell shows its value (and `n=` from `counts`, aligned to `values`); a NaN cell is grey and
    says "no scores". `vmin`/`vmax` fix the colour scale (e.g. to the score scale) so figures of
    different runs are comparable; by default it spans the finite values."""
    data = values.to_numpy(dtype=float) if values.size else np.empty((0, 0))
    finite = data[np.isfinite(data)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:  # a single value, or all cells equal: give the colour scale some width
        lo, hi = lo - 0.5, hi + 0.5

    n_rows, n_cols = data.shape
    longest_col = max((len(str(c)) for c in values.columns), default=0)
    longest_row = max((len(str(r)) for r in values.index), default=0)
    width = 3.2 + 0.11 * longest_row + max(n_cols, 2) * 1.15
    height = 2.4 + 0.06 * longest_col + max(n_rows, 1) * 0.7
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(width, 24), min(height, 24)), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11, pad=10)

    if data.size == 0:
        ax.text(0.5, 0.5, "no scores yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        cmap = _colormap()
        norm = Normalize(vmin=lo, vmax=hi)
        image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=norm, aspect="auto")
        slanted = longest_col > 8  # long labels would overlap side by side
        ax.set_xticks(
            range(n_cols),
            [str(c) for c in values.columns],
            rotation=30 if slanted else 0,
            ha="right" if slanted else "center",
            rotation_mode="anchor",
        )
        ax.set_yticks(range(n_rows), [str(r) for r in values.index])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        # Thin white grid between cells.
        ax.set_xticks(np.arange(-0.5, n_cols), minor=True)
        ax.set_yticks(np.arange(-0.5, n_rows), minor=True)
        ax.grid(which="minor", color="white", linewidth=2)
        ax.tick_params(which="minor", length=0)
        for i in range(n_rows):
            for j in range(n_cols):
                value = data[i, j]
                n = None if counts is None else counts.iloc[i, j]
                if math.isnan(value):
                    ax.text(j, i, "no scores", ha="center", va="center", fontsize=9, color="#444444")
                    continue
                label = _fmt(value) if n is None or pd.isna(n) else f"{_fmt(value)}\nn={int(n)}"
                ax.text(j, i, label, ha="center", va="center", fontsize=10, color=_text_colour(cmap(norm(value))))
        fig.colorbar(image, ax=ax, label=value_label, fraction=0.08, pad=0.04)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.2, metadata={"Software": None})
    return buffer.getvalue()


def _colormap():
    from matplotlib import colormaps

    return colormaps[CMAP].with_extremes(bad=MISSING_COLOUR)


def _text_colour(rgba) -> str:
    """Black on light cells, white on dark ones."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def warm_up() -> None:
    """Render a 1x1 heatmap and throw it away: imports matplotlib and loads its fonts (~1.5 s of
    CPU), so a process can pay for that while it waits and build the real figures at once later."""
    heatmap_png(pd.DataFrame([[1.0]]), title="warm-up", xlabel="x", ylabel="y", counts=pd.DataFrame([[1]]))
