"""Adaptive seeding: more re-run seeds, charged equally, only while the leader is not separated.

A scripted executor gives each (optimizer, seed) a fixed final loss, so each
stopping rule is a constructed case; the real study code decides.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from adaptim.lab.analysis import Criterion, Relation
from adaptim.lab.problems import BuildContext
from adaptim.lab.protocol import StudyConfig
from adaptim.lab.report.stored import StoredOnly
from adaptim.lab.store import Store
from adaptim.lab.study import Study, StudyOutcome
from adaptim.lab.trial import Record, TrialResult, TrialSpec

HERE = Path(__file__).parent
TOY = "toyproblems:quadratic"

Script = Callable[[str, int], float]


@pytest.fixture(autouse=True)
def _toy_problems_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


class Scripted:
    """An executor whose trials end at ``script(optimizer, seed)`` (the lr only shifts it)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.ran: list[TrialSpec] = []

    def run(self, specs: Sequence[TrialSpec], context: BuildContext) -> Iterator[TrialResult]:
        for spec in specs:
            self.ran.append(spec)
            loss = self.script(spec.optimizer, spec.seed) + abs(spec.hparams["lr"] - 0.1)
            records = [Record(0, None, {"loss": 10.0}, 0.0), Record(30, 1.0, {"loss": loss}, 0.1)]
            yield TrialResult(spec, records, {"loss": loss}, False, 0.1, 30)

    def close(self) -> None:
        pass


def noise(optimizer: str, seed: int, sd: float) -> float:
    return random.Random(f"{optimizer}/{seed}").gauss(0.0, sd)


def study(tmp_path: Path, script: Script, optimizers: str, max_seeds: int) -> StudyOutcome:
    config = StudyConfig(
        problems=(TOY,),
        optimizers=tuple(optimizers.split(",")),
        seeds=3,
        max_seeds=max_seeds,
        settings={name: {"lr": 0.1} for name in optimizers.split(",")},
    )
    store = Store(f"sqlite:///{tmp_path / 'adaptim.db'}")
    outcome = Study(config, store, Scripted(script)).run()
    # The stored study replays to the same decision without running anything.
    replay = Study(config, store, StoredOnly()).run()
    assert replay.problems[0].recommendation == outcome.problems[0].recommendation
    return outcome


def seeds_run(outcome: StudyOutcome) -> dict[str, list[int]]:
    return {o.name: [r.spec.seed for r in o.runs] for o in outcome.problems[0].outcomes}


def test_a_separated_leader_needs_no_extra_seed(tmp_path: Path) -> None:
    def script(optimizer: str, seed: int) -> float:
        return (1.0 if optimizer == "adam" else 2.0) + noise(optimizer, seed, 0.01)

    outcome = study(tmp_path, script, "sgd,adam", max_seeds=10)
    assert seeds_run(outcome) == {"sgd": [1, 2, 3], "adam": [1, 2, 3]}
    rec = outcome.problems[0].recommendation
    assert rec.optimizer == "adam" and rec.decided_by is Criterion.SEPARATED


def test_not_distinguishable_optimizers_get_seeds_up_to_the_maximum(tmp_path: Path) -> None:
    def script(optimizer: str, seed: int) -> float:
        return 1.0 + noise(optimizer, seed, 0.1)  # no true difference, and 10% noise

    outcome = study(tmp_path, script, "sgd,adam", max_seeds=7)
    assert seeds_run(outcome) == {"sgd": list(range(1, 8)), "adam": list(range(1, 8))}
    rec = outcome.problems[0].recommendation
    assert not rec.settled
    (c,) = rec.comparisons
    assert c.relation is Relation.INDISTINGUISHABLE and c.seeds == 7


