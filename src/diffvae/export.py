"""``diffvae export RUN --to diffusers OUT``: a trained run in another library's format.

The command is generic: it checks OUT, loads the run and hands a fresh staging folder to the run's
family (``FamilySpec.export(model, target, folder, **options)``, :mod:`diffvae.contract`), then
renames the folder into place, so a refused or failed export leaves nothing behind. Families that can
be exported override that hook in their own package (the diffusion families write a diffusers
pipeline folder or the denoiser's ``unet/`` + ``scheduler/``; see their ``export`` modules); every
other family is refused with one line. Only EMA weights are exported, as safetensors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from safetensors import SafetensorError

from diffvae.api import load
from diffvae.contract import spec_of
from diffvae.errors import DiffvaeError, one_line
from diffvae.marker import check_replaceable, enclosing_folder
from diffvae.runs import RunDir, is_unmarked_run, write_error, write_marker

TARGETS = ("diffusers",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a trained run of a family that can be exported (the diffusion families)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="the target format")
    parser.add_argument("out", metavar="OUT", help="the folder to create (must not exist unless --force)")
    parser.add_argument("--pipeline", default="ddim", help="diffusers pipeline: ddim (DDIMPipeline, default) | ddpm (DDPMPipeline)")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT folder")


def run(args: argparse.Namespace) -> int:
    out = export_diffusers(args.run, args.out, pipeline=args.pipeline, force=args.force)
    what = f"{args.pipeline.upper()}Pipeline" if (out / "model_index.json").is_file() else "denoiser unet + scheduler"
    print(f"diffvae: exported {args.run} (EMA weights) → {out} (diffusers {_diffusers().__version__}, {what}; "
          "see its README.md)", file=sys.stderr)
    return 0


def export_diffusers(run_path: str | Path, out: str | Path, pipeline: str = "ddim", force: bool = False) -> Path:
    """Write the diffusers folder ``out`` for the run ``run_path``; returns its path. OUT is checked
    first, then the family writes into a folder next to ``out`` that is renamed into place."""
    out = _check_out(Path(out), force, Path(run_path))
    _check_unconditional(Path(run_path))
    _diffusers()
    model = load(run_path, device="cpu")
    spec = spec_of(model)
    _write_atomically(out, force, lambda folder: spec.export(model, "diffusers", folder, pipeline=pipeline, run_path=run_path))
    return out


def _check_unconditional(run_path: Path) -> None:
    """A conditional run's class embeddings have no place in the exported UNet2DModel/pipeline (they were dropped,
    or the export failed late): refused up front, before diffusers is imported or the weights are read."""
    model = RunDir(run_path).read_config().get("model") or {}
    if isinstance(model, dict) and model.get("conditional"):
        raise DiffvaeError(f"export --to diffusers: {run_path} is a class-conditional run; its class embeddings have no "
                           "counterpart in the exported pipeline, so it is not exported (export an unconditional run)")


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise DiffvaeError("export --to diffusers needs the diffusers package: pip install 'diffvae[diffusers]'") from None
    return diffusers


def _check_out(out: Path, force: bool, run_path: Path) -> Path:
    """OUT as an absolute path (``.`` included), refused in one line where it cannot be written or replaced."""
    out = Path(os.path.abspath(out.expanduser()))
    _check_not_over_the_run(out, run_path)
    if out.exists() and not out.is_dir():
        raise DiffvaeError(f"{out} exists and is not a folder")
    if out.exists() and not force:
        raise DiffvaeError(f"{out} already exists; use --force to replace it")
    if out.exists() and is_unmarked_run(out):
        raise DiffvaeError(f"{out} is a diffvae run; export to another folder")
    if out.exists():
        check_replaceable(out, "export", legacy=_is_unmarked_export)
    parent = out.parent
    if not parent.is_dir():
        raise DiffvaeError(f"the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise DiffvaeError(f"cannot write in {parent}")
    if enclosing_folder(parent, "run", legacy=is_unmarked_run) is not None:
        raise DiffvaeError(f"{out} is inside a diffvae run; write the export outside run folders")
    return out


def _is_unmarked_export(folder: Path) -> bool:
    """An export made before folders carried diffvae's mark: the README.md diffvae writes into it."""
    try:
        with open(folder / "README.md", encoding="utf-8") as f:
            return f.read(64).startswith("# diffvae export")
    except (OSError, UnicodeDecodeError):
        return False


def _check_not_over_the_run(out: Path, run_path: Path) -> None:
    """OUT may not be the run being exported nor a folder holding it (--force would remove the run)."""
    run = Path(os.path.abspath(run_path.expanduser()))
    if out == run or out in run.parents:
        raise DiffvaeError(f"{out} holds the run being exported ({run}); export to a folder outside it")


def _write_atomically(out: Path, force: bool, write) -> None:
    """``write(folder)`` into a fresh folder beside ``out``, then rename it to ``out`` (replacing it with --force)."""
    parent = out.resolve().parent
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as e:  # a read-only or forbidden place (os.access says yes to root): one line
        raise write_error(out, e) from None
    try:
        write(staging)
        write_marker(staging, "export")  # what --force may replace later
        if out.exists() and force:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
            os.replace(out, old / out.name)
            try:
                os.replace(staging, out)
            except OSError:
                os.replace(old / out.name, out)  # the earlier export stays where it was
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except OSError as e:  # ENOSPC, EACCES, ...: one line, nothing left behind
        shutil.rmtree(staging, ignore_errors=True)
        raise write_error(e.filename or out, e) from None
    except SafetensorError as e:  # diffusers writes the weights through safetensors' Rust code: its I/O error is no OSError
        shutil.rmtree(staging, ignore_errors=True)
        raise DiffvaeError(f"cannot write {one_line(str(out))}: {one_line(str(e))[:200]}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
