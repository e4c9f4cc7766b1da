"""The mark of a folder diffvae made: ``FOLDER/.diffvae``, written (by :func:`diffvae.runs.write_marker`) when
a run, compare or export folder is created (``{"kind": "run" | "compare" | "export"}``). ``--force`` replaces
only a folder that carries the mark of its own kind (or, for folders made before the mark existed, one whose
files diffvae recognises); anything else is refused with one line naming what is there. Packs are recognised by their files alone
(:func:`diffvae.pack.is_pack`: a manifest and nothing but pack files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from diffvae.errors import DiffvaeError, one_line

MARKER = ".diffvae"
KINDS = ("run", "compare", "export")


def mark(kind: str) -> dict[str, str]:
    """The content of a ``kind`` folder's mark."""
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    return {"kind": kind, "made_by": "diffvae"}


def marker_kind(folder: str | Path) -> str | None:
    """The kind ``folder``'s mark names, or None (no mark, or a damaged one)."""
    path = Path(folder) / MARKER
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    kind = value.get("kind") if isinstance(value, dict) else None
    return kind if kind in KINDS else None


def check_replaceable(folder: str | Path, kind: str, legacy: Callable[[Path], bool] | None = None) -> None:
    """Refuse ``--force`` on ``folder`` unless it is a diffvae ``kind`` folder: its mark, or (made before marks)
    ``legacy(folder)``. The error names what the folder holds."""
    folder = Path(folder)
    found = marker_kind(folder)
    if found == kind or (found is None and legacy is not None and legacy(folder)):
        return
    what = f"a diffvae {found} folder" if found is not None else f"not a diffvae {kind} folder: it holds {describe(folder)}"
    raise DiffvaeError(f"--force refuses to replace {one_line(str(folder))}: it is {what}")


def describe(folder: Path, shown: int = 3) -> str:
    """``'a.txt', 'b' and 4 more`` — the first names in ``folder`` (sorted)."""
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as e:
        return f"nothing readable ({e.strerror})"
    listed = ", ".join(repr(n) for n in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "") if names else "nothing"


def enclosing_folder(path: str | Path, kind: str, legacy: Callable[[Path], bool] | None = None) -> Path | None:
    """The nearest folder at or above ``path`` that is a diffvae ``kind`` folder (by mark, or ``legacy``), or None."""
    path = Path(path).expanduser().absolute()
    for candidate in (path, *path.parents):
        if marker_kind(candidate) == kind or (legacy is not None and candidate.is_dir() and legacy(candidate)):
            return candidate
    return None
