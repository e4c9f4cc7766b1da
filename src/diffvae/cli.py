"""The command line: argument parsing only. Every error ends as one line and a non-zero exit.

    diffvae train {vae,ddpm,ldm} --data SPEC --out RUN (--steps N | --budget MIN) [...]
    diffvae sample RUN --n N --out grid.png|samples.npz [--sampler --steps --eta --seed]
    diffvae eval RUN [--json] [--n N --sampler --steps]
    diffvae interpolate RUN --out strip.png [--pairs --frames --path]
    diffvae invert RUN [--n --steps]
    diffvae data info SPEC
    diffvae compare --data SPEC --budget MIN --out DIR [--families vae,ddpm,ldm] [--split vae=1,ddpm=1,ldm=1]
    diffvae score SAMPLES --data SPEC [--json]
    diffvae export RUN --to diffusers OUT [--pipeline ddim|ddpm]
    diffvae plot RUN [--out curves.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import typing
from pathlib import Path

from diffvae.errors import DiffvaeError
from diffvae.ranges import MAX_IMAGES, MAX_SEED, MAX_SIZE, TRAIN_RANGES, Range, finite_float, train_flag

SEED = Range(int, 0, MAX_SEED)
IMAGES = Range(int, 1, MAX_IMAGES)
SIZE = Range(int, 1, MAX_SIZE)
SAMPLING_STEPS = Range(int, 1, 100_000)
ETA = Range(float, 0, 1)
OUTPUT_SUFFIXES = (".png", ".npz")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not usage + message; no abbreviated flags (``--confi FILE`` was
    taken for ``--config`` after the file had been looked for, so the file was never read)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        raise DiffvaeError(f"{self.prog.split(' ', 1)[-1]}: {message}" if " " in self.prog else message)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# diffusers' flag names accepted for a config field of the same meaning (values: see the configs' validate)
FLAG_ALIASES = {"timesteps": ("--num-train-timesteps",)}


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` flag per field of a config dataclass, typed from its default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        hint = str(hints.get(f.name, ""))
        if isinstance(default, bool):
            parser.add_argument(_flag(f.name), dest=f"model__{f.name}", action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default {default})")
        elif isinstance(default, tuple):
            parser.add_argument(_flag(f.name), dest=f"model__{f.name}", type=_int_tuple, default=None, metavar="A,B,..",
                                help=f"comma-separated (default {','.join(map(str, default))})")
        else:
            kind = finite_float if isinstance(default, float) or "float" in hint else int if isinstance(default, int) else str
            parser.add_argument(_flag(f.name), *FLAG_ALIASES.get(f.name, ()), dest=f"model__{f.name}", type=kind, default=None, metavar=f.name.upper(),
                                help=f"(default {default})")


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_data_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required, metavar="SPEC",
                   help="mnist | digits | shapes | colours | photos | folder:PATH | npz:PATH | idx:PATH")
    p.add_argument("--size", type=SIZE.parser(), default=None, help=f"resize images to SIZE×SIZE, SIZE in {SIZE.text()}")
    p.add_argument("--key", default=None, help="array name inside an .npz")
    p.add_argument("--binarize", action="store_true", help="threshold the images to {0, 255}")
    p.add_argument("--limit", type=Range(int, 1, 10**9).parser(), default=None, help="use only the first N training images")


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per user-facing TrainConfig field (``diffvae.train.TRAIN_CLI_FIELDS``), typed and
    range-checked from ``diffvae.ranges``; ``--steps`` and ``--budget`` exclude each other."""
    from diffvae.train import TRAIN_CLI_FIELDS, TrainConfig

    length = p.add_mutually_exclusive_group()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in TRAIN_CLI_FIELDS:
        f = fields[name]
        allowed = TRAIN_RANGES.get(name)
        kind = allowed.parser() if allowed is not None else str
        target = length if name in ("steps", "budget_minutes") else p
        flag = train_flag(name)
        if isinstance(f.default, bool):  # --x / --no-x
            target.add_argument(flag, dest=f"train__{name}", action=argparse.BooleanOptionalAction, default=None,
                                help=f.metadata.get("help"))
            continue
        if allowed is None and isinstance(f.default, int):
            kind = int  # its range is checked by TrainConfig.validate
        target.add_argument(flag, dest=f"train__{name}", type=kind, default=None,
                            metavar=f.metadata.get("metavar") or flag[2:].upper().replace("-", "_"), help=f.metadata.get("help"))
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly (the original flags may be repeated; none may differ)")
    p.add_argument("--force", action="store_true", help="replace an existing run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """A ``diffvae`` subcommand: ``add_arguments(parser)`` declares its flags, ``run(args) -> int`` runs it.
    ``module`` names a module holding both (imported only when the parser is built)."""

    name: str
    help: str
    add_arguments: typing.Callable[[argparse.ArgumentParser], None] | None = None
    run: typing.Callable[[argparse.Namespace], int | None] | None = None
    module: str | None = None

    def resolve(self) -> tuple[typing.Callable, typing.Callable]:
        if self.module is None:
            return self.add_arguments, self.run
        import importlib

        mod = importlib.import_module(self.module)
        return mod.add_arguments, mod.run


def build_parser() -> argparse.ArgumentParser:
    from diffvae import __version__

    parser = _Parser(prog="diffvae", description="Train, sample, evaluate and compare VAEs, pixel diffusion and latent diffusion.")
    parser.add_argument("--version", action="version", version=f"diffvae {__version__}")
    _add_subcommands(parser, SUBCOMMANDS, "command")
    return parser


def _add_subcommands(parser: argparse.ArgumentParser, commands: list[Subcommand], dest: str) -> None:
    sub = parser.add_subparsers(dest=dest, required=True, parser_class=_Parser)
    for command in commands:
        add_arguments, run = command.resolve()
        p = sub.add_parser(command.name, help=command.help)
        add_arguments(p)
        p.set_defaults(**{f"_run_{dest}": run})


def add_train_parser(train: argparse.ArgumentParser) -> None:
    from diffvae.families import FAMILIES

    fam_sub = train.add_subparsers(dest="family", required=True, parser_class=_Parser)
    for name, fam in FAMILIES.items():
        p = fam_sub.add_parser(name, help=fam.summary)
        _add_data_arguments(p, required=False)  # required unless --resume (checked in cmd_train)
        p.add_argument("--out", required=True, metavar="RUN")
        _add_config_argument(p)
        _add_train_arguments(p)
        try:
            config_class, _ = fam.load()
        except ImportError:
            continue
        group = p.add_argument_group(f"{name} model")
        add_dataclass_arguments(group, config_class, skip=("binarize",))  # --binarize is the data flag


def add_sample_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--n", type=IMAGES.parser(), default=64, help=f"in {IMAGES.text()}")
    p.add_argument("--out", required=True, help="grid.png, or samples.npz for the raw uint8 array")
    _add_sampling_arguments(p)
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--class", dest="class_", type=int, default=None, metavar="K", help="conditional runs: samples of class K")
    p.add_argument("--classes", default=None, metavar="A,B,...", help="conditional runs: the samples cycle through these classes")
    p.add_argument("--guidance", type=float, default=None, metavar="W", help="classifier-free guidance scale (default 1)")
    p.add_argument("--precision", default="auto", help="of sampling: auto (bf16 where the CPU/GPU runs it natively, else fp32) | bf16 | fp32")


def add_eval_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--n", type=IMAGES.parser(), default=None, help="samples for FID/KID/precision/recall")
    p.add_argument("--bound-n", type=IMAGES.parser(), default=None, help="held-out images for the bound")
    p.add_argument("--iwae", type=Range(int, 0, 10_000).parser(), default=None,
                   help="importance samples for the IWAE bound (VAE)")
    p.add_argument("--quick", action="store_true", help="small sample sizes (for smoke tests)")
    p.add_argument("--out", default=None, help="also write the JSON here (a .json file)")
    _add_sampling_arguments(p)
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="conditional runs: guidance scale of the class-balanced samples (default 1)")
    p.add_argument("--precision", default="auto", help="of sampling: auto (bf16 where the CPU/GPU runs it natively, else fp32) | bf16 | fp32")


def add_interpolate_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--out", required=True, help="strip.png")
    p.add_argument("--pairs", type=Range(int, 1, 10_000).parser(), default=4)
    p.add_argument("--frames", type=Range(int, 2, 1_000).parser(), default=8)
    p.add_argument("--path", default="slerp", help="slerp | linear")
    p.add_argument("--classes", default=None, metavar="A,B",
                   help="from class A to class B: a conditional run moves the condition linearly (noise fixed per "
                        "strip; --path does not apply), an unconditional one walks between held-out images of A and B")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="with --classes on a conditional run: classifier-free guidance scale (default 1)")
    _add_sampling_arguments(p)
    p.add_argument("--force", action="store_true")


def add_invert_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--n", type=IMAGES.parser(), default=64)
    p.add_argument("--out", default=None, help="PNG: originals above reconstructions")
    _add_sampling_arguments(p)
    p.add_argument("--force", action="store_true")


def add_data_parser(p: argparse.ArgumentParser) -> None:
    _add_subcommands(p, DATA_SUBCOMMANDS, "data_command")


def add_data_info_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec")
    p.add_argument("--size", type=SIZE.parser(), default=None)
    p.add_argument("--key", default=None)
    p.add_argument("--binarize", action="store_true")


def add_compare_parser(p: argparse.ArgumentParser) -> None:
    _add_data_arguments(p)
    p.add_argument("--budget", type=TRAIN_RANGES["budget_minutes"].parser(), default=None, metavar="MINUTES",
                   help="(default 15; --resume: the stored one)")
    p.add_argument("--out", required=True, metavar="DIR")
    _add_config_argument(p)
    p.add_argument("--families", default=None, help="comma-separated (default: every registered family; --resume: the stored ones)")
    p.add_argument("--split", default=None, metavar="FAM=W,...",
                   help="relative training time per family, e.g. vae=1,ddpm=2,ldm=2 (default: each family's share)")
    p.add_argument("--seed", type=SEED.parser(), default=None, help="(default 0; --resume: the stored one)")
    p.add_argument("--conditional", action="store_true", default=None,
                   help="train every family on the labels and measure controllability (accuracy, guidance sweep)")
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", default=None, help="the sampler of an iterative family (e.g. ddpm | ddim | dpm++2m)")
    p.add_argument("--steps", type=SAMPLING_STEPS.parser(), default=None, help="sampling steps (iterative families)")
    p.add_argument("--eta", type=ETA.parser(), default=None, help="DDIM η")
    p.add_argument("--seed", type=SEED.parser(), default=0)
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda[:N] | mps (default auto)")


def _device(args) -> str:
    """``--device`` resolved (``auto`` → the best device here), refused with one line if unavailable."""
    from diffvae.train import resolve_device

    return str(resolve_device(args.device))


# ----------------------------------------------------------------------------- --config FILE

CONFIG_COMMANDS = {"train": 2, "compare": 1}  # the commands that take --config, and their words before the flags
CONFIG_FORBIDDEN = ("config", "help", "version")


def _add_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.json|FILE.toml",
                   help="flags from a file: one key per flag (flag or field name, e.g. lr, batch, data, channel_mult); "
                        "flags on the command line override it; unknown keys are refused")


def with_config_file(argv: list[str]) -> list[str]:
    """``argv`` with ``--config FILE`` replaced by the file's keys as flags, placed before the command
    line's own flags (argparse keeps the last value, so the command line wins)."""
    if not argv or argv[0] not in CONFIG_COMMANDS:
        return argv
    rest, path = _pop_config(argv)
    words = CONFIG_COMMANDS[argv[0]]
    if path is None or len(rest) < words:
        return rest
    parser = _subparser(build_parser(), rest[:words])
    if parser is None:
        return rest
    return rest[:words] + config_tokens(read_config_file(path), parser, rest[words:], path) + rest[words:]


def _pop_config(argv: list[str]) -> tuple[list[str], str | None]:
    _check_one_config(argv)
    rest = list(argv)
    for i, token in enumerate(rest):
        if token == "--config":
            if i + 1 >= len(rest):
                raise DiffvaeError("--config: expected one argument (a .json or .toml file)")
            return rest[:i] + rest[i + 2:], rest[i + 1]
        if token.startswith("--config="):
            return rest[:i] + rest[i + 1:], token[len("--config="):]
    return rest, None


def _check_one_config(argv: list[str]) -> None:
    """A second ``--config`` was silently ignored: refused."""
    count = sum(1 for token in argv if token == "--config" or token.startswith("--config="))
    if count > 1:
        raise DiffvaeError(f"--config given {count} times; give one file (merge the others into it)")


# keys a --config file may not set: they replace or continue a folder, so they must be typed on the command line
CONFIG_COMMAND_LINE_ONLY = ("force", "resume")


def _check_config_safety(values: dict[str, typing.Any], given: list[str], path: str) -> None:
    """``force``/``resume`` in a file would replace or continue a folder without the flag ever being typed; an
    ``out`` from a file under a typed ``--force`` would let the file choose the folder that is replaced."""
    for key in values:
        if str(key).replace("-", "_") in CONFIG_COMMAND_LINE_ONLY:
            raise DiffvaeError(f"--config {path}: {key!r} cannot come from a file; type --{str(key).replace('_', '-')} "
                               "on the command line")
    if "out" in values and "--force" in given and not any(t == "--out" or t.startswith("--out=") for t in given):
        raise DiffvaeError(f"--config {path}: with --force, give --out on the command line too "
                           "(the folder to replace is not taken from a file)")


def read_config_file(path: str) -> dict[str, typing.Any]:
    """The flat key → value table of a .json or .toml file (one error line if unreadable)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".toml"):
        raise DiffvaeError(f"--config must be a .json or .toml file, got {path}")
    try:
        text = Path(path).read_text(encoding="utf-8")
        if suffix == ".json":
            values = json.loads(text)
        else:
            import tomllib

            values = tomllib.loads(text)
    except OSError as e:
        raise DiffvaeError(f"cannot read --config {path}: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        raise DiffvaeError(f"--config {path} is not valid {suffix[1:].upper()}: {(str(e).splitlines() or [''])[0][:200]}") from None
    except RecursionError:  # "[[[[..." nested beyond the parser's stack
        raise DiffvaeError(f"--config {path} is nested too deeply (a config is one table of flag = value)") from None
    if not isinstance(values, dict):
        raise DiffvaeError(f"--config {path} must hold one table of flag = value, got {type(values).__name__}")
    return values


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser | None:
    for word in words:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        parser = action.choices.get(word) if action is not None else None
        if parser is None:
            return None
    return parser


def config_tokens(values: dict[str, typing.Any], parser: argparse.ArgumentParser, given: list[str], path: str) -> list[str]:
    """The flags of a --config table for ``parser``; a key whose flag (or a flag exclusive with it) the
    command line ``given`` already has is dropped."""
    options = {o: a for a in parser._actions for o in a.option_strings}
    on_command_line = {options[t.split("=", 1)[0]] for t in given if t.split("=", 1)[0] in options}
    for group in parser._mutually_exclusive_groups:
        if on_command_line & set(group._group_actions):
            on_command_line |= set(group._group_actions)
    _check_config_safety(values, given, path)
    tokens: list[str] = []
    for key, value in values.items():
        flag = "--" + str(key).replace("_", "-")
        action = options.get(flag)
        if action is None:
            alias = next((a for a in options.values() if a.dest.split("__")[-1] == str(key).replace("-", "_")), None)
            action, flag = alias, (alias.option_strings[0] if alias is not None else flag)
        if action is None or str(key) in CONFIG_FORBIDDEN:
            raise DiffvaeError(f"--config {path}: unknown key {key!r} (keys are the command's flags, e.g. lr, batch, data)")
        if action in on_command_line or value is None:
            continue
        tokens += _tokens_of(action, flag, value, path, key)
    return tokens


def _tokens_of(action: argparse.Action, flag: str, value: typing.Any, path: str, key: str) -> list[str]:
    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
        if not isinstance(value, bool):
            raise DiffvaeError(f"--config {path}: {key!r} must be true or false, got {value!r}")
        if isinstance(action, argparse.BooleanOptionalAction):
            return [flag if value else "--no-" + flag[2:]]
        return [flag] if value else []
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    elif isinstance(value, (dict, bool)):
        raise DiffvaeError(f"--config {path}: {key!r} must be a number, a string or a list, got {value!r}")
    return [f"{flag}={value}"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it ends like Ctrl-C: progress bar closed, the
    last checkpoint kept, one line."""


def _raise_terminated(signum, frame) -> typing.NoReturn:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(with_config_file(argv))
        code = args._run_command(args) or 0
        sys.stdout.flush()  # inside the try: a reader that has gone (`| head`) is met here, not at exit
        return code
    except DiffvaeError as e:
        _say(f"diffvae: error: {one_line(str(e))}")
        return 2
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        _say(interrupted_line(argv, terminated))
        return 143 if terminated else 130
    except BrokenPipeError:  # `diffvae ... | head`: the reader has gone; say nothing more
        _silence_stdout()
        return 0
    except SystemExit as e:  # --help / --version
        return int(e.code or 0)
    except Exception as e:  # never a traceback for the user; DIFFVAE_DEBUG=1 shows it
        if os.environ.get("DIFFVAE_DEBUG"):
            raise
        first = one_line((str(e).strip().splitlines() or [""])[0][:300])
        _say(f"diffvae: error: internal error ({type(e).__name__}: {first}); rerun with DIFFVAE_DEBUG=1 for details")
        return 1


RESUMABLE_COMMANDS = ("train", "compare")  # the commands that have --resume


def interrupted_line(argv: list[str], terminated: bool) -> str:
    """What Ctrl-C / SIGTERM leaves: train and compare keep their files and continue with --resume; every other
    command writes its output whole or not at all (pack, export, score, sample, ...), so there is nothing to resume."""
    word = "terminated" if terminated else "interrupted"
    if argv and argv[0] in RESUMABLE_COMMANDS:
        return f"diffvae: {word}; the files written so far are kept (continue with the same command and --resume)"
    return f"diffvae: {word}; nothing was written (outputs are written whole or not at all)"


def one_line(message: str) -> str:
    """``message`` on one line: control characters (a newline or escape in a path, ...) escaped as repr does."""
    if not any(ord(c) < 32 or ord(c) == 127 for c in message):
        return message
    return "".join(repr(c)[1:-1] if ord(c) < 32 or ord(c) == 127 else c for c in message)


def _say(line: str) -> None:
    """One line on stderr, on a line of its own even if a progress bar was drawn without a newline."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        _silence_stdout()
    print(line, file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's flush at exit does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # an in-memory stdout (tests): nothing to redirect


# ----------------------------------------------------------------------------- commands

NEW_RUN_DEFAULTS = {"precision": "auto", "seed": 0, "device": "auto"}


def cmd_train(args) -> int:
    from diffvae.api import DataConfig, train_run
    from diffvae.families import config_from_dict, get_family
    from diffvae.train import TrainConfig

    fam = get_family(args.family)
    config_class, _ = fam.load()
    given = _given_train_flags(args, config_class)
    if args.resume and args.force:
        raise DiffvaeError("--resume continues the run and --force replaces it: pass one of them")
    if args.resume:
        train_run(args.family, None, out=args.out, resume=True, progress=not args.quiet, requested=given)
    else:
        if args.data is None:
            raise DiffvaeError(f"train {args.family}: the following arguments are required: --data")
        model_values, train_values, note = _with_recipe(fam, given)
        model_config = config_from_dict(config_class, model_values)
        train_config = TrainConfig(**train_values)
        train_config.validate()
        data = DataConfig(**given["data"])
        train_run(args.family, data, model_config, train_config, out=args.out, force=args.force, progress=not args.quiet,
                  requested={**given, "model": model_values}, note=note)  # the shape's preset fills the model fields not given
    if os.environ.get("RANK", "0") == "0":  # under torchrun, say it once
        print(f"diffvae: trained {args.family} → {args.out}{_auto_device_note(args)}", file=sys.stderr)
    return 0


def _auto_device_note(args) -> str:
    """`` on cpu (--device auto)`` where auto chose: the user sees where the work ran."""
    from diffvae.train import resolve_device

    if getattr(args, "resume", False):
        return ""  # a resumed run trains on the device its config.json names
    device = getattr(args, "train__device", None) or getattr(args, "device", None)
    return f" on {resolve_device('auto')} (--device auto)" if device in (None, "auto") else ""


def _with_recipe(fam, given: dict[str, dict]) -> tuple[dict, dict, str | None]:
    """Model and train values of a new run: with ``--budget``, the family's compute-aware recipe for
    it (:mod:`diffvae.recipes`) under the flags the user gave, which always win; and the line that
    describes the recipe (said by train_run once the run is accepted, never before a refusal)."""
    from diffvae.recipes import apply, describe, for_budget

    train = {**fam.train_defaults, **NEW_RUN_DEFAULTS, **given["train"]}
    if train.get("budget_minutes") is None:
        return given["model"], train, None
    recipe, info = for_budget(fam.recipes, train["budget_minutes"], train.get("device", "auto"), train.get("precision", "auto"))
    note = f"diffvae: {describe(info)}" if recipe is not None else None
    model, train = apply(recipe, given["model"], train, set(given["model"]) | set(given["train"]))
    return model, {**train, "recipe": recipe.name if recipe is not None else None}, note


def _given_train_flags(args, config_class) -> dict[str, dict]:
    """The values the user gave explicitly, as {"data", "model", "train"} config fields."""
    model = {k[len("model__"):]: v for k, v in vars(args).items() if k.startswith("model__") and v is not None}
    if args.binarize and "binarize" in {f.name for f in dataclasses.fields(config_class)}:
        model.setdefault("binarize", True)
    train = {k[len("train__"):]: v for k, v in vars(args).items() if k.startswith("train__") and v is not None}
    data = {"spec": args.data, "size": args.size, "key": args.key, "limit": args.limit}
    data = {k: v for k, v in data.items() if v is not None}
    if args.binarize:
        data["binarize"] = True
    return {"data": data, "model": model, "train": train}


def _sampling_kwargs(args, model) -> dict:
    """--sampler/--steps/--eta as sampling keywords; refused for a family with no samplers."""
    from diffvae.contract import spec_of

    kwargs = {k: getattr(args, k) for k in ("sampler", "steps", "eta") if getattr(args, k, None) is not None}
    spec = spec_of(model)
    if kwargs and not spec.samplers:
        raise DiffvaeError(f"{'/'.join('--' + k for k in kwargs)} apply to iterative samplers; "
                           f"a {spec.short} run decodes in one step")
    if kwargs:
        model.nfe(**kwargs)  # refuses a bad sampler/steps/eta now, before any work or output
    return kwargs


def _check_output(path: str, force: bool, suffixes: tuple[str, ...] = OUTPUT_SUFFIXES) -> Path:
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
    if not os.access(out.parent, os.W_OK):
        raise DiffvaeError(f"cannot write in {out.parent}")
    run = _enclosing_run(out.parent)
    if run is not None:
        raise DiffvaeError(f"--out {out} is inside the run {run}; write outputs outside run folders")
    return out


def _enclosing_run(folder: Path) -> Path | None:
    """The run folder that ``folder`` is or lies in, if any: a folder with diffvae's run mark, or an older run
    whose config.json passes the run schema (not any folder that merely holds a config.json)."""
    from diffvae.marker import enclosing_folder
    from diffvae.runs import is_unmarked_run

    return enclosing_folder(folder.resolve(), "run", legacy=is_unmarked_run)


def cmd_sample(args) -> int:
    import torch

    from diffvae.api import load

    from diffvae.precision import check_sampling_precision, sampling_precision

    out = _check_output(args.out, args.force)
    check_sampling_precision(args.precision)
    model = load(args.run, device=_device(args))
    kwargs = _sampling_kwargs(args, model)
    from diffvae.conditioning import check_guidance_has_classes, sampling_labels

    kwargs.update(sampling_labels(model, args.n, args.class_, args.classes, args.guidance))  # --class/--classes/--guidance
    check_guidance_has_classes(args.class_, args.classes, args.guidance)
    _check_fits_in_memory(args.n, model)
    generator = torch.Generator(device=_device(args)).manual_seed(args.seed)
    with torch.inference_mode(), sampling_precision(model, args.precision):
        images = model.sample(args.n, generator=generator, **kwargs)
    _write_images(images, out)
    print(f"diffvae: wrote {args.n} samples → {out}", file=sys.stderr)
    return 0


def _check_fits_in_memory(n: int, model) -> None:
    """Refuse an ``--n`` whose images (as float32, with room for a network's activations) cannot fit."""
    from diffvae.data import check_fits_in_memory

    c, h, w = model.run_config["data"]["image_shape"]
    check_fits_in_memory(n * c * h * w * 4 * 8, f"--n {n} ({n} images of {c}×{h}×{w})")


def _write_images(images, out: Path, nrow: int | None = None) -> None:
    import io

    import numpy as np

    from diffvae.images import make_grid
    from diffvae.runs import atomic_write_bytes

    buf = io.BytesIO()
    if out.suffix.lower() == ".npz":
        np.savez_compressed(buf, images=images.cpu().numpy())
    else:
        from PIL import Image

        grid = make_grid(images, nrow=nrow)
        Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid).save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())


