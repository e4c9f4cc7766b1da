"""The run directory: everything a training run writes, written so that a crash never corrupts it.

A run directory holds, at its top level:

* ``config.json``            — family, model config, training config, data spec (dataclasses as JSON)
* ``metrics.jsonl``          — one JSON object per logged step
* ``.diffvae``               — diffvae's mark (:mod:`diffvae.marker`): ``--force`` replaces only marked runs
* ``checkpoint.safetensors`` — model, EMA, optimizer and RNG state in one file (key prefixes
  ``model/``, ``ema/``, ``optimizer/``, ``rng/``), its JSON metadata holding the step and
  everything else exact resumption needs. One file means one atomic rename: a kill at any moment
  leaves either the previous checkpoint or the new one, never a mix.

Every file is written atomically (temporary file in the same folder, fsync, rename, fsync of
the folder). Nothing is pickled.

A run has one writer: :class:`WriterLock` holds an exclusive ``fcntl.flock`` on ``.lock`` in the run
(its content: the holder's PID) while train / resume / compare write; a second writer is refused.
Every file is checked by schema on read (:mod:`diffvae.schema`): a damaged file is one error line
naming the file and the field.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from diffvae.errors import DiffvaeError, WriteError, one_line
from diffvae.marker import MARKER, check_replaceable, mark
from diffvae.schema import check_checkpoint_metadata, check_metrics_row, check_run_config

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
LOCK = ".lock"



def cache_dir() -> Path:
    """diffvae's cache (feature networks, packs, the machine's speed): ``$DIFFVAE_CACHE``, else
    ``$XDG_CACHE_HOME/diffvae``, else ``~/.cache/diffvae``."""
    if os.environ.get("DIFFVAE_CACHE"):
        return Path(os.environ["DIFFVAE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "diffvae"
    return Path.home() / ".cache" / "diffvae"

def write_error(path: str | Path, err: OSError, needed_bytes: int | None = None) -> DiffvaeError:
    """One line for a failed write (disk full, no permission, read-only, ...): the path, the reason, the space needed."""
    needed = f" ({_size_text(needed_bytes)} to write)" if needed_bytes else ""
    return WriteError(f"cannot write {one_line(str(path))}: {err.strerror or type(err).__name__}{needed}")


def _size_text(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part; a failed
    write (ENOSPC, EACCES, ...) leaves the old file and no temporary file, and is one line naming the path."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DiffvaeError(f"cannot write in {path.parent}: {e.strerror}") from None
    try:
        os.fchmod(fd, _new_file_mode())  # mkstemp makes 0600; give the mode a plain open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e, len(data)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _new_file_mode() -> int:
    """0666 less the process umask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_marker(folder: str | Path, kind: str) -> None:
    """Mark ``folder`` (which exists) as a diffvae ``kind`` folder (:mod:`diffvae.marker`), atomically."""
    write_json(Path(folder) / MARKER, mark(kind))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise DiffvaeError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DiffvaeError(f"{path} is not valid JSON ({str(e).splitlines()[0][:120]})") from None
    except OSError as e:
        raise DiffvaeError(f"cannot read {path}: {e.strerror}") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> None:
    """Save named tensors as safetensors, atomically; ``metadata`` is stored as one JSON string."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"diffvae": json.dumps(metadata or {}, sort_keys=True)}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file written by :func:`save_tensors` → (tensors, metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DiffvaeError(f"{path} not found")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("diffvae", "{}"))
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as e:  # safetensors raises several types for truncated/tampered files
        raise DiffvaeError(f"{path} is truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(meta, dict):
        raise DiffvaeError(f"{path}: its metadata is not a JSON object")
    return tensors, meta


def split_prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose key starts with ``prefix + '/'``, with the prefix removed."""
    p = prefix + "/"
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def add_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


