"""Passwords out of everything the lab shows or keeps: store URLs and command lines.

A store URL may carry a password (``postgresql+psycopg://user:secret@host/db``).
It is needed to connect and nowhere else: ``results.json``, the report page,
the command stored with a study, log lines and error messages all get the URL
with the password replaced by ``***`` (as SQLAlchemy's
``URL.render_as_string(hide_password=True)`` writes it).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

# scheme://user:PASSWORD@host...: the password runs to the last "@" before the host, so a
# password with an unescaped "@" in it is hidden whole.
_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*:)(?P<password>\S*)(?P<tail>@[^@\s/]*)"
)

HIDDEN = "***"


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _PASSWORD.sub(lambda m: f"{m['head']}{HIDDEN}{m['tail']}", text)


def redact_command(argv: Sequence[str]) -> str:
    """A shell command line of ``argv`` with the passwords of its URLs hidden."""
    return shlex.join(redact_url(arg) for arg in argv)
