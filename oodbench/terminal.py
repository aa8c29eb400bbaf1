"""Tables for the terminal that never cut a number: rich squeezes a table wider than the console by cutting
its cells and headings ("AUR…") or dropping whole columns, and a user's folder dataset in the pair column
(`cifar10:folder:/home/me/...`) made the CLI's tables that wide even on a 150-column log.

A `FittedTable` has name columns (model, pair, seed, a file) and value columns (numbers, a verdict). Each
value column is exactly as wide as its widest cell or heading and never wraps; a name wraps where it has
to, a long word folding onto the next line. Where the value columns do not all fit beside the names, the
table is drawn as several, each repeating the names, with as many value columns as fit the console's width
(80 columns included). Names are shown as given: callers shorten them (`data.refs.display_name`).
"""

from __future__ import annotations

from typing import Collection, Iterable, Sequence

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

GAP = 2  # columns between two cells: one of padding, one of the box's (blank) divider
NAME_FOLD = 16  # a name is budgeted at most this wide; a longer one folds rather than push values out


class FittedTable:
    """Drawn as one table, or as several one below the other where the values do not fit beside the names;
    `add_row` takes the names' cells, then the values', as rich markup (escape names)."""

    def __init__(self, *, names: Sequence[str], values: Sequence[str], title: str | None = None,
                 caption: str | None = None, left: Collection[str] = ()) -> None:
        self.names, self.values = list(names), list(values)
        self.title, self.caption, self.left = title, caption, set(left)  # value columns aligned left (text)
        self.rows: list[list[str]] = []

    def add_row(self, *cells: str) -> None:
        if len(cells) != len(self.names) + len(self.values):
            raise ValueError(f"a row has {len(self.names) + len(self.values)} cells; got {len(cells)}")
        self.rows.append(list(cells))

    def _width(self, index: int) -> int:
        widest = max(cell_len(Text.from_markup(cell).plain) for cell in
                     [[*self.names, *self.values][index], *(row[index] for row in self.rows)])
        return min(widest, NAME_FOLD) if index < len(self.names) else widest

    def groups(self, width: int) -> list[list[int]]:
        """The value columns (indices into `values`) of each table drawn at `width` columns."""
        names = sum(self._width(i) for i in range(len(self.names))) + GAP * (len(self.names) - 1)
        groups: list[list[int]] = [[]]
        used = names
        for i in range(len(self.values)):
            need = GAP + self._width(len(self.names) + i)
            if groups[-1] and used + need > width:
                groups.append([])
                used = names
            groups[-1].append(i)
            used += need
        return groups

    def table(self, group: Iterable[int], *, title: str | None, caption: str | None) -> Table:
        """The rich table of the names and the value columns `group`."""
        group = list(group)
        table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                      collapse_padding=True)
        for heading in self.names:
            table.add_column(heading, overflow="fold")
        for i in group:
            heading = self.values[i]
            table.add_column(heading, justify="left" if heading in self.left else "right", no_wrap=True,
                             min_width=cell_len(Text.from_markup(heading).plain))
        for row in self.rows:
            table.add_row(*row[:len(self.names)], *(row[len(self.names) + i] for i in group))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        groups = self.groups(options.max_width)
        for k, group in enumerate(groups):
            title = self.title if k == 0 or self.title is None else f"{self.title} (continued)"
            yield self.table(group, title=title, caption=self.caption if k == len(groups) - 1 else None)