def cmd_eval(args) -> int:
    from diffvae.api import load
    from diffvae.evaluate import EvalConfig, check_eval_guidance, evaluate, format_table
    from diffvae.precision import check_sampling_precision

    out = _check_output(args.out, args.force, (".json",)) if args.out else None
    check_sampling_precision(args.precision)
    model = load(args.run, device=_device(args))
    kwargs = _sampling_kwargs(args, model)
    cfg = EvalConfig.quick() if args.quick else EvalConfig()
    for name in ("n", "bound_n", "iwae"):  # ranges checked at parse time
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, {"n": "n_samples", "bound_n": "bound_n", "iwae": "iwae_samples"}[name], value)
    cfg.seed = args.seed
    cfg.sampler_kwargs = kwargs
    cfg.precision = args.precision
    cfg.guidance = check_eval_guidance(model, args.guidance)
    _check_fits_in_memory(cfg.n_samples, model)
    results = evaluate(model, cfg, progress=not args.json)
    text = json.dumps(results, indent=2, sort_keys=True)
    if out is not None:
        from diffvae.runs import atomic_write_text

        atomic_write_text(out, text + "\n")
    print(text if args.json else format_table(results))
    return 0


def cmd_interpolate(args) -> int:
    """Strips between random held-out pairs; with --classes A,B between classes (diffvae.interpolation):
    a conditional run moves its condition from A to B, an unconditional one walks between images of A and B."""
    import torch

    from diffvae.api import load, run_data
    from diffvae.conditioning import num_classes, sampling_labels
    from diffvae.interpolation import class_endpoints, class_strip, interpolation_strip, parse_class_pair

    if args.path not in ("slerp", "linear"):
        raise DiffvaeError(f"--path must be slerp or linear, got {args.path!r}")
    if args.guidance is not None and args.classes is None:
        raise DiffvaeError("--guidance applies with --classes A,B (interpolating the condition of a conditional run)")
    out = _check_output(args.out, args.force)
    model = load(args.run, device=_device(args))
    kwargs = _sampling_kwargs(args, model)
    g = torch.Generator().manual_seed(args.seed)
    if args.classes is not None and num_classes(model):  # the condition moves; no data needed
        a, b = parse_class_pair(args.classes, num_classes(model))
        guidance = sampling_labels(model, args.pairs, guidance=args.guidance).get("guidance")  # refused in one line if bad
        noise = torch.Generator(device=_device(args)).manual_seed(args.seed)  # frame 0 = `sample --class A --seed S`
        with torch.inference_mode():
            frames = class_strip(model, a, b, args.pairs, args.frames, noise, guidance, **kwargs)
    else:
        if args.guidance is not None:
            sampling_labels(model, args.pairs, guidance=args.guidance)  # refuses: the run is unconditional
        dataset = run_data(model)
        if args.classes is not None:
            if dataset.test_labels is None:
                raise DiffvaeError(f"--classes needs labelled data, but {dataset.name} has no labels")
            a, b = parse_class_pair(args.classes, dataset.num_classes)
            ia, ib = class_endpoints(dataset.test, dataset.test_labels, a, b, args.pairs, g)
        else:
            idx = torch.randperm(dataset.test.shape[0], generator=g)[: 2 * args.pairs]
            if idx.numel() < 2 * args.pairs:
                raise DiffvaeError(f"the held-out split has only {dataset.test.shape[0]} images")
            ia, ib = idx[: args.pairs], idx[args.pairs:]
        with torch.inference_mode():
            frames = interpolation_strip(model, dataset.test[ia], dataset.test[ib], args.frames, path=args.path, **kwargs)
    _write_images(frames.flatten(0, 1), out, nrow=args.frames)
    print(f"diffvae: wrote {args.pairs} interpolation strips of {args.frames} frames → {out}", file=sys.stderr)
    return 0


