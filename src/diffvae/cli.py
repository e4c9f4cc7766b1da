"""The command line: the parser, ``--config FILE`` and the table of commands (each command is a module with
``add_arguments(parser)`` and ``run(args)``: :mod:`diffvae.commands`). Every error ends as one line and a
non-zero exit.

    diffvae train {vae,ddpm,ldm,flow} --data SPEC --out RUN (--steps N | --budget MIN) [...]
    diffvae sample RUN --n N --out grid.png|samples.npz [--sampler --steps --eta --seed]
    diffvae eval RUN [--json] [--n N --sampler --steps]
    diffvae interpolate RUN --out strip.png [--pairs --frames --path]
    diffvae invert RUN [--n --steps]
    diffvae data info SPEC | diffvae data pack SPEC --out DIR
    diffvae compare --data SPEC --budget MIN --out DIR [--families vae,ddpm,ldm,flow] [--split vae=1,ddpm=1,...]
    diffvae score SAMPLES --data SPEC [--json]
    diffvae export RUN --to diffusers OUT [--pipeline ddim|ddpm]
    diffvae plot RUN [--out curves.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import sys
import typing

from diffvae import __version__, export, score
from diffvae.commands import compare, data, eval as eval_command, forecast, interpolate, invert, pack, plot, sample, train
from diffvae.commands.config_file import check_config_safety, check_one_config, read_config_file
from diffvae.errors import DiffvaeError, one_line


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not usage + message; no abbreviated flags (``--confi FILE`` was
    taken for ``--config`` after the file had been looked for, so the file was never read)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        raise DiffvaeError(f"{self.prog.split(' ', 1)[-1]}: {message}" if " " in self.prog else message)


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
        mod = importlib.import_module(self.module)
        return mod.add_arguments, mod.run


def build_parser() -> argparse.ArgumentParser:
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


# ----------------------------------------------------------------------------- --config FILE

CONFIG_COMMANDS = {"train": 2, "compare": 1}  # the commands that take --config, and their words before the flags
CONFIG_FORBIDDEN = ("config", "help", "version")


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
    check_one_config(argv)
    rest = list(argv)
    for i, token in enumerate(rest):
        if token == "--config":
            if i + 1 >= len(rest):
                raise DiffvaeError("--config: expected one argument (a .json or .toml file)")
            return rest[:i] + rest[i + 2:], rest[i + 1]
        if token.startswith("--config="):
            return rest[:i] + rest[i + 1:], token[len("--config="):]
    return rest, None


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
    check_config_safety(values, given, path)
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
    except OSError as e:  # the file system refused a path (name too long, not permitted, ...): one line naming it
        where = f"{e.filename}: " if e.filename else ""
        _say(f"diffvae: error: {one_line(where + (e.strerror or str(e)))}")
        return 2
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


# ----------------------------------------------------------------------------- the commands


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    _add_subcommands(p, DATA_SUBCOMMANDS, "data_command")


def run_data(args) -> int:
    return args._run_data_command(args) or 0


# One line per command. A command written in its own module (add_arguments(parser) + run(args)) may also be named
# by module: Subcommand("hello", "say hello", module="package.hello"), imported when the parser is built.
DATA_SUBCOMMANDS: list[Subcommand] = [
    Subcommand("info", "print what a data spec yields", data.add_arguments, data.run),
    Subcommand("pack", "decode a data spec once into memory-mapped shards; read it back as packed:DIR", pack.add_arguments, pack.run),
]
SUBCOMMANDS: list[Subcommand] = [
    Subcommand("train", "train one family into a run directory", train.add_arguments, train.run),
    Subcommand("sample", "draw samples from a trained run", sample.add_arguments, sample.run),
    Subcommand("eval", "evaluate a run (bound, sample quality, speed, interpolation, probe)", eval_command.add_arguments, eval_command.run),
    Subcommand("interpolate", "interpolate between held-out images through the latent", interpolate.add_arguments, interpolate.run),
    Subcommand("invert", "map held-out images to their latent and back; report the round-trip error", invert.add_arguments, invert.run),
    Subcommand("data", "inspect data sources", add_data_arguments, run_data),
    Subcommand("compare", "train every family under one budget and write the comparison report", compare.add_arguments, compare.run),
    Subcommand("score", "FID/KID/precision-recall/sharpness of any uint8 samples (folder:/npz:/idx: or a run) "
               "against --data's held-out split", score.add_arguments, score.run),
    Subcommand("export", "export a trained run to another library (--to diffusers: pipeline folder, EMA weights, "
               "safetensors)", export.add_arguments, export.run),
    Subcommand("plot", "draw a run's loss and evaluation curves (metrics.jsonl) to a PNG", plot.add_arguments, plot.run),
    Subcommand("forecast", "forecast a finished compare's learning curves at another budget (no training)", forecast.add_arguments,
               forecast.run),
]
