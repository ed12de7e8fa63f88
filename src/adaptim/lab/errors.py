"""Errors the lab reports to the user as one clear line (the CLI exits with code 2)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LabError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> LabError:
    """``unknown <kind> 'nme'; did you mean 'name'? valid: a, b, c``."""
    choices = list(valid)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    return LabError(f"unknown {kind} {name!r}{hint} Valid {kind}s: {', '.join(choices)}")
