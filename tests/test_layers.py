"""Every import in `app/` keeps to the layer table in docs/architecture.md ("## Layers").

The table is the one place the allowed dependencies are written down: this test reads it, so the doc
and the code cannot drift apart. A row names its code (`app/core/`, `app/config.py`), the parts of
`app/` it may import (named like the first column without `app/`: `core/`, `config.py`) and the
third-party packages it may import (by import name). Every `import` and `from ... import` counts,
also inside functions and under `TYPE_CHECKING`; a row may always import itself and the standard
library. Dependencies named in the table must be used, and the layers must form no cycle.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"
DOC = ROOT / "docs" / "architecture.md"
HEADER = ("code", "holds", "imports from `app/`", "third-party")
CODE_SPAN = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Layer:
    """One row of the table."""

    paths: tuple[str, ...]  # relative to app/: "core/" for a package, "config.py" for a module
    uses: frozenset[str]  # the parts of app/ it may import, named like `paths`
    third_party: frozenset[str]  # top-level import names
    line: int  # where the row is in the doc

    @property
    def name(self) -> str:
        return ", ".join(f"app/{path}" for path in self.paths)


@dataclass(frozen=True)
class Import:
    source: Path  # the importing file
    line: int
    module: str  # the dotted name imported; for `from m import n` it is m.n when that is a module


@functools.cache
def layers() -> tuple[Layer, ...]:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    assert "## Layers" in lines, f"{DOC} has no '## Layers' section"
    start = lines.index("## Layers") + 1
    rows: list[Layer] = []
    header_seen = False
    for number, text in enumerate(lines[start:], start + 1):
        if not text.startswith("|"):
            if header_seen:
                break
            continue
        cells = tuple(cell.strip() for cell in text.strip().strip("|").split("|"))
        if not header_seen:
            assert cells == HEADER, f"{DOC}:{number}: the layer table's header must be {HEADER}, not {cells}"
            header_seen = True
            continue
        if all(set(cell) <= set("-: ") for cell in cells):
            continue  # the separator row
        assert len(cells) == len(HEADER), f"{DOC}:{number}: a row needs {len(HEADER)} cells: {text}"
        paths = CODE_SPAN.findall(cells[0])
        assert paths, f"{DOC}:{number}: the first cell names no code"
        for path in paths:
            assert path.startswith("app/"), f"{DOC}:{number}: {path} is not under app/"
        rows.append(
            Layer(
                paths=tuple(path.removeprefix("app/") for path in paths),
                uses=frozenset(CODE_SPAN.findall(cells[2])),
                third_party=frozenset(CODE_SPAN.findall(cells[3])),
                line=number,
            )
        )
    assert rows, f"{DOC}: the '## Layers' section has no table"
    return tuple(rows)


def layer_of(path: str) -> Layer | None:
    return next((layer for layer in layers() if path in layer.paths), None)


def table_path(file: Path) -> str:
    """How the table names the code `file` (a .py file under app/) belongs to."""
    parts = file.relative_to(APP).parts
    return f"{parts[0]}/" if len(parts) > 1 else parts[0]


def app_modules() -> list[Path]:
    return sorted(APP.rglob("*.py"))


def module_name(file: Path) -> str:
    parts = file.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(name: str) -> Path | None:
    """The file of `name` when it is a module or package of app, else None."""
    parts = name.split(".")
    if parts[0] != "app":
        return None
    base = APP.joinpath(*parts[1:])
    if len(parts) > 1 and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imports_of(file: Path) -> Iterator[Import]:
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    own = module_name(file)
    package = own if file.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(file, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                parent = ".".join([*base, *([node.module] if node.module else [])])
            else:
                parent = node.module or ""
            modules = {f"{parent}.{alias.name}" for alias in node.names}
            for module in sorted({module if module_file(module) else parent for module in modules}):
                yield Import(file, node.lineno, module)


@functools.cache
def all_imports() -> tuple[Import, ...]:
    return tuple(found for file in app_modules() for found in imports_of(file))


def is_app(module: str) -> bool:
    return module == "app" or module.startswith("app.")


def top_level(module: str) -> str:
    return module.partition(".")[0]


def is_third_party(module: str) -> bool:
    return not is_app(module) and top_level(module) not in sys.stdlib_module_names


def where(found: Import) -> str:
    return f"{found.source.relative_to(ROOT)}:{found.line}"


def test_the_table_names_every_module_once() -> None:
    problems: list[str] = []
    named: dict[str, Layer] = {}
    every_path = {path for layer in layers() for path in layer.paths}
    for layer in layers():
        for path in layer.paths:
            if path in named:
                problems.append(
                    f"{DOC.name}:{layer.line}: app/{path} is already in the row at line {named[path].line}"
                )
            named[path] = layer
            target = APP / path
            if not (target.is_dir() if path.endswith("/") else target.is_file()):
                problems.append(f"{DOC.name}:{layer.line}: app/{path} does not exist")
        for used in sorted(layer.uses - every_path):
            problems.append(
                f"{DOC.name}:{layer.line}: the row for {layer.name} may import app/{used}, which no row names"
            )
    for file in app_modules():
        if table_path(file) not in named:
            problems.append(
                f"{file.relative_to(ROOT)} is in no row of the layer table (as app/{table_path(file)})"
            )
    assert not problems, "\n".join(problems)


def test_app_imports_keep_to_the_table() -> None:
    problems: list[str] = []
    for found in all_imports():
        if not is_app(found.module):
            continue
        source = table_path(found.source)
        layer = layer_of(source)
        target_file = module_file(found.module)
        if layer is None:
            continue  # reported by test_the_table_names_every_module_once
        if target_file is None:
            problems.append(f"{where(found)} imports {found.module}, which is no module of app")
            continue
        target = table_path(target_file)
        if target not in layer.paths and target not in layer.uses:
            problems.append(
                f"{where(found)} imports {found.module}: app/{target} is not in the 'imports from app/' "
                f"column of the row for {layer.name} ({DOC.name}:{layer.line})"
            )
    assert not problems, "\n".join(problems)


def test_third_party_imports_keep_to_the_table() -> None:
    problems: list[str] = []
    for found in all_imports():
        layer = layer_of(table_path(found.source))
        if layer is None or not is_third_party(found.module):
            continue
        if top_level(found.module) not in layer.third_party:
            problems.append(
                f"{where(found)} imports {found.module}: {top_level(found.module)} is not in the "
                f"'third-party' column of the row for {layer.name} ({DOC.name}:{layer.line})"
            )
    assert not problems, "\n".join(problems)


def test_every_dependency_in_the_table_is_used() -> None:
    used: dict[Layer, set[str]] = {layer: set() for layer in layers()}
    for found in all_imports():
        layer = layer_of(table_path(found.source))
        if layer is None:
            continue
        target_file = module_file(found.module)
        if target_file is not None:
            used[layer].add(table_path(target_file))
        elif is_third_party(found.module):
            used[layer].add(top_level(found.module))
    problems = [
        f"{DOC.name}:{layer.line}: the row for {layer.name} names {name}, which none of its code imports"
        for layer in layers()
        for name in sorted((layer.uses | layer.third_party) - used[layer])
    ]
    assert not problems, "\n".join(problems)


def test_the_layers_form_no_cycle() -> None:
    def below(layer: Layer) -> list[Layer]:
        return [other for used in sorted(layer.uses) if (other := layer_of(used)) and other is not layer]

    done: set[Layer] = set()

    def visit(layer: Layer, path: tuple[Layer, ...]) -> None:
        if layer in path:
            cycle = [*path[path.index(layer) :], layer]
            raise AssertionError("the layers form a cycle: " + " -> ".join(step.name for step in cycle))
        if layer in done:
            return
        for other in below(layer):
            visit(other, (*path, layer))
        done.add(layer)

    for layer in layers():
        visit(layer, ())
