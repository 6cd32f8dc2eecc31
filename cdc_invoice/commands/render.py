"""Tables for the terminal that never cut a value: money and fix SQL are read, copied, acted on.

Every cell is literal text (never Rich markup: '[database]' in a message stays as written).
When the table's natural width does not fit the terminal, rows are printed as records, one
"column: value" line each, wrapped at the terminal's width instead of truncated.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.rule import Rule
from rich.table import Table
from rich.text import Text


def natural_width(names: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """Width of the table with every cell on one line: longest line per column, plus borders."""
    widths = [cell_len(n) for n in names]
    for row in rows:
        for i, value in enumerate(row):
            longest = max((cell_len(line) for line in value.splitlines()), default=0)
            widths[i] = max(widths[i], longest)
    return sum(widths) + 3 * len(names) + 1


def print_rows(
    console: Console,
    names: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    show_lines: bool = False,
) -> None:
    if natural_width(names, rows) <= console.width:
        table = Table(*names, title=title, show_lines=show_lines)
        for column in table.columns:
            column.overflow = "fold"  # if Rich still narrows a column: wrap, never "…"
        for row in rows:
            table.add_row(*(Text(v) for v in row))
        console.print(table)
        return
    if title:
        console.print(Text(title, style="bold"))
    label = max(cell_len(n) for n in names)
    for n, row in enumerate(rows, 1):
        console.print(Rule(Text(str(n)), align="left", style="dim"))
        for name, value in zip(names, row, strict=True):
            line = Text(f"{name:<{label}}  ", style="bold")
            line.append(value)
            console.print(line, overflow="fold")
