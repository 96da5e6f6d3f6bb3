"""docs/reliability.md and the tests in tests/faults/ name the same faults.

The table is what admins and reviewers read; the markers are what runs. Each row must be proved by
a test here that carries its id, each id a test carries must be a row, the Test column must name
tests that carry that id, and a row's status must match how its tests are marked (a known gap is a
strict xfail, a fault that holds is not).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

FAULTS = Path(__file__).resolve().parent
DOC = FAULTS.parents[1] / "docs" / "reliability.md"
ROW = re.compile(r"^\|\s*([A-Z]\d+)\s*\|(.*)\|\s*$")
STATUSES = ("holds", "known gap")


@dataclass(frozen=True)
class Row:
    id: str
    status: str
    tests: frozenset[str]  # "module::function"


@dataclass
class MarkedTest:
    name: str  # "module::function"
    ids: set[str] = field(default_factory=set)
    strict_xfail: bool = False
    xfail: bool = False


def _rows(text: str) -> list[Row]:
    rows = []
    for line in text.splitlines():
        match = ROW.match(line.strip())
        if not match:
            continue
        cells = [cell.strip() for cell in match.group(2).split("|")]
        status, named = cells[-2], cells[-1]
        tests = frozenset(name.strip(" `") for name in named.split(",") if name.strip(" `"))
        rows.append(Row(match.group(1), status, tests))
    return rows


def _mark_name(decorator: ast.expr) -> str | None:
    """``fault`` for ``@pytest.mark.fault(...)``, and so on; None for anything else."""
    call = decorator.func if isinstance(decorator, ast.Call) else decorator
    if (
        isinstance(call, ast.Attribute)
        and isinstance(call.value, ast.Attribute)
        and call.value.attr == "mark"
        and isinstance(call.value.value, ast.Name)
        and call.value.value.id == "pytest"
    ):
        return call.attr
    return None


def _marked_tests(folder: Path) -> dict[str, MarkedTest]:
    tests: dict[str, MarkedTest] = {}
    for path in sorted(folder.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            test = MarkedTest(f"{path.stem}::{node.name}")
            for decorator in node.decorator_list:
                name = _mark_name(decorator)
                if name == "fault" and isinstance(decorator, ast.Call):
                    test.ids |= {
                        arg.value
                        for arg in decorator.args
                        if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                    }
                elif name == "xfail":
                    test.xfail = True
                    keywords = decorator.keywords if isinstance(decorator, ast.Call) else []
                    test.strict_xfail = any(
                        k.arg == "strict" and isinstance(k.value, ast.Constant) and k.value.value is True
                        for k in keywords
                    )
            if test.ids:
                tests[test.name] = test
    return tests


def test_the_parser_reads_rows_and_markers(tmp_path: Path) -> None:
    """The checks below rest on these two readers: each must see what is there, and only that."""
    rows = _rows(
        "| ID | Fault | Does | Status | Test |\n|----|---|---|---|---|\n"
        "| X1 | a | b | holds | `mod::test_a`, `mod::test_b` |\n| not a row |\n"
    )
    assert rows == [Row("X1", "holds", frozenset({"mod::test_a", "mod::test_b"}))]
    (tmp_path / "test_m.py").write_text(
        "import pytest\n"
        '@pytest.mark.fault("X1", "X2")\n@pytest.mark.xfail(strict=True, reason="r")\n'
        "def test_a() -> None: ...\n"
        "@pytest.mark.xfail\n@pytest.mark.fault('X3')\nasync def test_b() -> None: ...\n"
        "def test_c() -> None: ...\n"
    )
    marked = _marked_tests(tmp_path)
    assert set(marked) == {"test_m::test_a", "test_m::test_b"}
    assert marked["test_m::test_a"].ids == {"X1", "X2"} and marked["test_m::test_a"].strict_xfail
    assert marked["test_m::test_b"].xfail and not marked["test_m::test_b"].strict_xfail


def test_every_row_is_proved_by_the_tests_it_names_and_every_marker_is_a_row() -> None:
    rows = _rows(DOC.read_text(encoding="utf-8"))
    marked = _marked_tests(FAULTS)
    ids = [row.id for row in rows]
    assert len(ids) == len(set(ids)), "a row id is used twice"
    assert len(rows) >= 40

    proving: dict[str, set[str]] = {}
    for test in marked.values():
        for fault_id in test.ids:
            proving.setdefault(fault_id, set()).add(test.name)
    assert sorted(set(proving) - set(ids)) == [], "markers for rows the table does not have"
    for row in rows:
        assert row.status in STATUSES, f"{row.id}: status {row.status!r}"
        assert proving.get(row.id), f"{row.id} has no test in tests/faults/"
        assert row.tests, f"{row.id} names no test"
        assert row.tests <= proving[row.id], f"{row.id} names tests that do not carry its id"
        for name in proving[row.id]:
            test = marked[name]
            if row.status == "known gap":
                assert test.strict_xfail, f"{name} documents the gap {row.id}: it must be xfail(strict=True)"
            else:
                assert not test.xfail, f"{name} is xfail but row {row.id} says it holds"
