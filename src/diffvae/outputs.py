"""Where a command may write a file, in one place: the right extension, a writable folder outside every run,
never an existing file unless ``--force``; and how images are written there (a PNG grid or the raw uint8 array)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from diffvae.errors import DiffvaeError
from diffvae.images import make_grid
from diffvae.marker import enclosing_folder
from diffvae.runs import atomic_write_bytes, is_unmarked_run

OUTPUT_SUFFIXES = (".png", ".npz")


def check_output(path: str, force: bool, suffixes: tuple[str, ...] = OUTPUT_SUFFIXES) -> Path:
    """An output file: the right extension, a writable folder outside every run, and not an existing
    file unless ``force`` (never a folder)."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise DiffvaeError(f"--out must end in {' or '.join(suffixes)}, got {out.name}")
    if out.is_dir():
        raise DiffvaeError(f"--out {out} is a folder; give a file name")
    if out.exists() and not force:
        raise DiffvaeError(f"{out} already exists; use --force to overwrite it")
    if not out.parent.is_dir():
        raise DiffvaeError(f"the folder {out.parent} does not exist")
    if not can_create_in(out.parent):
        raise DiffvaeError(f"cannot write in {out.parent}")
    run = enclosing_run(out.parent)
    if run is not None:
        raise DiffvaeError(f"--out {out} is inside the run {run}; write outputs outside run folders")
    return out


def can_create_in(folder: Path) -> bool:
    """A file can be created in ``folder``: tried with a nameless temporary file (``os.access`` says yes to root on a
    read-only or forbidden place such as /sys, and eval then ran for minutes before its write failed)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def enclosing_run(folder: Path) -> Path | None:
    """The run folder that ``folder`` is or lies in, if any: a folder with diffvae's run mark, or an older run
    whose config.json passes the run schema (not any folder that merely holds a config.json)."""
    return enclosing_folder(folder.resolve(), "run", legacy=is_unmarked_run)


def write_images(images, out: Path, nrow: int | None = None) -> None:
    buf = io.BytesIO()
    if out.suffix.lower() == ".npz":
        np.savez_compressed(buf, images=images.cpu().numpy())
    else:
        grid = make_grid(images, nrow=nrow)
        Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid).save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