def test_extra_seeds_are_charged_to_the_optimizers_in_contention_only(tmp_path: Path) -> None:
    def script(optimizer: str, seed: int) -> float:
        base = 5.0 if optimizer == "sgd" else 1.0  # sgd is clearly worse
        return base + noise(optimizer, seed, 0.1)

    outcome = study(tmp_path, script, "sgd,adam,rmsprop", max_seeds=6)
    seeds = seeds_run(outcome)
    assert seeds["sgd"] == [1, 2, 3]
    assert seeds["adam"] == seeds["rmsprop"] == list(range(1, 7))
    rec = outcome.problems[0].recommendation
    sgd = rec.comparison("sgd")
    assert sgd is not None and sgd.relation is Relation.BETTER and sgd.seeds == 3


def test_equivalence_within_the_margin_also_stops_the_seeding(tmp_path: Path) -> None:
    def script(optimizer: str, seed: int) -> float:
        return 1.0 + 0.1 * seed + noise(optimizer, seed, 0.0005)  # 1% margin: ±0.012 or so

    outcome = study(tmp_path, script, "sgd,adam", max_seeds=10)
    assert seeds_run(outcome) == {"sgd": [1, 2, 3], "adam": [1, 2, 3]}
    (c,) = outcome.problems[0].recommendation.comparisons
    assert c.relation is Relation.EQUIVALENT


def test_max_seeds_never_below_seeds_and_old_studies_ran_exactly_their_seeds() -> None:
    config = StudyConfig(problems=(TOY,), optimizers=("sgd",), seeds=4, max_seeds=2)
    assert Study(config, Store("sqlite://"), Scripted(lambda o, s: 1.0)).policy().max_seeds == 4
    stored = config.to_json()
    del stored["max_seeds"], stored["margin"]
    assert StudyConfig.from_json(stored).max_seeds == 4


def test_a_tie_measures_the_good_lr_ranges_on_a_second_seed(tmp_path: Path) -> None:
    def script(optimizer: str, seed: int) -> float:
        # Equivalent within the 1% margin, so tied (sgd's tuned lr is 0.0947 and the
        # scripted loss adds |lr - 0.1|: that offset is taken back so neither is better).
        offset = 0.1 - 0.0947 if optimizer == "sgd" else 0.0
        return 1.0 - offset + noise(optimizer, seed, 0.0005)

    config = StudyConfig(problems=(TOY,), optimizers=("sgd", "adam"), seeds=3, max_seeds=4)
    executor = Scripted(script)
    outcome = Study(config, Store(f"sqlite:///{tmp_path / 'a.db'}"), executor).run()
    rec = outcome.problems[0].recommendation
    assert outcome.problems[0].outcomes[0].hparams["lr"] == 0.0947  # (the offset above)
    assert rec.contenders == ("sgd", "adam") or rec.contenders == ("adam", "sgd")
    assert [c.relation for c in rec.comparisons] == [Relation.EQUIVALENT]
    # Each tied optimizer's tuned settings (its 8, and as many grid extensions as the other's)
    # again on seed 1, less the chosen one (a re-run).
    tuned = {o.name: len(o.tuning) for o in outcome.problems[0].outcomes}
    assert tuned["sgd"] == tuned["adam"] >= 8
    swept = [s for s in executor.ran if s.phase == "tune" and s.seed == 1]
    assert sorted(s.optimizer for s in swept) == ["adam"] * (tuned["adam"] - 1) + ["sgd"] * (
        tuned["sgd"] - 1
    )
    assert all(r.seeds == 2 for r in rec.lr_ranges.values())
    sgd = next(o for o in outcome.problems[0].outcomes if o.name == "sgd")
    assert len(sgd.sweeps) == tuned["sgd"] and {t.spec.seed for t in sgd.sweeps} == {1}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--max-seeds", "0"], "--max-seeds must be between 1 and 1000, got 0"),
        (["--margin", "abc"], "--margin must be a positive number or percentage"),
        (["--margin", "-1%"], "--margin must be a positive number or percentage"),
    ],
)
def test_bad_statistics_options_get_one_clear_line(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    from typer.testing import CliRunner

    from adaptim.cli import app

    result = CliRunner().invoke(
        app, ["compare", "--problem", TOY, "--workers", "1", "--out", str(tmp_path), *args]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith("error:") and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
