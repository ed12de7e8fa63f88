"""Output files: written atomically, and never over another study's.

Every output file is written to a temporary file with a unique name in the
same directory, then moved over the target with :func:`os.replace`, which is
atomic on POSIX and Windows: a reader sees the old file or the new one,
never half of one, and two processes writing the same target never share a
temporary file (the last one to finish wins, whole).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from adaptim.lab.errors import LabError


def finite_or_none(value: float | None) -> float | None:
    """``value``, or ``None`` when it is ``None`` or not finite (how the lab writes "diverged")."""
    return value if value is not None and math.isfinite(value) else None


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float as ``None``: JSON has no NaN or infinity.

    The lab reads ``None`` as "not finite" everywhere (a diverged run's metrics), so a
    diverged trial's positions and rates are stored, and written to ``results.json``, as
    ``null``.
    """
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def write_atomically(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that no reader or concurrent writer sees part of it."""
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def check_writable_dir(directory: Path, option: str) -> None:
    """Create ``directory`` if needed and prove a file can be written there (before any work)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory, prefix=".adaptim-write-check."):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise LabError(
            f"{option} {str(directory)!r} is not a writable directory: {reason}"
        ) from None


def check_results_owner(path: Path, study_key: str, option: str, replace_flag: str) -> None:
    """Refuse to overwrite ``path`` when it holds the results of a study other than ``study_key``.

    The same study (the same configuration, so the same key) may rewrite its
    own results; anything else, an unreadable file included, needs
    ``replace_flag``.
    """
    from adaptim.lab.protocol import StudyConfig

    if not path.exists():
        return
    held: Any = None
    try:
        held = json.loads(path.read_text(encoding="utf-8")).get("config")
        if StudyConfig.from_json(held).key() == study_key:
            return
    except (OSError, ValueError, AttributeError, KeyError, TypeError, LabError):
        pass
    what = "another study's results" if isinstance(held, dict) else "a file adaptim cannot read"
    raise LabError(
        f"{option} {str(path.parent)!r} holds {what} ({path.name}); pass {replace_flag} to "
        f"overwrite them, or choose another {option}"
    )
