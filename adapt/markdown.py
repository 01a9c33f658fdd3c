"""Markdown tables, the one way the report and the benchmark scripts write them.

A cell may hold anything a user typed or a traceback printed; a `|` in it would split the cell
and a newline would end the row, so both are escaped here rather than by every caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def md_escape(value: Any) -> str:
    """One table cell: `|` escaped, line breaks folded into spaces."""
    return str(value).replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


def md_table(header: Sequence[Any], rows: Iterable[Sequence[Any]], align: str | None = None) -> list[str]:
    """The lines of a GitHub-flavoured Markdown table (header and cells escaped).

    ``align``: one letter per column, ``l`` or ``r`` (numbers read better right-aligned); default left.
    """
    marks = {"l": "---|", "r": "---:|"}
    rule = "|" + "".join(marks[a] for a in (align or "l" * len(header)))
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", rule]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return lines
