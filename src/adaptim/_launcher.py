"""The ``adaptim`` console script: checks for the lab extra, then runs :mod:`adaptim.cli`.

``pip install adaptim`` installs the optimizers only (torch and numpy); the
command and the lab need ``pip install 'adaptim[lab]'``. Without this check a
user who has only the optimizers would meet a traceback ending in
``ModuleNotFoundError: No module named 'typer'``. The check reads the
installed package's metadata, so the list of what the lab needs lives in
``pyproject.toml`` alone, and it imports nothing heavy: ``adaptim --help``
stays fast.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

INSTALL_HINT = "pip install 'adaptim[lab]'"

# "scikit-learn>=1.4; extra == \"lab\"" -> "scikit-learn"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_LAB_MARKER = re.compile(r"""extra\s*==\s*["']lab["']""")


def lab_requirements() -> list[str]:
    """The distributions that the ``lab`` extra of the installed adaptim names.

    Empty when adaptim runs from a source tree that pip did not install
    (there is no metadata to read, and nothing to check against).
    """
    try:
        requirements = metadata.requires("adaptim") or []
    except metadata.PackageNotFoundError:
        return []
    names = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        match = _NAME.match(spec)
        if match and _LAB_MARKER.search(marker):
            names.append(match.group(1))
    return names


def missing_lab_requirements() -> list[str]:
    """The lab's distributions that are not installed."""
    missing = []
    for name in lab_requirements():
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def main() -> None:
    missing = missing_lab_requirements()
    if missing:
        print(
            f"error: the adaptim command needs the lab ({', '.join(missing)} missing); "
            f"install it with: {INSTALL_HINT}",
            file=sys.stderr,
        )
        sys.exit(2)
    from adaptim.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
