"""Plain-text tables for the terminal, logs and MLflow text artifacts (rich, rendered without colour codes)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table


def format_number(value: float | None) -> str:
    """Readable at any scale: thousands separated, fewer decimals as the number grows, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    size = abs(value)
    if size >= 1e5:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:,.2f}"
    return f"{value:.4f}"


def render_table(columns: Sequence[str], rows: Sequence[Sequence[object]], *, title: str | None = None) -> str:
    """A table as text: first column left-aligned, the others right-aligned, numbers through format_number."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(format_number(v) if isinstance(v, (int, float)) else str(v) for v in row))
    # A wide virtual console: a table is never wrapped to the terminal's width, and files get no escape codes.
    console = Console(file=io.StringIO(), width=400, color_system=None, force_terminal=False, highlight=False)
    console.print(table)
    lines = [line.rstrip() for line in console.file.getvalue().splitlines() if line.strip()]
    return "\n".join([title, *lines] if title else lines)  # a title of its own: rich would wrap it to the table
