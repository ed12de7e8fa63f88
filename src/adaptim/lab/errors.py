"""Errors the lab reports to the user as one clear line (the CLI exits with code 2)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LabError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def unknown_name(kind: str, name: str, valid: Iterable[str], plural: str | None = None) -> LabError:
    """``unknown <kind> 'nme'; did you mean 'name'? valid: a, b, c``."""
    choices = list(valid)
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    # Among similar names, the fewest edits wins ("adma" is a swap away from "adam", not "adamax").
    close.sort(key=lambda candidate: _edits(name, candidate))
    hint = f"; did you mean {close[0]!r}?" if close else "."
    return LabError(
        f"unknown {kind} {name!r}{hint} Valid {plural or kind + 's'}: {', '.join(choices)}"
    )


def _edits(a: str, b: str) -> int:
    """Edit distance counting insertions, deletions, substitutions and adjacent swaps."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]
