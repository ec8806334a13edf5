"""The code's shape, held to issue 22's bar: no function over 80 lines in the library and the
service's Flower side, no module over 400 lines anywhere a reader starts.

A function that long does several things, and a module that long holds several concerns;
either is where a new method, mode or key ends up copied rather than plugged in. Length is
counted as ``ast`` sees it: a function from its ``def`` line to its last line (decorators
excluded, its docstring included), a module by its lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400
FUNCTION_ROOTS = ("azsl_flower", "strategies")
MODULE_ROOTS = ("azsl_flower", "strategies", "simulations")


def _modules(roots: tuple[str, ...]) -> list[Path]:
    files = [p for root in roots for p in sorted((ROOT / root).rglob("*.py"))]
    assert files, f"no Python files under {roots} in {ROOT}"
    return files


def long_functions(paths: list[Path], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (N lines)`` for every function or method longer than ``limit``."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                    found.append(f"{where}:{node.lineno} {node.name} ({length} lines)")
    return found


def long_modules(paths: list[Path], limit: int = MAX_MODULE_LINES) -> list[str]:
    """``path (N lines)`` for every module longer than ``limit``."""
    found = []
    for path in paths:
        length = len(path.read_text(encoding="utf-8").splitlines())
        if length > limit:
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found.append(f"{where} ({length} lines)")
    return found


def test_no_function_over_80_lines_in_the_library_or_strategies():
    found = long_functions(_modules(FUNCTION_ROOTS))
    assert not found, (
        f"functions over {MAX_FUNCTION_LINES} lines (split each into parts that do one "
        f"thing): {found}"
    )


def test_no_module_over_400_lines():
    found = long_modules(_modules(MODULE_ROOTS))
    assert not found, (
        f"modules over {MAX_MODULE_LINES} lines (move a concern to a module of its own): {found}"
    )


def test_the_checks_see_a_long_function_and_a_long_module(tmp_path):
    """The walks above find what they are for, at the bar and one over it (else a broken
    walk would pass silently)."""
    over = tmp_path / "over.py"  # a method of 81 lines: def + 80 statements
    over.write_text("class A:\n    def method(self):\n" + _statements(80, indent=8))
    at = tmp_path / "at.py"  # a function of exactly 80 lines
    at.write_text("def f():\n" + _statements(79, indent=4))
    assert [s.split()[1] for s in long_functions([over, at])] == ["method"]
    at.write_text(at.read_text() + "\n" * (MAX_MODULE_LINES - 80))  # 400 lines
    assert long_modules([at]) == []
    at.write_text(at.read_text() + "x = 1\n")
    assert long_modules([at]) == [f"{at} ({MAX_MODULE_LINES + 1} lines)"]


def _statements(n: int, indent: int) -> str:
    return "".join(f"{' ' * indent}x{i} = {i}\n" for i in range(n))
