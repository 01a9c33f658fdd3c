"""Functions a reader can hold: none in adapt/ runs over 60 lines unless its docstring says why.

A long function must carry a line starting ``Length:`` in its docstring with the reason (an
official algorithm kept in one piece so it can be compared line by line, say). The check counts
the whole definition, decorators excluded, docstring included.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIMIT = 60
PACKAGE = Path(__file__).resolve().parents[2] / "adapt"


def long_functions(source: str) -> list[tuple[str, int]]:
    """``(name, lines)`` of every function over the limit whose docstring gives no ``Length:`` reason."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            doc = ast.get_docstring(node) or ""
            if lines > LIMIT and not any(line.strip().startswith("Length:") for line in doc.splitlines()):
                found.append((node.name, lines))
    return found


def test_no_function_over_60_lines_without_a_stated_reason():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}: {name} ({lines} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, lines in long_functions(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "functions over 60 lines without a 'Length:' reason:\n" + "\n".join(offenders)


def test_the_check_counts_lines_and_accepts_a_stated_reason():
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    plain = f"def f():\n{body}\n"
    reason = '"""Length: the official loop, kept whole to compare it line by line."""'
    reasoned = f"def g():\n    {reason}\n{body}\n"
    assert long_functions(plain) == [("f", LIMIT + 1)]
    assert long_functions(reasoned) == []