def cmd_invert(args) -> int:
    import torch

    from diffvae.api import load, run_data
    from diffvae.interpolation import roundtrip

    out = _check_output(args.out, args.force) if args.out else None
    model = load(args.run, device=_device(args))
    kwargs = _sampling_kwargs(args, model)
    dataset = run_data(model)
    x = dataset.test[: args.n]
    with torch.inference_mode():
        rec, err = roundtrip(model, x, **kwargs)
    print(json.dumps(err, indent=2, sort_keys=True))
    if out is not None:
        _write_images(torch.cat([x, rec.cpu()]), out, nrow=min(x.shape[0], 16) if x.shape[0] <= 16 else None)
    return 0


def cmd_data(args) -> int:
    from diffvae.data import describe, load_data

    print(describe(load_data(args.spec, size=args.size, key=args.key, binarize=args.binarize)))
    return 0


def cmd_compare(args) -> int:
    from diffvae.compare.pipeline import CompareConfig, run_compare

    run_compare(CompareConfig(data=args.data, out=args.out, budget_minutes=args.budget, families=args.families,
                              split=args.split, seed=args.seed, conditional=args.conditional, device=args.device, size=args.size, key=args.key,
                              binarize=args.binarize, limit=args.limit, resume=args.resume, force=args.force, quiet=args.quiet))
    return 0


