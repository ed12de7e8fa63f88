"""A study's outcome rebuilt from the store alone: the report without re-running anything.

The protocol is replayed with an executor that refuses to run: every trial
the study would run must already be stored, or the store does not hold that
study (yet) and :class:`LabError` says so.

A store is data, and rendering it runs no code it names: a built-in problem
comes from adaptim itself, and a study of a user's ``module:function``
problem is refused unless the caller trusts that module
(``adaptim report --trust-problem-module``), because loading it imports and
calls it (a crafted store could name any module on the path).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from adaptim.lab.errors import LabError
from adaptim.lab.problems import BuildContext
from adaptim.lab.protocol import StudyConfig
from adaptim.lab.store import Store
from adaptim.lab.trial import TrialResult, TrialSpec

if TYPE_CHECKING:
    from adaptim.lab.study import StudyOutcome


class StoredOnly:
    """An executor for a study that must be complete in the store."""

    def run(self, specs: Sequence[TrialSpec], context: BuildContext) -> Iterator[TrialResult]:
        if specs:
            raise LabError(
                f"the store lacks {len(specs)} trial(s) of this study (it was interrupted, or "
                "an older adaptim ran it without adaptive seeds or second-seed sweeps); re-run "
                "its `adaptim compare` command to finish it (stored trials are reused), then "
                "render the report"
            )
        return iter(())

    def close(self) -> None:
        pass


def choose_study(store: Store, key: str | None, results: Path | None) -> tuple[str, str]:
    """The key and command of the study to render.

    ``key`` (or a unique prefix of it) if given; else the study whose
    ``results.json`` lies in the output directory; else the store's only study.
    """
    studies = store.studies()
    if not studies:
        raise LabError(f"store {store.url!r} holds no study; run `adaptim compare` first")
    if key is None and results is not None and results.is_file():
        try:
            config = json.loads(results.read_text())["config"]
            # The stored config itself first: a study stored before StudyConfig gained a
            # field (max_seeds, margin) keeps its key.
            key = next((k for k, c, _ in studies if c == config), None)
            key = key or StudyConfig.from_json(config).key()
        except (OSError, ValueError, KeyError, TypeError):
            key = None
    if key is None:
        if len(studies) == 1:
            return studies[0][0], studies[0][2]
        listing = "; ".join(f"{k[:12]} ({command})" for k, _, command in studies)
        raise LabError(f"the store holds {len(studies)} studies; pick one with --study: {listing}")
    matches = [(k, command) for k, _, command in studies if k.startswith(key)]
    if len(matches) != 1:
        known = ", ".join(k[:12] for k, _, _ in studies)
        problem = "no study in the store matches" if not matches else "several studies match"
        raise LabError(f"{problem} --study {key!r}; stored: {known}")
    return matches[0]


def load_study(
    store: Store,
    key: str,
    command: str,
    data_dir: Path | None = None,
    trust_problem_module: bool = False,
) -> StudyOutcome:
    """The outcome of the stored study ``key``, exactly as ``adaptim compare`` computed it.

    A user problem (``module:function``) is loaded, which runs its code, only with
    ``trust_problem_module``.
    """
    from adaptim.lab.study import Study

    stored = next(c for k, c, _ in store.studies() if k == key)
    try:
        config = StudyConfig.from_json(stored)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise LabError(
            f"study {key[:12]} in the store has an unreadable config: {error!r}"
        ) from None
    modules = [spec for spec in config.problems if ":" in spec]
    if modules and not trust_problem_module:
        raise LabError(
            f"study {key[:12]} uses problem {modules[0]!r}, code named by the store; re-rendering "
            "imports and runs it, so pass --trust-problem-module if you trust that module"
        )
    study = Study(config, store, StoredOnly(), BuildContext(data_dir))
    outcome = study.run()
    outcome.command = command
    return outcome