def state_dict_mismatch(error: RuntimeError) -> str:
    """The telling line of a ``load_state_dict`` error (e.g. ``size mismatch for encoder.net.1.weight: ...``)
    rather than its generic first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else type(error).__name__)[:200]


class WriterLock:
    """The one writer of a folder: an exclusive ``fcntl.flock`` on ``FOLDER/.lock``, which holds the
    writer's PID. :meth:`release` removes the file, so a finished or refused command leaves the
    folder as it found it; a killed writer leaves a stale file whose lock the kernel has released."""

    def __init__(self, folder: Path, fd: int):
        self.folder, self.fd = folder, fd

    @property
    def path(self) -> Path:
        return self.folder / LOCK

    @classmethod
    def acquire(cls, folder: str | Path) -> "WriterLock":
        """Lock ``folder`` (which exists) or raise DiffvaeError naming the PID that holds it."""
        folder = Path(folder)
        while True:
            try:
                fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, _new_file_mode())
            except OSError as e:
                raise DiffvaeError(f"cannot write in {folder}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                raise DiffvaeError(f"{folder} is being written by another diffvae process (PID {holder}); "
                                   "wait for it to finish or stop it") from None
            if _is_current_file(fd, folder / LOCK):  # else the last holder removed it after we opened it: retry
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(folder, fd)

    def release(self) -> None:
        if self.fd < 0:
            return
        if _is_current_file(self.fd, self.path):
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "WriterLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _is_current_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def is_unmarked_run(folder: Path) -> bool:
    """A run made before folders carried diffvae's mark (:mod:`diffvae.marker`): its config.json passes the
    run schema (someone else's config.json does not)."""
    try:
        RunDir(folder).read_config()
    except DiffvaeError:
        return False
    return True


class RunDir:
    """A run directory on disk (see the module docstring for its files)."""

    def __init__(self, path: str | Path):
        self.path = Path(os.path.normpath(path))  # 'missing/../run': mkdir made 'missing' too, and left it

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def exists(self) -> bool:
        return self.config_path.is_file()

    @classmethod
    def check_new(cls, path: str | Path, *, force: bool = False) -> "RunDir":
        """Refuse ``path`` for a new run unless it is absent, empty, or (with ``force``) a run. Reads only."""
        run = cls(path)
        p = run.path
        if p.exists() and not p.is_dir():
            raise DiffvaeError(f"--out {p} exists and is not a directory")
        if p.is_dir() and any(q.name != LOCK for q in p.iterdir()):
            if not force:
                raise DiffvaeError(f"--out {p} already exists; use --resume to continue it or --force to replace it")
            check_replaceable(p, "run", legacy=is_unmarked_run)
        return run

    @classmethod
    def prepare(cls, path: str | Path, *, resume: bool = False, force: bool = False) -> "RunDir":
        """Open ``path`` for a new run (refusing an existing one unless ``force``) or for ``resume``.
        ``force`` empties the run but keeps its writer lock file."""
        run = cls(path)
        p = run.path
        if resume:
            if not run.exists():
                raise DiffvaeError(f"--resume: {p} is not a diffvae run (no {CONFIG})")
            return run
        cls.check_new(p, force=force)
        if p.is_dir():
            for entry in p.iterdir():
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DiffvaeError(f"cannot create {p}: {e.strerror}") from None
        if not os.access(p, os.W_OK):
            raise DiffvaeError(f"cannot write in {p}")
        write_marker(p, "run")  # what --force may replace later
        return run

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.config_path, config)

    def read_config(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise DiffvaeError(f"run {self.path} not found")
        if not self.exists():
            raise DiffvaeError(f"{self.path} is not a diffvae run (no {CONFIG})")

        config = read_json(self.config_path)
        check_run_config(config, self.config_path)
        return config

    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete rows of metrics.jsonl. A torn last line from a crash (no newline) is skipped;
        any other damage is a DiffvaeError naming the file and the line."""
        if not self.metrics_path.is_file():
            return []
        try:
            text = self.metrics_path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise DiffvaeError(f"{self.metrics_path} is damaged: not UTF-8 at byte {e.start}") from None
        lines = text.split("\n")
        rows = []
        for number, line in enumerate(lines[:-1], start=1):  # lines[-1] is "" or a torn last line
            if line.strip():
                rows.append(check_metrics_row(line, self.metrics_path, number))
        return rows

    def append_metrics(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, sort_keys=True) + "\n"
        try:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:  # a torn last line is skipped by read_metrics; the checkpoint decides where a resume starts
            raise write_error(self.metrics_path, e, len(line)) from None

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only rows up to ``last_step`` (used on resume, so the log matches the checkpoint)."""
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def save_checkpoint(self, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        save_tensors(self.checkpoint_path, tensors, metadata)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if not self.checkpoint_path.is_file():
            raise DiffvaeError(f"run {self.path} has no checkpoint yet ({CHECKPOINT} missing)")
        tensors, meta = load_tensors(self.checkpoint_path)
        check_checkpoint_metadata(meta, self.checkpoint_path)
        return tensors, meta
