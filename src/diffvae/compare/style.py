"""How compare shows a family: its spec (or None for a name no longer registered), title, short name and
colour, and matplotlib on the Agg backend with the one way a figure is saved (a PNG, atomically). Below the
stages that draw (control, curves, figures) and a family's own figures."""

from __future__ import annotations

import io
from pathlib import Path

from diffvae.errors import DiffvaeError
from diffvae.families import get_family
from diffvae.runs import atomic_write_bytes


def spec_or_none(fam: str):
    """The family's spec, or None for a name no longer registered (a report redrawn from old results)."""
    try:
        return get_family(fam).spec()
    except DiffvaeError:
        return None


def color(fam: str) -> str | None:
    spec = spec_or_none(fam)
    return spec.color if spec is not None else None


def title(fam: str) -> str:
    """The family's column title (its ``spec.title``; the name itself if it is not registered)."""
    spec = spec_or_none(fam)
    return spec.title if spec is not None else fam


def short(fam: str) -> str:
    """The family's name in sentences (``spec.short``)."""
    spec = spec_or_none(fam)
    return spec.short if spec is not None else fam


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as a PNG, atomically, and close it."""
    _save(fig, path)


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    return _pyplot()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt
