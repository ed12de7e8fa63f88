"""The terminal side of ``adaptim reproduce``: run the claims, print one table.

Kept apart from :mod:`adaptim.cli` so the command module stays small; the
lab (:mod:`adaptim.lab.reproduce`) returns data, this module writes it.
"""

from __future__ import annotations

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
    """Run the claims (``workers`` processes), print their table, write ``out/reproduce.json``."""
    from adaptim.lab.executors import make_executor
    from adaptim.lab.reproduce import reproduce as run_claims
    from adaptim.lab.reproduce import write_json
    from adaptim.lab.store import Store, default_url

    trial_store = Store(store_url or default_url(out))
    executor = make_executor(workers)
    try:
        with console.status("running the claims' studies") as status:

            def on_trial(result: TrialResult, reused: bool) -> None:
                spec = result.spec
                status.update(
                    f"{spec.problem} · {spec.optimizer} seed {spec.seed} "
                    f"({'stored' if reused else f'{result.wall_time:.1f}s'})"
                )

            verdicts = run_claims(trial_store, executor, quick=quick, on_trial=on_trial)
    finally:
        executor.close()
    _print_verdicts(console, verdicts, quick)
    return verdicts, write_json(verdicts, out / "reproduce.json", quick=quick)


def _print_verdicts(console: Console, verdicts: list[Verdict], quick: bool) -> None:
    table = Table(
        title="published claims, through the protocol"
        + (" (--quick: budget 4, 2 seeds, cheap claims only)" if quick else "")
    )
    for column in ("claim", "source", "problem · optimizer", "published", "measured (95% CI)", ""):
        table.add_column(column, justify="right" if column in ("published",) else "left")
    from adaptim.lab.report.text import number, seeds

    for v in verdicts:
        c = v.claim
        measured = "diverged" if v.mean is None else number(v.mean)
        if v.ci95 is not None:
            measured += f" ± {v.ci95:.2g}"
        measured += f" ({seeds(v.seeds)})"
        table.add_row(
            escape(c.claim),
            escape(c.source),
            escape(f"{c.problem} · {c.subject}"),
            f"{c.published:g} ± {c.tolerance:g}",
            measured,
            "[green]holds[/]" if v.holds else "[red]does not hold[/]",
        )
    console.print(table)
    console.print(f"{sum(v.holds for v in verdicts)} of {len(verdicts)} claims hold.")
    for v in verdicts:
        if v.claim.note and not v.holds:
            console.print(f"  • {escape(v.claim.claim)}: {escape(v.claim.note)}", highlight=False)