def _run_data(args) -> int:
    return args._run_data_command(args) or 0


DATA_SUBCOMMANDS: list[Subcommand] = [
    Subcommand("info", "print what a data spec yields", add_data_info_parser, cmd_data),
    Subcommand("pack", "decode a data spec once into memory-mapped shards; read it back as packed:DIR", module="diffvae.pack"),
]

# One line per subcommand. A command written in its own module (add_arguments(parser) + run(args)):
#     SUBCOMMANDS.append(Subcommand("score", "metrics of uint8 samples", module="diffvae.score"))
#     DATA_SUBCOMMANDS.append(Subcommand("pack", "pack images into one .npz", module="diffvae.pack"))
SUBCOMMANDS: list[Subcommand] = [
    Subcommand("train", "train one family into a run directory", add_train_parser, cmd_train),
    Subcommand("sample", "draw samples from a trained run", add_sample_parser, cmd_sample),
    Subcommand("eval", "evaluate a run (bound, sample quality, speed, interpolation, probe)", add_eval_parser, cmd_eval),
    Subcommand("interpolate", "interpolate between held-out images through the latent", add_interpolate_parser, cmd_interpolate),
    Subcommand("invert", "map held-out images to their latent and back; report the round-trip error", add_invert_parser, cmd_invert),
    Subcommand("data", "inspect data sources", add_data_parser, _run_data),
    Subcommand("compare", "train every family under one budget and write the comparison report", add_compare_parser, cmd_compare),
]
SUBCOMMANDS.append(Subcommand("score", "FID/KID/precision-recall/sharpness of any uint8 samples (folder:/npz:/idx: or a run) "
                              "against --data's held-out split", module="diffvae.score"))
SUBCOMMANDS.append(Subcommand("export", "export a trained run to another library (--to diffusers: pipeline folder, EMA weights, "
                              "safetensors)", module="diffvae.export"))
SUBCOMMANDS.append(Subcommand("plot", "draw a run's loss and evaluation curves (metrics.jsonl) to a PNG", module="diffvae.plot"))
