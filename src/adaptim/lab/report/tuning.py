"""What tuning cost and bought: the range test's figure, and the self-tuning track's figure.

Matplotlib is imported only when a figure is drawn (through :mod:`.figures`),
so the terminal can use the rest of the report package without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from adaptim.lab.lr_find import LrFindResult

#: Marker and colour of each suggestion in the range test's figure (Okabe & Ito).
SUGGESTION_STYLE = {
    "valley": ("o", "#009E73"),
    "steepest": ("v", "#D55E00"),
    "minimum/10": ("s", "#CC79A7"),
}


def _draw_lr_find(fig: Figure, result: LrFindResult, title: str) -> None:
    ax = fig.axes[0]
    ax.plot(result.lrs, result.losses, color="0.75", lw=0.9, label="loss (minibatch)")
    ax.plot(result.lrs, result.smoothed, color="#0072B2", lw=1.8, label="smoothed loss")
    for s in result.suggestions:
        marker, color = SUGGESTION_STYLE.get(s.name, ("D", "black"))
        ax.axvline(s.lr, color=color, lw=0.8, ls=":")
        ax.plot([s.lr], [s.loss], marker=marker, color=color, ms=8, ls="none",
                label=f"{s.name}: {s.lr:.3g}")  # fmt: skip
    if result.smoothed:
        # The raw loss of the last steps may run far above the smoothed one: follow the latter.
        low, high = min(result.smoothed), max(result.smoothed)
        pad = 0.08 * (high - low) or 0.05 * abs(high) or 1.0
        ax.set_ylim(low - pad, high + pad)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    from adaptim.lab.report.figures import _plain

    ax.set_title(_plain(title), fontsize=9)
    ax.legend(loc="best", fontsize=8, frameon=False)
    fig.tight_layout()


def lr_find_svg(result: LrFindResult, title: str) -> str:
    """The range test as inline SVG: loss and smoothed loss against lr, the suggestions marked."""
    from adaptim.lab.report.figures import _figure, _svg

    with _figure(6.4, 3.6) as (fig, _):
        _draw_lr_find(fig, result, title)
        return _svg(fig)


def write_lr_find(result: LrFindResult, title: str, stem: Path) -> tuple[Path, Path]:
    """Write the range test's figure as ``stem.svg`` and ``stem.png``; returns both paths."""
    from adaptim.lab.report.figures import _figure

    svg, png = stem.with_suffix(".svg"), stem.with_suffix(".png")
    with _figure(6.4, 3.6) as (fig, _):
        _draw_lr_find(fig, result, title)
        fig.savefig(svg, format="svg", metadata={"Date": None})
        fig.savefig(png, format="png", dpi=150)
    return svg, png
