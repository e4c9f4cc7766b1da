"""Issue 27's fresh hostile pass: a table of cases on the features of round three, each run as a real process.

Every case is ``python -m diffvae ...`` (PYTHONPATH = this checkout's src, OMP_NUM_THREADS=1) in a scratch
workspace that holds a few tiny prepared runs (digits, 4 steps), data files, a pack and a synthetic compare report.
A case expects one of:

* ``refused`` — exactly one stderr line starting ``diffvae: error:`` (no traceback, no "internal error"), a
  non-zero exit, nothing on stdout, the workspace unchanged (file tree + sha256 before/after), no temporary file
  left (each case gets its own empty $TMPDIR, checked after);
* ``works`` — exit 0, a stated check of the output, and changes only under the case's declared outputs;
* ``either`` — clean as ``refused`` or as ``works`` (a refusal and a documented success are both acceptable).

Disk full is a file-size limit (RLIMIT_FSIZE in the child, SIGXFSZ ignored, so writes fail with EFBIG); an
unwritable place is under /sys (the harness runs as root, so chmod does not bind); signals are sent after a
file or line shows the command is under way (polled, no tight timeout).

    python benchmarks/hostile_round3.py [--only REGEX] [--label before|after] [--keep]

Prints a per-area table and writes benchmarks/results/hostile_round3.json (one entry per --label).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "hostile_round3.json"
EXTRA_PATH = os.environ.get("HOSTILE_EXTRA_PATH", "/tmp/h27deps")  # torch-fidelity (pip install --target), if present

SMALL_VAE = ["--width", "16", "--latent-dim", "4", "--batch", "32", "--precision", "fp32", "--device", "cpu", "--quiet"]
TINY_DDPM = ["--channels", "8", "--channel-mult", "1", "--timesteps", "50", "--batch", "16", "--precision", "fp32",
             "--device", "cpu", "--quiet"]
HANG = 600  # seconds: only a guard against a hang, never a speed check


@dataclasses.dataclass
class Case:
    area: str
    name: str
    argv: list[str] | None  # "{ws}" stands for the workspace
    expect: str = "refused"  # refused | works | either
    fragment: str | None = None  # refused: the error line must hold it
    forbid: str | None = None  # refused: the error line must not hold it
    check: Callable[[Path, "Result"], str | None] | None = None  # works: None when the output is right, else why
    outputs: tuple[str, ...] = ()  # works: workspace paths (prefixes) the case may create or change
    setup: Callable[[Path], None] | None = None  # runs before the snapshot (its files are part of the workspace)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: str | None = None  # relative to the workspace
    fsize: int | None = None  # bytes: RLIMIT_FSIZE of the child (a full disk)
    runner: Callable[["Case", Path, dict], "Result"] | None = None  # signals: a custom way to run it
    leaves: tuple[str, ...] = ()  # refused: what a failure after the start may keep (a resumable run), never a temp file


@dataclasses.dataclass
class Result:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float


# ----------------------------------------------------------------------------- running one case

def base_env(root: Path, tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO / "src")] + ([EXTRA_PATH] if Path(EXTRA_PATH).is_dir() else [])
    env.update(PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TMPDIR=str(tmp),
               DIFFVAE_CACHE=str(root / "cache"), MPLCONFIGDIR=str(root / "mpl"), PYTHONDONTWRITEBYTECODE="1")
    for name in ("DIFFVAE_DEBUG", "DIFFVAE_CPU_KIND", "WORLD_SIZE", "RANK"):
        env.pop(name, None)
    return env


def expand(argv: list[str], ws: Path) -> list[str]:
    return [a.replace("{ws}", str(ws)) for a in argv]


def limit_file_size(limit: int | None):
    def preexec():
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a harness started with '&' ignores SIGINT, and so would the child
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def popen(case: Case, ws: Path, env: dict, argv: list[str] | None = None) -> subprocess.Popen:
    cwd = ws / case.cwd if case.cwd else ws
    return subprocess.Popen([sys.executable, "-m", "diffvae", *expand(argv or case.argv, ws)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                            preexec_fn=limit_file_size(case.fsize))


def run_plain(case: Case, ws: Path, env: dict) -> Result:
    start = time.monotonic()
    proc = popen(case, ws, env)
    try:
        out, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return Result(None, out, err, time.monotonic() - start)
    return Result(proc.returncode, out, err, time.monotonic() - start)


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    added = [f"+{k}" for k in after if k not in before]
    removed = [f"-{k}" for k in before if k not in after]
    changed = [f"~{k}" for k in before if k in after and before[k] != after[k]]
    return added + removed + changed


def one_line_problem(res: Result, case: Case) -> str | None:
    """Why ``res`` is not a clean refusal, or None."""
    if res.rc is None:
        return f"no exit within {HANG} s"
    if res.rc == 0:
        return "exit 0 (not refused)"
    err = res.stderr.strip()
    lines = err.splitlines()
    if "Traceback" in err:
        return "traceback: " + (lines[-1] if lines else "")[:160]
    if "internal error" in err:
        return next(l for l in lines if "internal error" in l)[:200]
    if len(lines) != 1:
        return f"{len(lines)} stderr lines: " + " | ".join(l[:80] for l in lines[:3])
    if not lines[0].startswith("diffvae: error: "):
        return f"not a diffvae error line: {lines[0][:160]}"
    if case.fragment is not None and case.fragment.lower() not in lines[0].lower():
        return f"wrong reason (wanted {case.fragment!r}): {lines[0][:200]}"
    if case.forbid is not None and case.forbid in lines[0]:
        return f"unsafe advice ({case.forbid!r}): {lines[0][:200]}"
    if res.stdout.strip():
        return "stdout: " + res.stdout.strip().splitlines()[0][:120]
    return None


def works_problem(res: Result, case: Case, ws: Path) -> str | None:
    if res.rc is None:
        return f"no exit within {HANG} s"
    if res.rc != 0 and case.runner is None:  # a signalled case checks its own exit status
        return f"exit {res.rc}: " + (res.stderr.strip().splitlines() or [""])[-1][:200]
    if "Traceback" in res.stderr:
        return "traceback on exit 0"
    return case.check(ws, res) if case.check is not None else None


def score_case(case: Case, ws: Path, root: Path) -> dict:
    tmp = root / "tmp" / re.sub(r"[^A-Za-z0-9_.-]", "_", case.name)
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**base_env(root, tmp), **{k: v.replace("{ws}", str(ws)).replace("{root}", str(root)) for k, v in case.env.items()}}
    if case.setup is not None:
        case.setup(ws)
    before = snapshot(ws)
    res = (case.runner or run_plain)(case, ws, env)
    changes = diff(before, snapshot(ws))
    left = [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_")]  # torch's own compile cache
    refusal = one_line_problem(res, case)
    kept = [c for c in changes if c.startswith("+") and any(c[1:].startswith(k) for k in case.leaves)]
    temps = [c for c in kept if ".tmp" in c or "/." in c.replace("/.diffvae", "")]
    changes = [c for c in changes if c not in kept or c in temps]
    refusal = refusal or (f"workspace changed: {' '.join(changes[:4])}" if changes else None)
    refusal = refusal or (f"left in $TMPDIR: {left[:3]}" if left else None)
    outside = [c for c in changes if not any(c[1:].startswith(o) for o in case.outputs)]
    works = works_problem(res, case, ws)
    works = works or (f"changed outside its outputs: {' '.join(outside[:4])}" if outside else None)
    works = works or (f"left in $TMPDIR: {left[:3]}" if left else None)
    for stray in ws.glob("never*"):  # a refused case that wrote its output anyway: gone, so later cases see no ghost
        shutil.rmtree(stray) if stray.is_dir() and not stray.is_symlink() else stray.unlink()
    problem = {"refused": refusal, "works": works}.get(case.expect)
    if case.expect == "either":
        problem = refusal if res.rc != 0 else works
    return {"area": case.area, "name": case.name, "expect": case.expect, "clean": problem is None, "reason": problem,
            "rc": res.rc, "stderr_tail": res.stderr.strip()[-300:], "seconds": round(res.seconds, 1)}


# ----------------------------------------------------------------------------- the workspace

def diffvae(ws: Path, *argv: str, env: dict | None = None) -> None:
    tmp = ws.parent / "tmp" / "setup"
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "diffvae", *argv], cwd=ws, env={**base_env(ws.parent, tmp), **(env or {})},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"setup failed: diffvae {' '.join(argv)}\n{proc.stderr}")


def npz_declaring(path: Path, shape: tuple[int, ...], real: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_2_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", buffer.getvalue() + real.tobytes())


def prepare(ws: Path) -> None:
    """Tiny runs, data files and folders every case may read (none of them may change)."""
    ws.mkdir(parents=True)
    rng = np.random.default_rng(0)
    diffvae(ws, "train", "vae", "--data", "digits", "--steps", "4", "--checkpoint-every", "2", *SMALL_VAE, "--out", str(ws / "run-vae"))
    diffvae(ws, "train", "ddpm", "--data", "digits", "--steps", "4", *TINY_DDPM, "--out", str(ws / "run-ddpm"))
    diffvae(ws, "train", "ddpm", "--data", "digits", "--steps", "4", "--conditional", *TINY_DDPM, "--out", str(ws / "run-cddpm"))
    diffvae(ws, "train", "vae", "--data", "digits", "--steps", "4", "--conditional", *SMALL_VAE, "--out", str(ws / "run-cvae"))
    diffvae(ws, "data", "pack", "digits", "--limit", "300", "--out", str(ws / "pack-digits"))
    images = rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    np.savez(ws / "samples.npz", images=images)
    np.savez(ws / "big.npz", images=np.zeros((30000, 64, 64), np.uint8))  # a pack that takes long enough to interrupt
    np.savez(ws / "samples-nhwc.npz", images=images.transpose(0, 2, 3, 1))
    np.savez(ws / "samples-rgb.npz", images=rng.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8))
    np.savez(ws / "samples-int64.npz", images=images.astype(np.int64))
    np.savez(ws / "samples-nan.npz", images=np.full((40, 1, 8, 8), np.nan, np.float32))
    np.savez(ws / "samples-none.npz", images=np.zeros((0, 1, 8, 8), np.uint8))
    np.savez(ws / "samples-three.npz", images=images[:3])
    np.savez(ws / "labelled.npz", images=images[:, 0], labels=rng.integers(0, 4, 40))
    np.savez(ws / "labels-wrong-length.npz", images=images[:, 0], labels=np.zeros(5, np.int64))
    npz_declaring(ws / "huge-header.npz", (10**12, 8, 8), images[:, 0])
    (ws / "idx-truncated").write_bytes((0x803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (10, 8, 8)) + bytes(100))
    (ws / "afile").write_text("a file")
    (ws / "holder").mkdir()
    (ws / "holder" / "notes.txt").write_text("precious")
    (ws / "holder" / "inner").mkdir()
    (ws / "emptydir").mkdir()
    _images_folder(ws / "pngs-16", 16, 6)
    _reports(ws)
    _inception_files(ws)
    _config_files(ws)
    _damaged_packs(ws)
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env={**os.environ, "MPLCONFIGDIR": str(ws.parent / "mpl")},
                   check=True)  # matplotlib's font cache, as any user who plotted once has it (else a full disk adds its warning)
    os.symlink(ws / "run-ddpm", ws / "link-to-run-ddpm")
    os.symlink(ws / "holder", ws / "link-to-holder")
    os.symlink(ws / "loop-a", ws / "loop-b")
    os.symlink(ws / "loop-b", ws / "loop-a")


def _images_folder(folder: Path, size: int, count: int) -> None:
    from PIL import Image

    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.full((size, size), 16 * i, np.uint8)).save(folder / f"{i}.png")


def _reports(ws: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from forecast_fixtures import synthetic_results

    for name, edit in {"report": None,
                       "report-nocurves": lambda r: r.update(learning_curves={}),
                       "report-empty-curves": lambda r: r.update(learning_curves={"vae": [], "ddpm": []}),
                       "report-text-gflop": lambda r: r["learning_curves"]["vae"][0].update(gflop="x"),
                       "report-negative-budget": lambda r: r.update(budget_minutes=-1),
                       "report-one-point": lambda r: r.update(learning_curves={f: p[-1:] for f, p in r["learning_curves"].items()}),
                       "report-nan-fid": lambda r: [p.update(fid=float("nan")) for p in r["learning_curves"]["vae"]]}.items():
        results = synthetic_results()
        if edit is not None:
            edit(results)
        (ws / name).mkdir()
        (ws / name / "results.json").write_text(json.dumps(results))
        (ws / name / ".diffvae").write_text('{"kind": "compare", "made_by": "diffvae"}')
    (ws / "report-latin1").mkdir()
    (ws / "report-latin1" / "results.json").write_bytes(b'{"budget_minutes": 2, "data": "caf\xe9"}')


def _inception_files(ws: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder = ws / "inception"
    folder.mkdir()
    torch.save({"weight": torch.zeros(2), "hook": os.getcwd}, folder / "pickled.pth")
    torch.save([torch.zeros(2)], folder / "a-list.pth")
    (folder / "garbage.pth").write_bytes(b"\x80\x04 not a torch file at all")
    (folder / "empty.safetensors").write_bytes(b"")
    save_file({"x": torch.zeros(3)}, str(folder / "wrong-keys.safetensors"))
    save_file({"Conv2d_1a_3x3.conv.weight": torch.zeros((32, 3, 3, 3), dtype=torch.int64)}, str(folder / "int.safetensors"))


def _config_files(ws: Path) -> None:
    folder = ws / "cfg"
    folder.mkdir()
    texts = {
        "nan-lr.json": '{"lr": NaN, "data": "digits", "steps": 2}',
        "inf-lr.json": '{"lr": 1e400, "data": "digits", "steps": 2}',
        "float-steps.json": '{"steps": 1e3, "data": "digits"}',
        "huge-steps.json": '{"steps": 1000000000000000000000000000000, "data": "digits"}',
        "empty.json": "",
        "empty.toml": "",
        "dup.toml": "steps = 2\nsteps = 3\n",
        "table.toml": "data = 'digits'\n[model]\nwidth = 16\n",
        "capital.json": '{"Steps": 2, "data": "digits"}',
        "fp8.json": '{"precision": "fp8", "data": "digits", "steps": 2}',
        "conditional-yes.json": '{"conditional": "yes", "data": "digits", "steps": 2}',
        "families-bad.json": '{"families": ["vae", "nope"], "data": "digits", "budget": 0.2}',
        "budget-zero.json": '{"budget": 0, "data": "digits"}',
        "forecast-nan.json": '{"forecast": "nan", "data": "digits", "budget": 0.2}',
        "device-cuda.json": '{"device": "cuda", "data": "digits", "steps": 2}',
        "dashes.json": '{"--lr": 0.1, "data": "digits", "steps": 2}',
        "resume-false.json": '{"resume": false, "data": "digits", "steps": 2}',
        "eval-every-negative.json": '{"eval_every": -1, "data": "digits", "steps": 2}',
        "sample-every-text.toml": 'sample-every = "x"\ndata = "digits"\nsteps = 2\n',
        "norm-groups-3.json": '{"norm_groups": 3, "data": "digits", "steps": 2}',
        "norm-groups-true.json": '{"norm_groups": true, "data": "digits", "steps": 2}',
        "norm-groups-4.toml": 'norm_groups = 4\ndata = "digits"\nsteps = 2\n',
        "null-byte-out.json": '{"out": "a\\u0000b", "data": "digits", "steps": 2}',
        "null-byte-data.json": '{"data": "npz:x\\u0000.npz", "steps": 2}',
        "list-data.json": '{"data": ["digits", "mnist"], "steps": 2}',
        "conditional.json": '{"conditional": true, "data": "digits", "steps": 2}',
    }
    for name, text in texts.items():
        (folder / name).write_text(text)
    (folder / "bom.json").write_bytes(b"\xef\xbb\xbf" + b'{"lr": 0.01}')
    (folder / "utf16.toml").write_bytes('steps = 2\n'.encode("utf-16"))
    (folder / "a-folder.json").mkdir()
    (folder / "own-out.json").write_text(json.dumps({"out": str(ws / "run-from-config"), "data": "digits", "steps": 2}))
    os.symlink(folder / "loop2.json", folder / "loop1.json")
    os.symlink(folder / "loop1.json", folder / "loop2.json")


def _damaged_packs(ws: Path) -> None:
    def copy(name: str) -> Path:
        shutil.copytree(ws / "pack-digits", ws / name)
        return ws / name

    shard = next(p for p in sorted((ws / "pack-digits").iterdir()) if p.suffix != ".json" and "label" not in p.name
                 and p.is_file() and p.stat().st_size > 1000)
    flipped = copy("pack-flipped") / shard.name
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    truncated = copy("pack-truncated") / shard.name
    truncated.write_bytes(truncated.read_bytes()[:-64])
    (copy("pack-bad-json") / "pack.json").write_text("{ not json")
    for name, edit in {"pack-version-99": lambda m: m.update(version=99),
                       "pack-zero-shape": lambda m: m.update(image_shape=[0, 8, 8])}.items():
        manifest = json.loads((ws / "pack-digits" / "pack.json").read_text())
        edit(manifest)
        (copy(name) / "pack.json").write_text(json.dumps(manifest))
    labels = [p for p in (ws / "pack-digits").iterdir() if "label" in p.name]
    pack = copy("pack-no-labels")
    for p in labels:
        (pack / p.name).unlink()
    (copy("pack-with-notes") / "notes.txt").write_text("the user's notes")


# ----------------------------------------------------------------------------- checks of outputs

def has(*paths: str) -> Callable[[Path, Result], str | None]:
    def check(ws: Path, res: Result) -> str | None:
        missing = [p for p in paths if not (ws / p).exists()]
        return f"missing {missing}" if missing else None
    return check


def npz_shape(path: str, shape: tuple[int, ...]) -> Callable[[Path, Result], str | None]:
    def check(ws: Path, res: Result) -> str | None:
        with np.load(ws / path) as f:
            x = f["images"]
        return None if x.shape == shape and x.dtype == np.uint8 else f"{path} holds {x.dtype} {x.shape}, not uint8 {shape}"
    return check


def json_stdout(*keys: str) -> Callable[[Path, Result], str | None]:
    def check(ws: Path, res: Result) -> str | None:
        try:
            value = json.loads(res.stdout)
        except ValueError as e:
            return f"stdout is not JSON: {e}"
        missing = [k for k in keys if k not in value]
        return f"JSON lacks {missing}" if missing else None
    return check


def finite_fid(ws: Path, res: Result) -> str | None:
    value = json.loads(res.stdout)
    return None if isinstance(value.get("fid"), (int, float)) and np.isfinite(value["fid"]) else f"fid = {value.get('fid')!r}"


def run_config(path: str, test: Callable[[dict], bool], what: str) -> Callable[[Path, Result], str | None]:
    def check(ws: Path, res: Result) -> str | None:
        try:
            config = json.loads((ws / path / "config.json").read_text())
        except (OSError, ValueError) as e:
            return f"{path}/config.json: {e}"
        return None if test(config) else f"{path}/config.json: {what} does not hold"
    return check


def metrics_rows(path: str, key: str) -> Callable[[Path, Result], str | None]:
    def check(ws: Path, res: Result) -> str | None:
        rows = [json.loads(l) for l in (ws / path / "metrics.jsonl").read_text().splitlines() if l.strip()]
        return None if any(key in r for r in rows) else f"no metrics row with {key!r} (keys: {sorted({k for r in rows for k in r})[:8]})"
    return check


def all_of(*checks) -> Callable[[Path, Result], str | None]:
    def check(ws: Path, res: Result) -> str | None:
        return next((p for p in (c(ws, res) for c in checks) if p), None)
    return check


# ----------------------------------------------------------------------------- signals

def signalled(sig: int, ready: Callable[[Path, subprocess.Popen, list[str]], bool], twice: bool = False):
    """Start the case, wait (polling, no deadline but the hang guard) until ``ready``, send ``sig``."""
    def runner(case: Case, ws: Path, env: dict) -> Result:
        start = time.monotonic()
        proc = popen(case, ws, env)
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(iter(proc.stderr.readline, "")), daemon=True)
        reader.start()
        while proc.poll() is None and time.monotonic() - start < HANG:
            if ready(ws, proc, seen):
                proc.send_signal(sig)
                if twice:
                    time.sleep(0.05)
                    proc.send_signal(sig)
                break
            time.sleep(0.02)
        try:
            out = proc.stdout.read() if proc.wait(timeout=HANG) is not None else ""
        except subprocess.TimeoutExpired:
            proc.kill()
            out = ""
        reader.join(timeout=30)
        return Result(proc.returncode, out, "".join(seen), time.monotonic() - start)
    return runner


def file_appears(path: str):
    return lambda ws, proc, seen: (ws / path).exists()


def entry_appears(folder: str, prefix: str):
    return lambda ws, proc, seen: any(p.name.startswith(prefix) for p in (ws / folder).iterdir())


def stderr_says(text: str):
    return lambda ws, proc, seen: text in "".join(seen)


def interrupted(code: int, word: str, then: Callable | None = None):
    """A signalled command: exit ``code`` (or death by the signal itself, which a shell shows as the same status), its
    last stderr line ``diffvae: WORD; ...`` and no other diffvae line (a running compare's plan lines may precede it),
    no traceback, then ``then``'s check."""
    def check(ws: Path, res: Result) -> str | None:
        lines = res.stderr.strip().splitlines()
        if res.rc not in (code, 128 - code):
            return f"exit {res.rc}, not {code}: {lines[-1:]}"
        if "Traceback" in res.stderr or not lines or not lines[-1].startswith(f"diffvae: {word};"):
            return f"{len(lines)} stderr lines: {' | '.join(l[:90] for l in lines[-3:])}"
        if any(l.startswith("diffvae: ") and not l.startswith("diffvae: compare") for l in lines[:-1]):
            return f"more than one diffvae line: {' | '.join(l[:90] for l in lines[-3:])}"
        return then(ws, res) if then is not None else None
    return check


def checkpoint_intact(run: str) -> Callable[[Path, Result], str | None]:
    def check(ws: Path, res: Result) -> str | None:
        from safetensors import safe_open

        try:
            with safe_open(str(ws / run / "checkpoint.safetensors"), "pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 - any failure to read is the finding
            return f"checkpoint unreadable: {e}"
        temps = [p.name for p in (ws / run).rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]
        return f"temporary files left: {temps}" if temps else None
    return check


def finished_at(run: str, steps: int) -> Callable[[Path, Result], str | None]:
    def check(ws: Path, res: Result) -> str | None:
        rows = [json.loads(l) for l in (ws / run / "metrics.jsonl").read_text().splitlines() if l.strip()]
        last = max((r.get("step", 0) for r in rows), default=0)
        return None if last == steps else f"last logged step {last}, not {steps}"
    return check


# ----------------------------------------------------------------------------- the table

def R(area: str, name: str, argv: list[str], fragment: str | None = None, **kw) -> Case:
    return Case(area, name, argv, "refused", fragment, **kw)


def W(area: str, name: str, argv: list[str], check=None, outputs: tuple[str, ...] = (), **kw) -> Case:
    return Case(area, name, argv, "works", check=check, outputs=outputs, **kw)


def E(area: str, name: str, argv: list[str], check=None, outputs: tuple[str, ...] = (), **kw) -> Case:
    return Case(area, name, argv, "either", check=check, outputs=outputs, **kw)


S = "npz:{ws}/samples.npz"
D = ["--data", "digits"]
TV = ["train", "vae", "--data", "digits", "--steps", "2", *SMALL_VAE]
TD = ["train", "ddpm", "--data", "digits", "--steps", "2", *TINY_DDPM]
NEW = "{ws}/never"  # an --out no refused case may create


def score_cases() -> list[Case]:
    a = "score"
    return [
        R(a, "size-zero", ["score", S, *D, "--size", "0"], "size"),
        R(a, "size-negative", ["score", S, *D, "--size", "-3"], "size"),
        R(a, "size-huge", ["score", S, *D, "--size", "100000"], "100000"),
        R(a, "steps-zero-on-run", ["score", "{ws}/run-ddpm", "--steps", "0"], "--steps"),
        R(a, "eta-nan-on-run", ["score", "{ws}/run-ddpm", "--eta", "nan"], "--eta"),
        R(a, "eta-two-on-run", ["score", "{ws}/run-ddpm", "--eta", "2"], "--eta"),
        R(a, "n-three-on-run", ["score", "{ws}/run-vae", "--n", "3"], "--n must be"),
        R(a, "sampler-on-vae-run", ["score", "{ws}/run-vae", "--sampler", "ddim"], "one step"),
        R(a, "rgb-samples-grey-data", ["score", "npz:{ws}/samples-rgb.npz", *D], "reference data is 1×8×8"),
        R(a, "int64-samples", ["score", "npz:{ws}/samples-int64.npz", *D], "uint8"),
        R(a, "nan-samples", ["score", "npz:{ws}/samples-nan.npz", *D]),
        R(a, "zero-samples", ["score", "npz:{ws}/samples-none.npz", *D], "no images"),
        R(a, "empty-folder", ["score", "folder:{ws}/emptydir", *D]),
        R(a, "folder-without-images", ["score", "folder:{ws}/holder", *D]),
        R(a, "folder-of-16px-images", ["score", "folder:{ws}/pngs-16", *D], "16×16"),
        R(a, "idx-truncated", ["score", "idx:{ws}/idx-truncated", *D]),
        R(a, "data-resized-mismatch", ["score", S, *D, "--size", "16"], "16×16"),
        R(a, "bootstrap-above-range", ["score", S, *D, "--bootstrap", "100001"], "--bootstrap"),
        R(a, "seed-2-to-32", ["score", S, *D, "--seed", "4294967296"], "--seed"),
        R(a, "pair-b-three-images", ["score", S, "npz:{ws}/samples-three.npz", *D], "at least 4"),
        R(a, "pair-a-is-a-run", ["score", "{ws}/run-vae", S, *D], "two sample sets"),
        R(a, "pair-with-n", ["score", S, S, *D, "--n", "10"], "--n"),
        R(a, "pair-without-data", ["score", S, S], "--data"),
        R(a, "samples-is-a-file-no-prefix", ["score", "{ws}/afile", *D], "neither"),
        R(a, "header-declares-a-terabyte", ["score", "npz:{ws}/huge-header.npz", *D], "declares"),
        W(a, "nhwc-samples", ["score", "npz:{ws}/samples-nhwc.npz", *D, "--bootstrap", "0", "--json"], json_stdout("fid")),
        W(a, "json-fid-finite", ["score", S, *D, "--json"], all_of(json_stdout("fid", "kid"), finite_fid)),
        W(a, "bare-npz-path", ["score", "{ws}/samples.npz", *D, "--bootstrap", "0", "--json"], json_stdout("fid")),
        W(a, "pair-same-set", ["score", S, "npz:{ws}/samples-nhwc.npz", *D, "--json"], json_stdout("comparisons")),
        W(a, "run-with-data-default", ["score", "{ws}/run-vae", "--n", "50", "--bootstrap", "0", "--json"], json_stdout("fid", "family")),
    ]


def INCEPTION_REASON(fragment: str) -> str | None:
    """The weights checks run after torch-fidelity is imported (a missing install is the first error, by design):
    without an importable torch-fidelity the case is a refusal with that line, and the fragment is not asked."""
    sys.path.insert(0, EXTRA_PATH)
    try:
        import torch_fidelity  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or torchvision missing underneath it
        return None
    finally:
        sys.path.remove(EXTRA_PATH)
    return fragment


def inception_cases() -> list[Case]:
    a = "inception"
    f = ["score", S, *D, "--features"]
    I = INCEPTION_REASON
    return [
        R(a, "weights-missing", [*f, "inception:{ws}/inception/none.pth"], I(r"not found")),
        R(a, "weights-a-folder", [*f, "inception:{ws}/inception"], I(r"not a file")),
        R(a, "weights-pickled", [*f, "inception:{ws}/inception/pickled.pth"], I(r"pickled"), forbid="weights_only=False"),
        R(a, "weights-a-list", [*f, "inception:{ws}/inception/a-list.pth"], I(r"not a state dict")),
        R(a, "weights-garbage", [*f, "inception:{ws}/inception/garbage.pth"], I(r"cannot read"), forbid="weights_only=False"),
        R(a, "weights-empty-safetensors", [*f, "inception:{ws}/inception/empty.safetensors"], I(r"cannot read")),
        R(a, "weights-wrong-keys", [*f, "inception:{ws}/inception/wrong-keys.safetensors"], I(r"Inception")),
        R(a, "weights-integers", [*f, "inception:{ws}/inception/int.safetensors"], I(r"int64")),
        R(a, "weights-newline-path", [*f, "inception:{ws}/incep\ntion.pth"], I(r"\\n")),
        R(a, "no-colon", [*f, "inception"], "--features"),
        R(a, "device-cuda", [*f, "inception:{ws}/inception/int.safetensors", "--device", "cuda"], "CUDA"),
        R(a, "in-a-pair", ["score", S, S, *D, "--features", "inception:{ws}/inception/pickled.pth"], I(r"pickled"),
          forbid="weights_only=False"),
        R(a, "on-a-run", ["score", "{ws}/run-vae", "--features", "inception:{ws}/inception/wrong-keys.safetensors"], I(r"Inception")),
    ]


def export_cases() -> list[Case]:
    a = "export"
    e = ["export", "{ws}/run-ddpm", "--to", "diffusers"]
    return [
        R(a, "vae-run", ["export", "{ws}/run-vae", "--to", "diffusers", NEW]),
        R(a, "conditional-run", ["export", "{ws}/run-cddpm", "--to", "diffusers", NEW], "class-conditional"),
        R(a, "pipeline-bogus", [*e, "--pipeline", "sde", NEW], "--pipeline"),
        W(a, "unicode-space-out", [*e, "{ws}/exp ü space"], has("exp ü space/model_index.json", "exp ü space/.diffvae"),
          ("exp ü space",)),
        W(a, "ddpm-pipeline", [*e, "--pipeline", "ddpm", "{ws}/exp-ddpm"], has("exp-ddpm/model_index.json"), ("exp-ddpm",)),
        W(a, "force-onto-own-export", [*e, "--force", "{ws}/exp ü space"], has("exp ü space/model_index.json"), ("exp ü space",)),
        R(a, "force-onto-user-folder", [*e, "--force", "{ws}/holder"], "not a diffvae export"),
        R(a, "force-onto-a-pack", [*e, "--force", "{ws}/pack-digits"], "not a diffvae export"),
        R(a, "out-under-a-file", [*e, "{ws}/afile/x"]),
        R(a, "out-unwritable", [*e, "/sys/diffvae-export"]),
        R(a, "force-parent-via-run-symlink", ["export", "{ws}/link-to-run-ddpm", "--to", "diffusers", "--force", "{ws}"], "holds the run"),
        R(a, "force-onto-symlink-to-run", [*e, "--force", "{ws}/link-to-run-ddpm"]),
        R(a, "out-inside-run-via-symlink", [*e, "{ws}/link-to-run-ddpm/x"], "inside"),
        R(a, "disk-full", [*e, "{ws}/exp-full"], "cannot write", fsize=20_000),
        R(a, "run-empty-string", ["export", "", "--to", "diffusers", NEW]),
        R(a, "run-is-a-file", ["export", "{ws}/afile", "--to", "diffusers", NEW]),
        R(a, "run-is-user-folder", ["export", "{ws}/holder", "--to", "diffusers", NEW]),
        R(a, "missing-out", [*e], "OUT"),
        R(a, "out-dot-in-workspace", [*e, "."]),  # "already exists" or "holds the run": both right
        R(a, "config-flag", [*e, "--config", "{ws}/cfg/bom.json", NEW], "--config"),
    ]


def pack_cases() -> list[Case]:
    a = "pack"
    return [
        W(a, "unicode-space-out", ["data", "pack", "digits", "--limit", "200", "--out", "{ws}/pk ü space"], has("pk ü space/pack.json"),
          ("pk ü space",)),
        W(a, "train-on-unicode-pack", ["train", "vae", "--data", "packed:{ws}/pk ü space", "--steps", "2", *SMALL_VAE,
                                       "--out", "{ws}/run-on-pack"], has("run-on-pack/checkpoint.safetensors"), ("run-on-pack",)),
        R(a, "pack-prefix-typo", ["train", "vae", "--data", "pack:{ws}/pack-digits", "--steps", "2", *SMALL_VAE, "--out", NEW], "packed:"),
        R(a, "shard-byte-flipped", ["train", "vae", "--data", "packed:{ws}/pack-flipped", "--steps", "2", *SMALL_VAE, "--out", NEW],
          "damaged"),
        R(a, "shard-truncated", ["data", "info", "packed:{ws}/pack-truncated"], "truncated"),
        R(a, "manifest-not-json", ["data", "info", "packed:{ws}/pack-bad-json"]),
        R(a, "manifest-version-99", ["data", "info", "packed:{ws}/pack-version-99"], "version"),
        R(a, "manifest-zero-shape", ["data", "info", "packed:{ws}/pack-zero-shape"], "image_shape"),
        R(a, "labels-missing-conditional", ["train", "vae", "--conditional", "--data", "packed:{ws}/pack-no-labels", "--steps", "2",
                                            *SMALL_VAE, "--out", NEW]),
        R(a, "size-above-range", ["data", "pack", "digits", "--size", "2000", "--out", NEW], "--size"),
        W(a, "force-onto-own-pack", ["data", "pack", "digits", "--limit", "100", "--force", "--out", "{ws}/pk ü space"],
          has("pk ü space/pack.json"), ("pk ü space",)),
        R(a, "out-dot-user-folder", ["data", "pack", "digits", "--out", "."], cwd="holder"),
        R(a, "out-dotdot", ["data", "pack", "digits", "--out", ".."], cwd="holder/inner"),
        R(a, "force-out-dotdot", ["data", "pack", "digits", "--force", "--out", ".."], cwd="holder/inner"),
        R(a, "labels-wrong-length", ["data", "pack", "npz:{ws}/labels-wrong-length.npz", "--out", NEW], "labels"),
        R(a, "empty-folder-source", ["data", "pack", "folder:{ws}/emptydir", "--out", NEW]),
        R(a, "key-on-digits", ["data", "pack", "digits", "--key", "x", "--out", NEW], "--key"),
        R(a, "size-on-packed", ["train", "vae", "--data", "packed:{ws}/pack-digits", "--size", "16", "--steps", "2", *SMALL_VAE,
                                "--out", NEW], "16"),
        W(a, "info-on-pack", ["data", "info", "packed:{ws}/pack-digits"], lambda ws, r: None if "8" in r.stdout + r.stderr else "no shape printed"),
        R(a, "force-onto-pack-with-notes", ["data", "pack", "digits", "--force", "--out", "{ws}/pack-with-notes"], "not a diffvae pack"),
        R(a, "packed-a-file", ["data", "info", "packed:{ws}/afile"]),
        R(a, "disk-full", ["data", "pack", "digits", "--out", "{ws}/pk-full"], "cannot write", fsize=20_000),
        R(a, "out-unwritable", ["data", "pack", "digits", "--out", "/sys/diffvae-pack"]),
        R(a, "packed-symlink-loop", ["data", "info", "packed:{ws}/loop-a"]),
        R(a, "out-dotdot-through-missing", ["data", "pack", "digits", "--out", "{ws}/nosuch/.."]),
    ]


def config_cases() -> list[Case]:
    a = "config"

    def c(name: str, extra: list[str] | None = None, family: str = "vae", fragment: str | None = None) -> Case:
        return R(a, name.replace(".", "-"),
                 ["train", family, "--config", f"{{ws}}/cfg/{name}", *(extra or []), "--out", NEW], fragment)

    return [
        c("nan-lr.json", fragment="--lr"),
        c("inf-lr.json", fragment="--lr"),
        c("float-steps.json", fragment="--steps"),
        c("huge-steps.json", fragment="--steps"),
        c("empty.json"),
        c("empty.toml", fragment="--data"),
        c("dup.toml"),
        c("table.toml", fragment="model"),
        c("capital.json", fragment="'Steps'"),
        c("fp8.json", fragment="fp8"),
        c("conditional-yes.json", fragment="true or false"),
        c("device-cuda.json", fragment="CUDA"),
        c("dashes.json", fragment="unknown key"),
        c("resume-false.json", fragment="'resume'"),
        c("eval-every-negative.json", fragment="--eval-every"),
        c("sample-every-text.toml", fragment="--sample-every"),
        c("bom.json"),
        c("utf16.toml"),
        c("a-folder.json"),
        c("loop1.json"),
        c("null-byte-data.json"),
        R(a, "null-byte-out", ["train", "vae", "--config", "{ws}/cfg/null-byte-out.json"]),
        c("list-data.json"),
        R(a, "compare-families-bad", ["compare", "--config", "{ws}/cfg/families-bad.json", "--out", NEW], "nope"),
        R(a, "compare-budget-zero", ["compare", "--config", "{ws}/cfg/budget-zero.json", "--out", NEW], "--budget"),
        R(a, "compare-forecast-nan", ["compare", "--config", "{ws}/cfg/forecast-nan.json", "--out", NEW], "forecast"),
        R(a, "on-data-pack", ["data", "pack", "digits", "--config", "{ws}/cfg/bom.json", "--out", NEW], "--config"),
        R(a, "on-score", ["score", S, *D, "--config", "{ws}/cfg/bom.json"], "--config"),
        R(a, "equals-empty", ["train", "vae", "--config=", "--out", NEW], "--config"),
        W(a, "out-from-file", ["train", "vae", "--config", "{ws}/cfg/own-out.json", *SMALL_VAE],
          has("run-from-config/checkpoint.safetensors"), ("run-from-config",)),
        W(a, "conditional-true", ["train", "ddpm", "--config", "{ws}/cfg/conditional.json", *TINY_DDPM, "--out", "{ws}/run-cfg-cond"],
          run_config("run-cfg-cond", lambda c: c["model"]["conditional"] is True, "model.conditional"), ("run-cfg-cond",)),
        W(a, "command-line-wins", ["train", "vae", "--config", "{ws}/cfg/nan-lr.json", "--lr", "0.001", *SMALL_VAE,
                                   "--out", "{ws}/run-cfg-lr"],
          run_config("run-cfg-lr", lambda c: abs(c["train"]["lr"] - 0.001) < 1e-12, "train.lr == 0.001"), ("run-cfg-lr",)),
    ]


def conditioning_cases() -> list[Case]:
    a = "conditioning"
    s = ["sample", "{ws}/run-cddpm", "--n", "4"]
    return [
        R(a, "class-10-of-10", [*s, "--class", "10", "--out", "{ws}/never.png"], "class"),
        R(a, "class-negative", [*s, "--class", "-1", "--out", "{ws}/never.png"], "class"),
        R(a, "classes-beyond", [*s, "--classes", "0,99", "--out", "{ws}/never.png"], "99"),
        R(a, "class-and-classes", [*s, "--class", "0", "--classes", "1,2", "--out", "{ws}/never.png"]),
        R(a, "guidance-nan", [*s, "--class", "1", "--guidance", "nan", "--out", "{ws}/never.png"], "--guidance"),
        R(a, "guidance-inf", [*s, "--class", "1", "--guidance", "inf", "--out", "{ws}/never.png"], "--guidance"),
        R(a, "guidance-negative", [*s, "--class", "1", "--guidance", "-1", "--out", "{ws}/never.png"], "--guidance"),
        R(a, "guidance-without-class", [*s, "--guidance", "3", "--out", "{ws}/never.png"], "--class"),
        R(a, "guidance-on-vae", ["sample", "{ws}/run-cvae", "--n", "4", "--class", "1", "--guidance", "2", "--out", "{ws}/never.png"],
          "one step"),
        R(a, "class-on-unconditional", ["sample", "{ws}/run-ddpm", "--n", "4", "--class", "0", "--out", "{ws}/never.png"], "uncond"),
        R(a, "classes-empty", [*s, "--classes", "", "--out", "{ws}/never.png"], "--classes"),
        R(a, "class-float", [*s, "--class", "1.5", "--out", "{ws}/never.png"], "--class"),
        R(a, "eval-guidance-unconditional", ["eval", "{ws}/run-ddpm", "--guidance", "2", "--quick"], "--guidance"),
        R(a, "interpolate-class-beyond", ["interpolate", "{ws}/run-cddpm", "--classes", "0,10", "--out", "{ws}/never.png"], "10"),
        R(a, "interpolate-one-class", ["interpolate", "{ws}/run-cddpm", "--classes", "0", "--out", "{ws}/never.png"], "--classes"),
        R(a, "interpolate-guidance-alone", ["interpolate", "{ws}/run-ddpm", "--guidance", "2", "--out", "{ws}/never.png"], "--guidance"),
        R(a, "train-conditional-unlabelled", ["train", "vae", "--conditional", "--data", S, "--steps", "2", *SMALL_VAE, "--out", NEW],
          "label"),
        R(a, "train-num-classes-too-few", [*TD, "--conditional", "--num-classes", "5", "--out", NEW], "5"),
        R(a, "train-p-uncond-above-one", [*TD, "--conditional", "--p-uncond", "1.5", "--out", NEW], "p-uncond"),
        R(a, "train-p-uncond-nan", [*TD, "--conditional", "--p-uncond", "nan", "--out", NEW], "p-uncond"),
        R(a, "train-num-classes-without-conditional", [*TD, "--num-classes", "3", "--out", NEW], "--conditional"),
        R(a, "compare-conditional-unlabelled", ["compare", "--conditional", "--data", S, "--budget", "0.2", "--out", NEW], "label"),
        W(a, "sample-class-npz", [*s, "--class", "3", "--out", "{ws}/c3.npz"], npz_shape("c3.npz", (4, 1, 8, 8)), ("c3.npz",)),
        W(a, "sample-classes-guided", [*s, "--classes", "0,1", "--guidance", "2", "--out", "{ws}/c01.png"], has("c01.png"), ("c01.png",)),
        W(a, "interpolate-classes", ["interpolate", "{ws}/run-cddpm", "--classes", "0,1", "--frames", "3", "--pairs", "1",
                                     "--out", "{ws}/strip.png"], has("strip.png"), ("strip.png",)),
        W(a, "train-labelled-npz", ["train", "vae", "--conditional", "--data", "npz:{ws}/labelled.npz", "--steps", "2", *SMALL_VAE,
                                    "--out", "{ws}/run-labelled"],
          run_config("run-labelled", lambda c: c["model"]["num_classes"] == 4, "model.num_classes == 4"), ("run-labelled",)),
    ]


def monitor_cases() -> list[Case]:
    a = "monitor"
    return [
        W(a, "eval-every-cold-cache", [*TV[:-1], "--steps", "4", "--eval-every", "2", "--quiet", "--out", "{ws}/run-mon-eval"],
          metrics_rows("run-mon-eval", "eval_fid"), ("run-mon-eval",), env={"DIFFVAE_CACHE": "{root}/cold-cache-1"}),
        W(a, "sample-every-ddpm", [*TD, "--steps", "4", "--sample-every", "2", "--out", "{ws}/run-mon-sample"],
          has("run-mon-sample/samples/step_2.png", "run-mon-sample/samples/step_4.png"), ("run-mon-sample",)),
        W(a, "sample-every-conditional", ["train", "ddpm", "--conditional", "--data", "digits", "--steps", "2", *TINY_DDPM,
                                          "--sample-every", "2", "--out", "{ws}/run-mon-csample"],
          has("run-mon-csample/samples/step_2.png"), ("run-mon-csample",)),
        W(a, "tensorboard", [*TV, "--tensorboard", "--out", "{ws}/run-mon-tb"], has("run-mon-tb/tensorboard"), ("run-mon-tb",)),
        R(a, "sample-every-huge", [*TV, "--sample-every", str(10**30), "--out", NEW], "--sample-every"),
        R(a, "eval-every-huge", [*TV, "--eval-every", str(10**30), "--out", NEW], "--eval-every"),
        R(a, "sample-every-nan", [*TV, "--sample-every", "nan", "--out", NEW], "--sample-every"),
        R(a, "eval-every-cache-is-a-file", [*TV, "--eval-every", "1", "--out", NEW], "cache", env={"DIFFVAE_CACHE": "{ws}/afile"}),
        R(a, "eval-every-cache-unwritable", [*TV, "--eval-every", "1", "--out", NEW], "cache", env={"DIFFVAE_CACHE": "/sys/diffvae-cache"}),
        R(a, "resume-other-eval-every", ["train", "vae", "--resume", "--eval-every", "3", "--out", "{ws}/run-vae"]),
    ]


def cache_cases() -> list[Case]:
    a = "cache"
    sc = ["score", S, *D, "--bootstrap", "0", "--json"]
    return [
        R(a, "score-cache-is-a-file", sc, "cache", env={"DIFFVAE_CACHE": "{ws}/afile"}),
        R(a, "score-cache-under-a-file", sc, "cache", env={"DIFFVAE_CACHE": "{ws}/afile/sub"}),
        R(a, "score-cache-unwritable", sc, "cache", env={"DIFFVAE_CACHE": "/sys/diffvae-cache"}),
        R(a, "eval-cache-is-a-file", ["eval", "{ws}/run-vae", "--quick"], "cache", env={"DIFFVAE_CACHE": "{ws}/afile"}),
        W(a, "score-cache-created", sc, json_stdout("fid"), env={"DIFFVAE_CACHE": "{root}/new cache ü/deeper"}),
        W(a, "score-cache-relative", sc, json_stdout("fid"), env={"DIFFVAE_CACHE": "rel-cache"}, outputs=("rel-cache",)),
        W(a, "score-cache-newline", sc, json_stdout("fid"), env={"DIFFVAE_CACHE": "{root}/nl\ncache"}),
        W(a, "score-corrupt-cache-same-fid", sc, same_fid_after_corrupting, env={"DIFFVAE_CACHE": "{root}/corrupt-cache"}),
        W(a, "relabelled-data-new-entry", ["score", S, "--data", "npz:{ws}/labelled.npz", "--bootstrap", "0", "--json"],
          relabelled_gets_its_own_entry, env={"DIFFVAE_CACHE": "{root}/relabel-cache"}),
        W(a, "folder-data-cache-is-a-file", ["train", "vae", "--data", "folder:{ws}/pngs-16", "--steps", "2", *SMALL_VAE,
                                             "--out", "{ws}/run-uncached"], has("run-uncached/checkpoint.safetensors"),
          ("run-uncached",), env={"DIFFVAE_CACHE": "{ws}/afile"}),  # documented: a folder cache that cannot be written is skipped
        W(a, "folder-data-corrupt-pack-cache", ["data", "info", "folder:{ws}/pngs-16"], corrupt_pack_cache_rebuilt,
          env={"DIFFVAE_CACHE": "{root}/pack-cache"}),
    ]


def _cache_env(root: Path, cache: str) -> dict:
    tmp = root / "tmp" / "cache-probe"
    tmp.mkdir(parents=True, exist_ok=True)
    return {**base_env(root, tmp), "DIFFVAE_CACHE": str(root / cache)}


def _again(ws: Path, argv: list[str], cache: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffvae", *expand(argv, ws)], cwd=ws, env=_cache_env(ws.parent, cache),
                          capture_output=True, text=True)


def same_fid_after_corrupting(ws: Path, res: Result) -> str | None:
    """Overwrite every file of the (now warm) feature cache with garbage; score again: the same FID or one line."""
    first = json.loads(res.stdout)["fid"]
    cache = ws.parent / "corrupt-cache"
    files = [p for p in cache.rglob("*") if p.is_file()]
    if not files:
        return "the score wrote nothing to $DIFFVAE_CACHE"
    for p in files:
        p.write_bytes(b"garbage" * 10)
    again = _again(ws, ["score", S, *D, "--bootstrap", "0", "--json"], "corrupt-cache")
    if again.returncode != 0:
        lines = again.stderr.strip().splitlines()
        return None if len(lines) == 1 and lines[0].startswith("diffvae: error:") and "internal" not in lines[0] else \
            f"corrupt cache: exit {again.returncode}: {lines[-1:]}"
    second = json.loads(again.stdout)["fid"]
    return None if abs(second - first) <= 1e-6 * max(1, abs(first)) else f"corrupt cache: FID {second} != {first}"


def relabelled_gets_its_own_entry(ws: Path, res: Result) -> str | None:
    """The same images with other labels must not reuse the feature network trained on the first labels."""
    cache = ws.parent / "relabel-cache"
    before = {p for p in cache.rglob("*") if p.is_file()}
    with np.load(ws / "labelled.npz") as f:
        images, labels = f["images"], f["labels"]
    np.savez(ws.parent / "relabelled.npz", images=images, labels=(labels + 1) % 4)
    again = _again(ws, ["score", S, "--data", f"npz:{ws.parent}/relabelled.npz", "--bootstrap", "0", "--json"], "relabel-cache")
    if again.returncode != 0:
        return f"relabelled: exit {again.returncode}: {again.stderr.strip().splitlines()[-1:]}"
    after = {p for p in cache.rglob("*") if p.is_file()}
    return None if after - before else "the relabelled data reused the cached feature network (no new cache entry)"


def corrupt_pack_cache_rebuilt(ws: Path, res: Result) -> str | None:
    cache = ws.parent / "pack-cache"
    files = [p for p in cache.rglob("*") if p.is_file()]
    if not files:
        return "folder: data left no cache entry"
    for p in files:
        p.write_bytes(b"\x00" * 3)
    again = _again(ws, ["data", "info", "folder:{ws}/pngs-16"], "pack-cache")
    if again.returncode != 0:
        lines = again.stderr.strip().splitlines()
        ok = len(lines) == 1 and lines[0].startswith("diffvae: error:") and "internal" not in lines[0]
        return None if ok else f"corrupt pack cache: exit {again.returncode}: {lines[-1:]}"
    return None if again.stdout == res.stdout else "corrupt pack cache: data info printed something else"


def disk_cases() -> list[Case]:
    a = "disk"
    return [
        R(a, "train-checkpoint-full", [*TV[:-1], "--steps", "4", "--checkpoint-every", "2", "--quiet", "--out", "{ws}/run-full"],
          "cannot write", fsize=20_000, leaves=("run-full",)),
        R(a, "sample-npz-full", ["sample", "{ws}/run-vae", "--n", "2000", "--out", "{ws}/full.npz"], "cannot write", fsize=20_000),
        R(a, "sample-png-full", ["sample", "{ws}/run-vae", "--n", "64", "--out", "{ws}/full.png"], "cannot write", fsize=100),
        R(a, "eval-json-full", ["eval", "{ws}/run-vae", "--quick", "--out", "{ws}/full.json"], "cannot write", fsize=200),
        R(a, "plot-full", ["plot", "{ws}/run-vae", "--out", "{ws}/full-plot.png"], "cannot write", fsize=100),
        R(a, "interpolate-full", ["interpolate", "{ws}/run-vae", "--out", "{ws}/full-strip.png"], "cannot write", fsize=100),
        R(a, "invert-full", ["invert", "{ws}/run-vae", "--n", "4", "--out", "{ws}/full-inv.png"], "cannot write", fsize=100),
        E(a, "score-cold-cache-full", ["score", S, *D, "--bootstrap", "0", "--json"], json_stdout("fid"), fsize=1000,
          env={"DIFFVAE_CACHE": "{root}/full-cache"}),
        R(a, "compare-full", ["compare", "--data", "digits", "--budget", "0.2", "--families", "vae", "--quiet", "--out", "{ws}/cmp-full"],
          "cannot write", fsize=3000, leaves=("cmp-full",)),
        R(a, "train-out-unwritable", [*TV, "--out", "/sys/diffvae-run"]),
        R(a, "sample-out-unwritable", ["sample", "{ws}/run-vae", "--n", "2", "--out", "/sys/s.png"]),
        R(a, "eval-out-unwritable", ["eval", "{ws}/run-vae", "--quick", "--out", "/sys/e.json"]),
        R(a, "pack-deep-out-full", ["data", "pack", "digits", "--out", "{ws}/deep1/deep2/pk"], "cannot write", fsize=20_000),
        R(a, "compare-out-unwritable", ["compare", "--data", "digits", "--budget", "0.2", "--out", "/sys/diffvae-cmp"]),
    ]


def path_cases() -> list[Case]:
    a = "paths"
    return [
        W(a, "train-unicode-space", [*TV, "--out", "{ws}/run ü space"], has("run ü space/checkpoint.safetensors"), ("run ü space",)),
        W(a, "sample-from-unicode-space", ["sample", "{ws}/run ü space", "--n", "4", "--out", "{ws}/from ü.png"], has("from ü.png"),
          ("from ü.png",)),
        W(a, "train-newline-out", [*TV, "--out", "{ws}/run\nnl"], has("run\nnl/checkpoint.safetensors"), ("run\nnl",)),
        W(a, "sample-newline-out", ["sample", "{ws}/run-vae", "--n", "4", "--out", "{ws}/s\nnl.png"], has("s\nnl.png"), ("s\nnl.png",)),
        W(a, "train-relative-dot-slash", [*TV, "--out", "./run-rel"], has("run-rel/checkpoint.safetensors"), ("run-rel",)),
        W(a, "sample-through-symlink", ["sample", "{ws}/link-to-run-ddpm", "--n", "2", "--out", "{ws}/via-link.png"], has("via-link.png"),
          ("via-link.png",)),
        W(a, "sample-run-dot", ["sample", ".", "--n", "2", "--out", "../from-dot.png"], has("from-dot.png"), ("from-dot.png",),
          cwd="run-vae"),
        R(a, "sample-into-run-from-inside", ["sample", ".", "--n", "2", "--out", "s.png"], "inside the run", cwd="run-vae"),
        R(a, "eval-out-into-run-dotdot", ["eval", "{ws}/run-vae", "--quick", "--out", "../run-ddpm/e.json"], "inside", cwd="holder"),
        W(a, "train-force-dot-inside-run", [*TV, "--force", "--out", "."], has("run-dot/checkpoint.safetensors", "run-dot/.diffvae"),
          ("run-dot",), cwd="run-dot", setup=lambda ws: shutil.copytree(ws / "run-vae", ws / "run-dot")),
        R(a, "train-force-symlink-to-holder", [*TV, "--force", "--out", "{ws}/link-to-holder"], "not a diffvae run"),
        R(a, "data-symlink-loop", ["train", "vae", "--data", "folder:{ws}/loop-a", "--steps", "2", *SMALL_VAE, "--out", NEW]),
        R(a, "npz-symlink-loop", ["data", "info", "npz:{ws}/loop-a"]),
        R(a, "out-name-too-long", [*TV, "--out", "{ws}/" + "x" * 300]),
        R(a, "sample-out-name-too-long", ["sample", "{ws}/run-vae", "--n", "2", "--out", "{ws}/" + "y" * 300 + ".png"]),
        R(a, "run-path-tilde-missing", ["sample", "~/no-such-diffvae-run", "--n", "2", "--out", "{ws}/never.png"]),
        R(a, "out-parent-missing", ["sample", "{ws}/run-vae", "--n", "2", "--out", "{ws}/no/such/dir/s.png"], "does not exist"),
        R(a, "tab-and-escape-in-run", ["sample", "{ws}/no\tsuch\x1b[31m", "--n", "2", "--out", "{ws}/never.png"], "\\t"),
        E(a, "train-out-through-missing-dotdot", [*TV, "--out", "{ws}/nosuch2/../run-dd"], has("run-dd/checkpoint.safetensors"),
          ("run-dd",)),
        R(a, "unicode-npz-missing", ["data", "info", "npz:{ws}/données-ü.npz"], "données"),
    ]


def signal_cases() -> list[Case]:
    a = "signals"
    long_train = ["train", "vae", "--data", "digits", "--steps", "4000", "--checkpoint-every", "50", *SMALL_VAE]
    return [
        W(a, "train-sigint-after-checkpoint", [*long_train, "--out", "{ws}/run-int"],
          interrupted(130, "interrupted", checkpoint_intact("run-int")), ("run-int",),
          runner=signalled(signal.SIGINT, file_appears("run-int/checkpoint.safetensors"))),
        W(a, "train-resume-after-sigint", ["train", "vae", "--resume", "--steps", "4000", "--out", "{ws}/run-int"],
          finished_at("run-int", 4000), ("run-int",)),
        W(a, "train-sigterm", [*long_train, "--out", "{ws}/run-term"],
          interrupted(143, "terminated", checkpoint_intact("run-term")), ("run-term",),
          runner=signalled(signal.SIGTERM, file_appears("run-term/checkpoint.safetensors"))),
        W(a, "train-double-sigint", [*long_train, "--out", "{ws}/run-int2"],
          interrupted(130, "interrupted", checkpoint_intact("run-int2")), ("run-int2",),
          runner=signalled(signal.SIGINT, file_appears("run-int2/checkpoint.safetensors"), twice=True)),
        W(a, "train-resume-after-double-sigint", ["train", "vae", "--resume", "--out", "{ws}/run-int2", "--quiet"],
          finished_at("run-int2", 4000), ("run-int2",)),
        W(a, "pack-sigint", ["data", "pack", "npz:{ws}/big.npz", "--out", "{ws}/pk-int"], interrupted(130, "interrupted"),
          runner=signalled(signal.SIGINT, entry_appears(".", ".pk-int"))),
        W(a, "score-sigint", ["score", S, *D], interrupted(130, "interrupted"),
          runner=signalled(signal.SIGINT, stderr_says("diffvae score:")), env={"DIFFVAE_CACHE": "{root}/sigint-cache"}),
        W(a, "export-sigint", ["export", "{ws}/run-ddpm", "--to", "diffusers", "{ws}/exp-int"], interrupted(130, "interrupted"),
          runner=signalled(signal.SIGINT, entry_appears(".", ".exp-int"))),
        W(a, "sample-sigint", ["sample", "{ws}/run-ddpm", "--n", "20000", "--steps", "20", "--out", "{ws}/int.npz"],
          interrupted(130, "interrupted"), runner=signalled(signal.SIGINT, lambda ws, p, s: time.sleep(8) or True)),
        W(a, "sigint-while-starting", ["data", "info", "digits"], interrupted(130, "interrupted"),
          runner=signalled(signal.SIGINT, lambda ws, p, s: time.sleep(0.4) or True)),
        W(a, "compare-sigint", ["compare", "--data", "digits", "--budget", "0.2", "--families", "vae,ddpm", "--quiet",
                                "--out", "{ws}/cmp-int"], interrupted(130, "interrupted"), ("cmp-int",),
          runner=signalled(signal.SIGINT, lambda ws, p, s: any((ws / "cmp-int").rglob("checkpoint.safetensors")))),
        W(a, "compare-resume-after-sigint", ["compare", "--data", "digits", "--budget", "0.2", "--families", "vae,ddpm", "--quiet",
                                             "--out", "{ws}/cmp-int", "--resume"],  # "the same command and --resume"
          has("cmp-int/results.json"), ("cmp-int",)),
    ]


def force_cases() -> list[Case]:
    a = "force"

    def garbage_marker(ws: Path) -> None:
        shutil.copytree(ws / "run-vae", ws / "run-garbage-mark")
        (ws / "run-garbage-mark" / ".diffvae").write_bytes(b"\xff\xfe not json")

    def export_marked_run(ws: Path) -> None:
        shutil.copytree(ws / "run-vae", ws / "run-export-mark")
        (ws / "run-export-mark" / ".diffvae").write_text('{"kind": "export", "made_by": "diffvae"}')

    def link_to_run(ws: Path) -> None:
        shutil.copytree(ws / "run-vae", ws / "run-link-target")
        os.symlink(ws / "run-link-target", ws / "link-to-run-force")

    return [
        W(a, "train-force-garbage-marker-run", [*TV, "--force", "--out", "{ws}/run-garbage-mark"],
          has("run-garbage-mark/.diffvae"), ("run-garbage-mark",), setup=garbage_marker),
        R(a, "train-force-export-marked", [*TV, "--force", "--out", "{ws}/run-export-mark"], "export", setup=export_marked_run),
        R(a, "compare-force-export", ["compare", "--data", "digits", "--budget", "0.2", "--force", "--out", "{ws}/exp-marked"], "export",
          setup=export_folder),
        R(a, "pack-force-onto-run", ["data", "pack", "digits", "--force", "--out", "{ws}/run-vae"]),
        R(a, "export-force-onto-run", ["export", "{ws}/run-ddpm", "--to", "diffusers", "--force", "{ws}/run-vae"], "run"),
        R(a, "train-force-workspace", [*TV, "--force", "--out", "{ws}"]),
        R(a, "train-force-a-file", [*TV, "--force", "--out", "{ws}/afile"]),
        R(a, "train-force-a-pack", [*TV, "--force", "--out", "{ws}/pack-digits"]),
        R(a, "train-no-force-onto-run", [*TV, "--out", "{ws}/run-vae"], "already exists"),
        R(a, "compare-resume-onto-run", ["compare", "--resume", "--out", "{ws}/run-vae"]),
        R(a, "train-resume-onto-report", ["train", "vae", "--resume", "--out", "{ws}/report"]),
        R(a, "train-resume-onto-holder", ["train", "vae", "--resume", "--out", "{ws}/holder"]),
        R(a, "sample-force-onto-folder", ["sample", "{ws}/run-vae", "--n", "2", "--force", "--out", "{ws}/holder.png"],
          setup=lambda ws: (ws / "holder.png").mkdir(exist_ok=True)),
        R(a, "eval-force-onto-run-config", ["eval", "{ws}/run-vae", "--quick", "--force", "--out", "{ws}/run-vae/config.json"], "inside"),
        W(a, "train-force-into-empty-folder", [*TV, "--force", "--out", "{ws}/emptydir2"], has("emptydir2/.diffvae"), ("emptydir2",),
          setup=lambda ws: (ws / "emptydir2").mkdir()),  # documented: an empty folder takes a new run
        W(a, "train-force-symlink-to-run", [*TV, "--force", "--out", "{ws}/link-to-run-force"],
          lambda ws, r: None if (ws / "link-to-run-force").is_symlink() or (ws / "link-to-run-force" / ".diffvae").exists()
          else "the link is gone", ("link-to-run-force", "run-link-target"), setup=link_to_run),
        W(a, "sample-force-own-output", ["sample", "{ws}/run-vae", "--n", "2", "--force", "--out", "{ws}/old ü.png"],
          has("old ü.png"), ("old ü.png",), setup=lambda ws: (ws / "old ü.png").write_bytes(b"an earlier output")),
        R(a, "forecast-on-run-marker", ["forecast", "{ws}/run-vae", "--at", "20"], "results.json"),
    ]


def export_folder(ws: Path) -> None:
    """A diffvae export folder (its mark and files), made here so the case needs no other area's output."""
    (ws / "exp-marked").mkdir(exist_ok=True)
    (ws / "exp-marked" / "model_index.json").write_text("{}")
    (ws / "exp-marked" / ".diffvae").write_text('{"kind": "export", "made_by": "diffvae"}')


def device_cases() -> list[Case]:
    a = "devices"
    return [
        R(a, "interpolate-cuda", ["interpolate", "{ws}/run-vae", "--device", "cuda", "--out", "{ws}/never.png"], "CUDA"),
        R(a, "invert-cuda", ["invert", "{ws}/run-vae", "--device", "cuda"], "CUDA"),
        R(a, "eval-cuda0", ["eval", "{ws}/run-vae", "--device", "cuda:0", "--quick"], "CUDA"),
        R(a, "sample-cuda-minus-one", ["sample", "{ws}/run-vae", "--device", "cuda:-1", "--out", "{ws}/never.png"]),
        R(a, "train-device-uppercase", [*TV[:-3], "--quiet", "--device", "CPU", "--out", NEW], "--device"),
        R(a, "train-device-empty", [*TV[:-3], "--quiet", "--device", "", "--out", NEW], "--device"),
        R(a, "train-device-mps", [*TV[:-3], "--quiet", "--device", "mps", "--out", NEW], "MPS"),
        R(a, "cpu-kind-bogus", ["train", "vae", "--data", "digits", "--steps", "2", "--width", "16", "--latent-dim", "4", "--quiet",
                                "--out", NEW], "DIFFVAE_CPU_KIND", env={"DIFFVAE_CPU_KIND": "sse2"}),  # precision auto reads the kind
        R(a, "cpu-kind-uppercase", ["sample", "{ws}/run-vae", "--n", "2", "--out", "{ws}/never.png"], "DIFFVAE_CPU_KIND",
          env={"DIFFVAE_CPU_KIND": "AVX2"}),
        W(a, "cpu-kind-avx2-train", ["train", "vae", "--data", "digits", "--steps", "2", "--width", "16", "--latent-dim", "4",
                                     "--quiet", "--out", "{ws}/run-avx2"],
          run_config("run-avx2", lambda c: c["train"]["precision"] in ("fp32", "auto"), "train.precision fp32"), ("run-avx2",),
          env={"DIFFVAE_CPU_KIND": "avx2"}),
        W(a, "cpu-kind-amx-sample", ["sample", "{ws}/run-vae", "--n", "2", "--out", "{ws}/amx.png"], has("amx.png"), ("amx.png",),
          env={"DIFFVAE_CPU_KIND": "amx"}),
        W(a, "cpu-kind-blank", ["sample", "{ws}/run-vae", "--n", "2", "--out", "{ws}/blank.png"], has("blank.png"), ("blank.png",),
          env={"DIFFVAE_CPU_KIND": "  "}),
        R(a, "train-fp16-on-cpu", [*TV[:-5], "--precision", "fp16", "--device", "cpu", "--quiet", "--out", NEW], "fp16"),
        R(a, "sample-precision-fp16", ["sample", "{ws}/run-vae", "--n", "2", "--precision", "fp16", "--out", "{ws}/never.png"], "fp16"),
        R(a, "compare-device-empty", ["compare", "--data", "digits", "--budget", "0.2", "--device", "", "--out", NEW], "--device"),
        R(a, "world-size-2-alone", [*TV, "--out", NEW], "WORLD_SIZE", env={"WORLD_SIZE": "2"}),
        R(a, "world-size-text", [*TV, "--out", NEW], "WORLD_SIZE", env={"WORLD_SIZE": "two"}),
        R(a, "score-pair-cuda", ["score", S, S, *D, "--device", "cuda"], "CUDA"),
    ]


def forecast_cases() -> list[Case]:
    a = "forecast"
    f = ["forecast", "{ws}/report", "--at"]
    return [
        R(a, "at-zero", [*f, "0"], "positive"),
        R(a, "at-negative", [*f, "-5"]),
        R(a, "at-nan", [*f, "nan"], "positive"),
        R(a, "at-inf", [*f, "inf"], "positive"),
        R(a, "at-1e400", [*f, "1e400"], "positive"),
        E(a, "at-1e300", [*f, "1e300", "--json"], json_stdout()),
        R(a, "at-text", [*f, "abc"], "MINUTES"),
        R(a, "at-empty", [*f, ""]),
        R(a, "at-gflop-within-range", [*f, "5gflop"], "within"),
        R(a, "at-zero-gflop", [*f, "0gflop"], "positive"),
        R(a, "at-nan-gflop", [*f, "nangflop"], "positive"),
        R(a, "at-the-budget", [*f, "2"], "within"),
        W(a, "at-gflop-beyond", [*f, "1e6gflop"], lambda ws, r: None if r.stdout.strip() else "printed nothing"),
        W(a, "at-20-json", [*f, "20", "--json"], json_stdout()),
        W(a, "at-uppercase-unit", [*f, "1E6GFLOP"], lambda ws, r: None if r.stdout.strip() else "printed nothing"),
        R(a, "report-without-curves", ["forecast", "{ws}/report-nocurves", "--at", "20"], "no learning curves"),
        R(a, "report-empty-curves", ["forecast", "{ws}/report-empty-curves", "--at", "20"], "no learning curves"),
        R(a, "report-text-gflop", ["forecast", "{ws}/report-text-gflop", "--at", "20"], "gflop"),
        R(a, "report-negative-budget", ["forecast", "{ws}/report-negative-budget", "--at", "20"], "budget_minutes"),
        R(a, "report-not-utf8", ["forecast", "{ws}/report-latin1", "--at", "20"], "UTF-8"),
        R(a, "report-a-file", ["forecast", "{ws}/afile", "--at", "20"]),
        E(a, "report-one-point", ["forecast", "{ws}/report-one-point", "--at", "20"],
          lambda ws, r: None if r.stdout.strip() else "printed nothing"),
        E(a, "report-nan-fid", ["forecast", "{ws}/report-nan-fid", "--at", "20", "--json"], json_stdout()),
        R(a, "seed-negative", [*f, "20", "--seed", "-1"], "--seed"),
        R(a, "compare-forecast-zero", ["compare", "--data", "digits", "--budget", "0.2", "--forecast", "0", "--out", NEW], "forecast"),
        R(a, "compare-forecast-nan", ["compare", "--data", "digits", "--budget", "0.2", "--forecast", "nan", "--out", NEW], "forecast"),
        R(a, "compare-forecast-negative", ["compare", "--data", "digits", "--budget", "0.2", "--forecast=-1", "--out", NEW], "forecast"),
        R(a, "compare-forecast-1e400", ["compare", "--data", "digits", "--budget", "0.2", "--forecast", "1e400", "--out", NEW], "forecast"),
        R(a, "compare-forecast-text", ["compare", "--data", "digits", "--budget", "0.2", "--forecast", "soon", "--out", NEW], "forecast"),
        R(a, "compare-forecast-within-budget", ["compare", "--data", "digits", "--budget", "0.3", "--forecast", "0.1", "--out", NEW],
          "within"),
    ]


def norm_cases() -> list[Case]:
    a = "norm-groups"
    return [
        R(a, "negative", [*TD, "--norm-groups", "-1", "--out", NEW], "groups"),
        R(a, "not-a-divisor", [*TD, "--norm-groups", "3", "--out", NEW], "groups"),
        R(a, "one-channel-per-group", [*TD, "--norm-groups", "8", "--out", NEW], "groups"),
        R(a, "float", [*TD, "--norm-groups", "2.5", "--out", NEW], "--norm-groups"),
        R(a, "huge", [*TD, "--norm-groups", str(10**9), "--out", NEW], "groups"),
        R(a, "empty", [*TD, "--norm-groups", "", "--out", NEW], "--norm-groups"),
        R(a, "on-vae", [*TV, "--norm-groups", "2", "--out", NEW], "--norm-groups"),
        R(a, "ldm-not-a-divisor", ["train", "ldm", "--data", "digits", "--steps", "2", "--channels", "8", "--channel-mult", "1",
                                   "--norm-groups", "3", "--quiet", "--device", "cpu", "--out", NEW], "groups"),
        R(a, "flow-one-channel-per-group", ["train", "flow", "--data", "digits", "--steps", "2", "--channels", "8",
                                            "--channel-mult", "1", "--norm-groups", "8", "--quiet", "--device", "cpu", "--out", NEW],
          "groups"),
        R(a, "conditional-one-channel-per-group", [*TD, "--conditional", "--norm-groups", "8", "--out", NEW], "groups"),
        R(a, "config-3", ["train", "ddpm", "--config", "{ws}/cfg/norm-groups-3.json", *TINY_DDPM, "--out", NEW], "groups"),
        R(a, "config-true", ["train", "ddpm", "--config", "{ws}/cfg/norm-groups-true.json", *TINY_DDPM, "--out", NEW], "norm_groups"),
        R(a, "resume-other-groups", ["train", "ddpm", "--resume", "--norm-groups", "2", "--out", "{ws}/run-ddpm"]),
        W(a, "config-4", ["train", "ddpm", "--config", "{ws}/cfg/norm-groups-4.toml", *TINY_DDPM, "--out", "{ws}/run-ng4"],
          run_config("run-ng4", lambda c: c["model"]["norm_groups"] == 4, "model.norm_groups == 4"), ("run-ng4",)),
        W(a, "automatic", [*TD, "--norm-groups", "0", "--out", "{ws}/run-ng0"],
          run_config("run-ng0", lambda c: c["model"]["norm_groups"] == 0, "model.norm_groups == 0"), ("run-ng0",)),
        W(a, "two-levels-4", [*TD[:-11], "--channels", "8", "--channel-mult", "1,2", "--timesteps", "50", "--batch", "16",
                              "--precision", "fp32", "--device", "cpu", "--quiet", "--norm-groups", "4", "--out", "{ws}/run-ng4b"],
          has("run-ng4b/checkpoint.safetensors"), ("run-ng4b",)),
    ]


def all_cases() -> list[Case]:
    cases = [*score_cases(), *inception_cases(), *export_cases(), *pack_cases(), *config_cases(), *conditioning_cases(),
             *monitor_cases(), *cache_cases(), *disk_cases(), *path_cases(), *signal_cases(), *force_cases(),
             *device_cases(), *forecast_cases(), *norm_cases()]
    names = [c.name for c in cases]
    assert len(names) == len({(c.area, c.name) for c in cases}), "duplicate case names"
    return cases


# ----------------------------------------------------------------------------- main

def table(rows: list[dict]) -> str:
    lines = [f"{'area':<14} {'cases':>5} {'clean':>5}  not clean"]
    for area in dict.fromkeys(r["area"] for r in rows):
        mine = [r for r in rows if r["area"] == area]
        bad = [r for r in mine if not r["clean"]]
        lines.append(f"{area:<14} {len(mine):>5} {len(mine) - len(bad):>5}")
        lines += [f"{'':<27}- {r['name']}: {r['reason']}" for r in bad]
    total, clean = len(rows), sum(r["clean"] for r in rows)
    lines.append(f"{'total':<14} {total:>5} {clean:>5}  ({100 * clean / max(total, 1):.1f}% clean)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="run the cases whose area/name matches this regex")
    parser.add_argument("--label", default="after", help="the key of this pass in the JSON (e.g. before, after)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch workspace")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--jobs", type=int, default=1, help="workers, each with its own workspace and whole areas")
    args = parser.parse_args()
    cases = [c for c in all_cases() if args.only is None or re.search(args.only, f"{c.area}/{c.name}")]
    if args.list:
        print("\n".join(f"{c.area}/{c.name} ({c.expect})" for c in cases))
        print(f"{len(cases)} cases")
        return 0
    areas = list(dict.fromkeys(c.area for c in cases))
    groups = [[c for c in cases if c.area in areas[k::args.jobs]] for k in range(min(args.jobs, len(areas)))]
    with concurrent.futures.ThreadPoolExecutor(len(groups)) as pool:
        done = list(pool.map(lambda group: run_group(group, args.keep), groups))
    by_name = {(r["area"], r["name"]): r for rows in done for r in rows}
    rows = [by_name[(c.area, c.name)] for c in cases]
    print(table(rows))
    RESULTS.parent.mkdir(exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.only is None:
        previous[args.label] = {"cases": len(rows), "clean": sum(r["clean"] for r in rows), "rows": rows}
    else:
        previous.setdefault("partial", {})[args.label] = rows
    RESULTS.write_text(json.dumps(previous, indent=1, ensure_ascii=False) + "\n")
    return 0


def run_group(cases: list[Case], keep: bool) -> list[dict]:
    """The cases (whole areas, in table order: some use what an earlier one wrote) in a workspace of their own."""
    root = Path(tempfile.mkdtemp(prefix="hostile27-"))
    ws = root / "ws"
    print(f"workspace {ws}", file=sys.stderr, flush=True)
    prepare(ws)
    rows = []
    for case in cases:
        try:
            row = score_case(case, ws, root)
        except Exception as e:  # noqa: BLE001 - a harness failure is recorded as the case's, never the end of the pass
            row = {"area": case.area, "name": case.name, "expect": case.expect, "clean": False, "rc": None,
                   "reason": f"harness error: {type(e).__name__}: {e}", "stderr_tail": "", "seconds": 0}
        rows.append(row)
        print(f"{case.area}/{case.name}: {'clean' if row['clean'] else 'NOT CLEAN: ' + str(row['reason'])}"
              f" ({row['seconds']} s)", file=sys.stderr, flush=True)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
