"""``adaptim`` with toy claims in place of the published ones: ``python -m toyclaims reproduce ...``.

The claims' studies run ``toyworkers:counted`` (which logs the process running
each trial), two studies of them, so that tests of several ``adaptim
reproduce`` workers see who ran what, in a run cheap enough for CI.
"""

from __future__ import annotations

from adaptim.lab import reproduce
from adaptim.lab.reproduce import Claim

TOY = "toyworkers:counted"

TOY_CLAIMS = [
    Claim("adam solves the toy quadratic", "a test", TOY, ("sgd", "adam"), "adam", 0.0, 0.5, quick=True),
    Claim("sgd ends at 100", "a test", TOY, ("sgd", "adam"), "sgd", 100.0, 1.0, quick=True),
    Claim("rmsprop solves it too", "a test", TOY, ("rmsprop",), "rmsprop", 0.0, 0.5, quick=True),
]  # fmt: skip


def use_toy_claims() -> None:
    reproduce.claims = lambda: list(TOY_CLAIMS)  # type: ignore[assignment]


if __name__ == "__main__":
    from adaptim.cli import app

    use_toy_claims()
    app()
