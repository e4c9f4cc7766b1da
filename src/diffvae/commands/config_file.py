"""What a ``--config FILE`` may hold (:mod:`diffvae.cli` turns its keys into flags): one flat table of
flag = value read from a .json or .toml file, given once, never setting what replaces or continues a folder."""

from __future__ import annotations

import json
import typing
from pathlib import Path

from diffvae.errors import DiffvaeError


def check_one_config(argv: list[str]) -> None:
    """A second ``--config`` was silently ignored: refused."""
    count = sum(1 for token in argv if token == "--config" or token.startswith("--config="))
    if count > 1:
        raise DiffvaeError(f"--config given {count} times; give one file (merge the others into it)")


# keys a --config file may not set: they replace or continue a folder, so they must be typed on the command line
CONFIG_COMMAND_LINE_ONLY = ("force", "resume")


def check_config_safety(values: dict[str, typing.Any], given: list[str], path: str) -> None:
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
            import tomllib  # Python 3.11+; a .json config needs none

            values = tomllib.loads(text)
    except OSError as e:
        raise DiffvaeError(f"cannot read --config {path}: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        raise DiffvaeError(f"--config {path} is not valid {suffix[1:].upper()}: {(str(e).splitlines() or [''])[0][:200]}") from None
    except RecursionError:  # "[[[[..." nested beyond the parser's stack
        raise DiffvaeError(f"--config {path} is nested too deeply (a config is one table of flag = value)") from None
    if not isinstance(values, dict):
        raise DiffvaeError(f"--config {path} must hold one table of flag = value, got {type(values).__name__}")
    for key, value in values.items():  # a NUL cannot come from a command line; in a path it was an internal error
        if "\x00" in str(key) or "\x00" in str(value):
            raise DiffvaeError(f"--config {path}: {str(key)!r} holds a NUL character (\\x00), which no flag or path may hold")
    return values
