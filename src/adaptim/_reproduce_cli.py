"""The terminal side of ``adaptim reproduce``: run the claims, print one table.

Kept apart from :mod:`adaptim.cli` so the command module stays small; the
lab (:mod:`adaptim.lab.reproduce`) returns data, this module writes it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from adaptim.lab.reproduce import Verdict
    from adaptim.lab.trial import TrialResult


def run_and_print(
    console: Console, quick: bool, out: Path, store_url: str | None, workers: int
) -> tuple[list[Verdict], Path]:
    """Run the claims (``workers`` processes), print their table, write ``out/reproduce.json``.

    Other ``adaptim reproduce`` processes on the same store split the trials with
    this one (:mod:`adaptim.lab.claims`); whichever completes the run writes its
    ``reproduce.json``, and the path returned is that one.
    """
    from adaptim.lab.claims import Claims
    from adaptim.lab.console import StudyProgress
    from adaptim.lab.executors import make_executor
    from adaptim.lab.reproduce import reproduce as run_claims
    from adaptim.lab.reproduce import run_key, write_json
    from adaptim.lab.store import Store, default_url

    trial_store = Store(store_url or default_url(out))
    executor = make_executor(workers)
    claims = Claims(trial_store)
    started = time.time()
    path = out / "reproduce.json"
    try:
        # The claims' studies are planned one after another: a count without a total or ETA.
        with StudyProgress(console, None) as progress:

            def on_trial(result: TrialResult, reused: bool) -> None:
                progress.finished(result.spec, reused, result.wall_time, None)

            verdicts = run_claims(
                trial_store, executor, quick=quick, on_trial=on_trial, shared=claims
            )
        # The run ends once: whichever worker completes it writes reproduce.json.
        finisher = claims.finish(
            run_key(quick),
            started,
            str(out.resolve()),
            lambda: write_json(verdicts, path, quick=quick),
        )
    finally:
        claims.close()
        executor.close()
    _print_verdicts(console, verdicts, quick)
    if finisher is None:
        return verdicts, path
    console.print(
        f"Another worker ({finisher[0]}) completed these claims and wrote their reproduce.json.",
        markup=False,
        highlight=False,
    )
    return verdicts, Path(finisher[1]) / "reproduce.json"


def _print_verdicts(console: Console, verdicts: list[Verdict], quick: bool) -> None:
    """One row per claim; its source as a number with the sources listed under the table.

    A wide terminal gets the problem and optimizer in a column of their own; at 80 columns
    they go under the claim, and the seed count under the measured value.
    """
    from adaptim.lab.console import bullets
    from adaptim.lab.report.numbers import with_ci
    from adaptim.lab.report.text import seeds
    from adaptim.lab.tables import compact_table, print_fitted

    sources = list(dict.fromkeys(v.claim.source for v in verdicts))
    title = "published claims, through the protocol" + (
        " (--quick: budget 4, 2 seeds, cheap claims only)" if quick else ""
    )
    caption = "\n".join(f"[{i}] {escape(source)}" for i, source in enumerate(sources, 1))

    def table(stacked: bool) -> Table:
        table = compact_table(title, caption)
        table.leading = int(stacked)  # a blank line between rows of several lines each
        table.add_column("claim [source]", min_width=24)
        if not stacked:
            table.add_column("problem · optimizer", no_wrap=True)
        table.add_column("published", justify="right", no_wrap=True)
        table.add_column("measured (95% CI)", justify="right", no_wrap=True)
        table.add_column("verdict", min_width=len("holds"))
        for v in verdicts:
            c = v.claim
            mean, spread = with_ci(v.mean, v.ci95)
            measured = (
                "diverged" if v.mean is None else mean + ("" if spread == "–" else " " + spread)
            )
            run = f"{c.problem} · {c.subject}"
            claim = f"{escape(c.claim)} [{sources.index(c.source) + 1}]"
            table.add_row(
                f"{claim}\n[dim]{escape(run)}[/]" if stacked else claim,
                *([] if stacked else [escape(run)]),
                f"{c.published:g} ± {c.tolerance:g}",
                measured + ("\n" if stacked else " ") + f"({seeds(v.seeds)})",
                "[green]holds[/]" if v.holds else "[red]does not hold[/]",
            )
        return table

    print_fitted(console, [table(stacked=False), table(stacked=True)])
    console.print(f"{sum(v.holds for v in verdicts)} of {len(verdicts)} claims hold.")
    notes = [f"{v.claim.claim}: {v.claim.note}" for v in verdicts if v.claim.note and not v.holds]
    if notes:
        bullets(console, notes)
