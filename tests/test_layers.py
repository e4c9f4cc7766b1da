"""Layers you can see (issue 26): every diffvae module has a layer in DESIGN.md's table, imports only
from its own layer or below, no import circle joins diffvae modules, and an import inside a function
names a diffvae module only where the allow-list below says why.

The import graph is read with ``ast`` from the source (every ``import``/``from ... import``, at module
level or inside a function); nothing is imported to build it."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import diffvae
from diffvae.families import FAMILIES

SRC = Path(diffvae.__file__).parent
DESIGN = SRC.parent.parent / "DESIGN.md"

# (importer, imported): why the import of a diffvae module waits until the function runs — e.g. a module that pulls
# in an optional heavy dependency at import. Keep it short (at most 10); it is empty: optional dependencies
# (matplotlib, diffusers, tensorboard, torch_fidelity, tomllib) are imported inside functions, diffvae modules never.
ALLOWED_FUNCTION_IMPORTS: dict[tuple[str, str], str] = {}


def module_name(path: Path, root: Path) -> str:
    """``diffusion/model`` for src/diffvae/diffusion/model.py; ``metrics/__init__`` for a package."""
    return path.relative_to(root).with_suffix("").as_posix()


def _target(node: ast.ImportFrom | ast.Import, alias: ast.alias, importer: str, modules: set[str]) -> str | None:
    """The diffvae module an import names (the longest module prefix), or None outside diffvae."""
    if isinstance(node, ast.Import):
        dotted = alias.name
    else:
        base = node.module or ""
        if node.level:
            package = importer.split("/")[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(["diffvae", *package] + ([base] if base else []))
        dotted = f"{base}.{alias.name}"
    if dotted != "diffvae" and not dotted.startswith("diffvae."):
        return None
    parts = dotted.split(".")[1:]
    while parts:
        for name in ("/".join(parts), "/".join(parts) + "/__init__"):
            if name in modules:
                return name
        parts.pop()
    return None


def import_graph(root: Path) -> list[tuple[str, str, bool, int]]:
    """(importer, imported, inside a function?, line) for every statement importing a diffvae module under ``root``."""
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    edges = []
    for importer, path in sorted(paths.items()):
        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for alias in child.names:
                        target = _target(child, alias, importer, set(paths))
                        if target and target != importer and (importer, target, in_function, child.lineno) not in edges:
                            edges.append((importer, target, in_function, child.lineno))
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(ast.parse(path.read_text()), False)
    return edges


def cycles(edges) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b, *_ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def layer_table(text: str) -> dict[str, tuple[int, str]]:
    """DESIGN.md's table between ``<!-- layers -->`` and ``<!-- /layers -->``: lines
    ``N  name  module module pkg/* ...`` → {pattern: (N, name)}."""
    block = text.split("<!-- layers -->", 1)[1].split("<!-- /layers -->", 1)[0]
    table = {}
    for line in block.splitlines():
        match = re.match(r"\s*(\d+)\s+(\S+)\s+(.*)", line)
        if match:
            for pattern in match.group(3).split():
                assert pattern not in table, f"{pattern} is in two layers"
                table[pattern] = (int(match.group(1)), match.group(2))
    return table


def layer_of(module: str, table: dict[str, tuple[int, str]]) -> int | None:
    if module in table:
        return table[module][0]
    package = module.rpartition("/")[0]
    return table[package + "/*"][0] if package and package + "/*" in table else None


def upward(edges, table) -> list[str]:
    return [f"{a} (layer {layer_of(a, table)}) imports {b} (layer {layer_of(b, table)}), line {line}"
            for a, b, _, line in edges if (layer_of(b, table) or 0) > (layer_of(a, table) or 0)]


def function_level(edges) -> list[str]:
    return [f"{a}:{line} imports {b} inside a function" for a, b, inside, line in edges
            if inside and (a, b) not in ALLOWED_FUNCTION_IMPORTS]


EDGES = import_graph(SRC)
TABLE = layer_table(DESIGN.read_text())


# ---------------------------------------------------------------- the checks can fail


def _toy_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "diffvae"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_graph_sees_function_level_relative_and_package_imports(tmp_path):
    root = _toy_package(tmp_path, {
        "__init__.py": "", "a.py": "from diffvae.b import x\n",
        "b.py": "import os\ndef f():\n    from diffvae import a\n    from .sub.c import y\n",
        "sub/__init__.py": "", "sub/c.py": "from .. import b\nimport numpy\n",
    })
    edges = import_graph(root)
    assert sorted(edges) == [("a", "b", False, 1), ("b", "a", True, 3), ("b", "sub/c", True, 4), ("sub/c", "b", False, 1)]
    assert cycles(edges) == [["a", "b", "sub/c"]]
    assert function_level(edges) == ["b:3 imports a inside a function", "b:4 imports sub/c inside a function"]


def test_an_upward_import_is_found():
    table = layer_table("<!-- layers -->\n1 base  errors sub/*\n2 top  api\n<!-- /layers -->")
    assert layer_of("sub/x", table) == 1
    assert upward([("errors", "api", False, 7), ("api", "sub/x", False, 3)], table) == [
        "errors (layer 1) imports api (layer 2), line 7"]


# ---------------------------------------------------------------- the package


def test_every_module_has_exactly_one_layer_in_design_md():
    modules = sorted({module_name(p, SRC) for p in SRC.rglob("*.py")})
    assert [m for m in modules if layer_of(m, TABLE) is None] == []
    patterns = {p for p in TABLE if not p.endswith("/*")}
    assert sorted(patterns - set(modules)) == []  # no stale names in the table


def test_the_allow_list_is_short_and_used():
    assert len(ALLOWED_FUNCTION_IMPORTS) <= 10
    used = {(a, b) for a, b, inside, _ in EDGES if inside}
    assert sorted(set(ALLOWED_FUNCTION_IMPORTS) - used) == []


def test_no_import_circle():
    assert cycles(EDGES) == []


def test_no_module_imports_from_a_higher_layer():
    assert upward(EDGES, TABLE) == [], "\n".join(upward(EDGES, TABLE))


def test_function_level_imports_of_diffvae_modules_only_on_the_allow_list():
    assert function_level(EDGES) == [], "\n".join(function_level(EDGES))


# ---------------------------------------------------------------- configs declare each field once


def _declared(cls) -> set[str]:
    return set(cls.__dict__.get("__annotations__", {}))


def copied_fields(classes) -> list[str]:
    """Fields declared by two config classes that do not inherit them from a class they share (a copy; an
    override restates an inherited field to give it another default)."""
    every = {base for cls in classes for base in cls.__mro__ if dataclasses.is_dataclass(base)}
    return sorted(f"{a.__name__}.{name} = {b.__name__}.{name}" for a in every for b in every if a.__name__ < b.__name__
                  for name in _declared(a) & _declared(b)
                  if not any(name in _declared(c) for c in set(a.__mro__) & set(b.__mro__)))


def test_the_copy_check_finds_a_copied_field_and_allows_an_override():
    @dataclasses.dataclass
    class Base:
        width: int = 1

    @dataclasses.dataclass
    class Override(Base):
        width: int = 2  # another default for the inherited field

    @dataclasses.dataclass
    class Copy:
        width: int = 1

    assert copied_fields([Override]) == []
    assert copied_fields([Override, Copy]) == ["Base.width = Copy.width", "Copy.width = Override.width"]


def test_no_family_config_copies_another_ones_fields():
    """The UNet families share diffvae.diffusion.model.UNetFamilyConfig and every conditional family
    diffvae.conditioning.ConditionFields: each field is declared once (a subclass may give it another default)."""
    assert copied_fields([fam.load()[0] for fam in FAMILIES.values()]) == []


def test_no_config_of_the_engine_or_compare_copies_the_data_fields():
    """CompareConfig and DataConfig take the data's fields from diffvae.configs.DataFields (they re-declared four)."""
    from diffvae.compare.pipeline import CompareConfig
    from diffvae.data import DataConfig

    assert copied_fields([CompareConfig, DataConfig]) == []


def test_the_registry_and_the_command_line_stay_small():
    """families.py is a table of specs, cli.py the parser, --config and the command table (issue 26)."""
    assert len((SRC / "families.py").read_text().splitlines()) <= 40
    assert len((SRC / "cli.py").read_text().splitlines()) <= 300
