"""The recommendation's decision rules, one constructed case each.

Divergence disqualifies; the leader is compared with every other optimizer
paired by seed (Holm over the claims, TOST within a margin, otherwise "not
distinguishable" with the seeds that would separate them); ties fall to the
good-lr range in grid steps (within one step: equal; an lr fixed by --set is
not compared), then to speed, then to the mean.
"""

from __future__ import annotations

import math

import pytest

from adaptim.lab.analysis import (
    Criterion,
    Margin,
    OptimizerOutcome,
    Policy,
    Relation,
    default_margin,
    recommend,
    summarize,
)
from adaptim.lab.problems.base import Metric
from adaptim.lab.robustness import lr_range
from adaptim.lab.trial import Record, TrialResult, TrialSpec

ACCURACY = Metric("accuracy", "max")
LOSS = Metric("loss", "min")
#: One look, at the usual 5% level: no adaptive seeding in these cases.
FIXED = Policy(first_seeds=3, max_seeds=3)


def result(
    optimizer: str,
    lr: float,
    value: float | None,
    seed: int = 0,
    metric: str = "accuracy",
    reached: int | None = None,
    start: float | None = None,
) -> TrialResult:
    """A finished trial; with ``start`` its curve starts there (step 0) and has ``value`` from
    step ``reached`` (default 10) to step 10."""
    spec = TrialSpec("toy", optimizer, {"lr": lr}, seed, 10, "tune" if seed == 0 else "final")
    records = []
    if start is not None and value is not None:
        at = reached or 10
        records = [Record(0, None, {metric: start}, 0.0)]
        records += [
            Record(step, None, {metric: start + (value - start) * min(step, at) / at}, step * 0.1)
            for step in range(1, 11)
        ]
    return TrialResult(spec, records, {metric: value}, value is None, 1.0, 10)


def outcome(
    name: str,
    finals: list[float | None],
    sweep: dict[float, float | None],
    metric: Metric = ACCURACY,
    reached: int | None = None,
    start: float | None = None,
    lr_fixed: bool = False,
) -> OptimizerOutcome:
    sign = 1.0 if metric.goal == "max" else -1.0
    best_lr = max(
        (lr for lr, v in sweep.items() if v is not None),
        key=lambda lr: sign * (sweep[lr] or 0.0),
        default=1e-3,
    )
    return OptimizerOutcome(
        name=name,
        metric=metric,
        hparams={"lr": best_lr},
        tuning=[result(name, lr, v, metric=metric.name, start=start) for lr, v in sweep.items()],
        runs=[
            result(name, best_lr, v, i + 1, metric.name, reached, start)
            for i, v in enumerate(finals)
        ],
        lr_fixed=lr_fixed,
    )


def test_summary_uses_student_t_interval() -> None:
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == pytest.approx(2.0)
    # t(0.975, 2) = 4.302652..., sd = 1, n = 3
    assert s.ci95 == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert (s.n, s.diverged) == (3, 0)


def test_summary_counts_diverged_runs_and_handles_one_seed() -> None:
    s = summarize([0.5, None, float("nan")])
    assert (s.mean, s.ci95, s.n, s.diverged) == (0.5, None, 1, 2)
    assert summarize([None, None]).mean is None


def test_a_diverged_seed_disqualifies_and_scores_as_the_worst_value() -> None:
    # The case: B's best seed beats all of A's, and once its diverged seed is dropped a
    # t-test cannot tell them apart. But a diverged seed disqualifies, and inside the comparison
    # it scores as the worst value reached (0.85).
    a = outcome("A", [0.90, 0.91, 0.89], {1e-3: 0.90})
    b = outcome("B", [0.93, 0.85, None], {1e-3: 0.93})
    rec = recommend(ACCURACY, [b, a], FIXED)
    assert rec.optimizer == "A" and rec.leader == "A"
    assert rec.tied_with == () and rec.diverged == ("B",)
    assert rec.decided_by is Criterion.UNCONTESTED  # the only one that finished every seed
    versus = rec.comparison("B")
    assert versus is not None and versus.relation is Relation.DIVERGED
    # Paired by seed: A − B = (0.90 − 0.93, 0.91 − 0.85, 0.89 − 0.85) → mean 0.0233.
    assert versus.difference == pytest.approx((-0.03 + 0.06 + 0.04) / 3)
    assert versus.seeds == 3


def test_a_clear_winner_is_separated_with_its_paired_difference() -> None:
    adam = outcome("adam", [0.95, 0.96, 0.955], {1e-3: 0.95, 1e-2: 0.90})
    sgd = outcome("sgd", [0.80, 0.81, 0.79], {1e-1: 0.80, 1.0: None})
    rec = recommend(ACCURACY, [sgd, adam], FIXED)
    assert (rec.optimizer, rec.hparams, rec.decided_by) == (
        "adam",
        {"lr": 1e-3},
        Criterion.SEPARATED,
    )
    c = rec.comparison("sgd")
    assert c is not None and c.relation is Relation.BETTER
    assert c.difference == pytest.approx(0.155)
    assert c.low is not None and c.high is not None and 0 < c.low < 0.155 < c.high
    assert c.p_holm is not None and c.p_holm <= 0.05
    assert c.improvement == 1.0  # every adam run beats every sgd run


def test_lower_is_better_metrics_pick_the_minimum() -> None:
    a = outcome("adam", [0.10, 0.11, 0.12], {1e-3: 0.1}, LOSS)
    b = outcome("sgd", [0.50, 0.52, 0.51], {1e-1: 0.5}, LOSS)
    rec = recommend(LOSS, [b, a], FIXED)
    assert rec.optimizer == "adam"
    c = rec.comparison("sgd")
    assert c is not None and c.difference == pytest.approx(0.40)  # positive: the leader is better


#: Per-seed differences with mean 0.0005 and SD 0.003: no real gap, and a precise one.
NOISE = [0.004, -0.003, 0.002, -0.002, 0.003, -0.001]


def test_tost_calls_close_optimizers_equivalent_within_the_margin() -> None:
    base = [0.90, 0.92, 0.88, 0.91, 0.89, 0.93]
    a = outcome("a", base, {1e-3: 0.9})
    b = outcome("b", [v - d for v, d in zip(base, NOISE, strict=True)], {1e-3: 0.9})
    rec = recommend(ACCURACY, [a, b], Policy(first_seeds=6, max_seeds=6))
    c = rec.comparison("b")
    assert c is not None and c.relation is Relation.EQUIVALENT
    assert c.equivalence_p is not None and c.equivalence_p <= 0.05
    assert rec.margin_absolute == pytest.approx(0.01)
    assert rec.tied_with == ("b",)  # equivalent optimizers are tied


def test_a_noisy_small_gap_is_not_distinguishable_and_says_how_many_seeds_would_do() -> None:
    a = outcome("a", [0.90, 0.93, 0.91], {1e-3: 0.9})
    b = outcome("b", [0.89, 0.90, 0.92], {1e-3: 0.9})
    rec = recommend(ACCURACY, [a, b], FIXED)
    c = rec.comparison("b")
    assert c is not None and c.relation is Relation.INDISTINGUISHABLE
    assert c.seeds_to_separate is not None and c.seeds_to_separate > 3
    # Not equivalent either: a 1-point margin cannot be shown with this noise.
    assert c.equivalence_p is not None and c.equivalence_p > 0.05


def test_a_tighter_margin_turns_equivalence_into_not_distinguishable() -> None:
    base = [0.90, 0.92, 0.88, 0.91, 0.89, 0.93]
    a = outcome("a", base, {1e-3: 0.9})
    b = outcome("b", [v - d for v, d in zip(base, NOISE, strict=True)], {1e-3: 0.9})
    tight = Policy(margin=Margin(0.002, relative=False), first_seeds=6, max_seeds=6)
    c = recommend(ACCURACY, [a, b], tight).comparison("b")
    assert c is not None and c.relation is Relation.INDISTINGUISHABLE


def test_holm_withholds_claims_that_pass_only_one_at_a_time() -> None:
    # leader − x = leader − y = (0.02, 0.03, 0.04) on seeds 1-3: p = 0.035 alone, 0.07 after Holm.
    leader = outcome("leader", [0.90, 0.91, 0.92], {1e-3: 0.9})
    x = outcome("x", [0.88, 0.88, 0.88], {1e-3: 0.9})
    y = outcome("y", [0.88, 0.88, 0.88], {1e-3: 0.9})
    rec = recommend(ACCURACY, [leader, x, y], FIXED)
    for name in ("x", "y"):
        c = rec.comparison(name)
        assert c is not None and c.p_value is not None and c.p_holm is not None
        assert c.p_value == pytest.approx(0.0353, abs=1e-3) and c.p_value < 0.05
        assert c.p_holm == pytest.approx(2 * c.p_value) and c.p_holm > 0.05
        assert c.relation is Relation.INDISTINGUISHABLE
    # Alone, the same claim is made.
    alone = recommend(ACCURACY, [leader, x], FIXED).comparison("x")
    assert alone is not None and alone.relation is Relation.BETTER


def test_adaptive_seeding_lowers_the_per_look_level() -> None:
    adaptive = Policy(first_seeds=3, max_seeds=10)
    assert 0.005 < adaptive.level() < 0.02
    assert FIXED.level() == 0.05


# Equivalent within the default 0.01 margin (TOST), so tied: the tie-break decides.
TIED = [0.921, 0.90, 0.93], [0.920, 0.901, 0.929]


def test_a_faster_optimizer_that_is_only_not_distinguishable_does_not_take_the_choice() -> None:
    # The leader is ahead by 1.3 points on every seed but noisy; the other reaches the speed
    # target in a quarter of the steps and has the wider lr range. Without equivalence it is
    # no tie: the better mean stands, and the verdict says what is unresolved.
    from adaptim.lab.report.text import headline

    leader = outcome(
        "adam", [0.93, 0.95, 0.91], {1e-4: 0.5, 1e-3: 0.93, 1e-2: 0.3}, start=0.1, reached=8
    )
    quick = outcome(
        "prodigy", [0.91, 0.94, 0.90], {1e-4: 0.9, 1e-3: 0.91, 1e-2: 0.9}, start=0.1, reached=2
    )
    rec = recommend(ACCURACY, [leader, quick], FIXED)
    c = rec.comparison("prodigy")
    assert c is not None and c.relation is Relation.INDISTINGUISHABLE
    assert rec.optimizer == "adam" and rec.decided_by is Criterion.LEADING
    assert rec.contenders == ("adam",) and rec.tied_with == () and not rec.eliminated
    assert rec.speeds["prodigy"] is not None and rec.speeds["adam"] is not None
    assert rec.speeds["prodigy"] < rec.speeds["adam"]  # speed would have picked it
    line = headline(ACCURACY, rec, [leader, quick])
    assert "not separated from prodigy" in line and "better mean stands" in line
    # Shown equivalent, the same speed advantage wins the tie.
    close = outcome(
        "prodigy", [0.929, 0.949, 0.911], {1e-4: 0.9, 1e-3: 0.91, 1e-2: 0.9}, start=0.1, reached=2
    )
    tied = recommend(ACCURACY, [leader, close], FIXED)
    assert tied.comparison("prodigy").relation is Relation.EQUIVALENT  # type: ignore[union-attr]
    assert tied.optimizer == "prodigy" and tied.decided_by is not Criterion.LEADING


def test_a_wider_good_lr_range_by_more_than_one_step_breaks_the_tie() -> None:
    narrow = outcome(
        "rmsprop", TIED[0], {1e-4: 0.5, 1e-3: 0.92, 1e-2: 0.3, 1e-1: 0.1}, start=0.1, reached=8
    )
    wide = outcome(
        "adam", TIED[1], {1e-4: 0.918, 1e-3: 0.92, 1e-2: 0.919, 1e-1: 0.5}, start=0.1, reached=9
    )
    rec = recommend(ACCURACY, [narrow, wide], FIXED)
    assert rec.leader == "rmsprop"
    assert rec.optimizer == "adam" and rec.decided_by is Criterion.LR_RANGE
    assert rec.lr_ranges["adam"].steps == 2 and rec.lr_ranges["rmsprop"].steps == 0
    assert rec.eliminated == {"rmsprop": Criterion.LR_RANGE}


def test_widths_within_one_grid_step_fall_through_to_speed() -> None:
    slow = outcome("rmsprop", TIED[0], {1e-4: 0.5, 1e-3: 0.92, 1e-2: 0.3}, start=0.1, reached=8)
    fast = outcome("adam", TIED[1], {1e-4: 0.5, 1e-3: 0.92, 1e-2: 0.919}, start=0.1, reached=2)
    rec = recommend(ACCURACY, [slow, fast], FIXED)
    assert (rec.lr_ranges["adam"].steps, rec.lr_ranges["rmsprop"].steps) == (1, 0)
    assert rec.optimizer == "adam" and rec.decided_by is Criterion.SPEED
    assert rec.speeds["adam"] is not None and rec.speeds["rmsprop"] is not None
    assert rec.speeds["adam"] < rec.speeds["rmsprop"]


def test_equal_ranges_and_speeds_fall_through_to_the_mean() -> None:
    a = outcome("a", TIED[0], {1e-3: 0.92}, start=0.1, reached=5)
    b = outcome("b", TIED[1], {1e-3: 0.92}, start=0.1, reached=5)
    rec = recommend(ACCURACY, [b, a], FIXED)
    assert rec.optimizer == "a" and rec.decided_by is Criterion.MEAN


def test_an_lr_fixed_by_set_is_marked_and_not_compared_on_range() -> None:
    fixed = outcome("rmsprop", TIED[0], {1e-3: 0.92}, start=0.1, reached=8, lr_fixed=True)
    wide = outcome("adam", TIED[1], {1e-4: 0.918, 1e-3: 0.92, 1e-2: 0.919}, start=0.1, reached=2)
    rec = recommend(ACCURACY, [fixed, wide], FIXED)
    assert rec.lr_fixed == ("rmsprop",)
    assert rec.lr_ranges["rmsprop"].fixed and rec.lr_ranges["rmsprop"].steps is None
    # adam's 2-step range does not beat an unmeasured one: speed decides.
    assert rec.decided_by is Criterion.SPEED and rec.optimizer == "adam"
    assert "rmsprop" not in rec.at_edge  # a fixed lr has no edge
    from adaptim.lab.problems.base import Problem
    from adaptim.lab.report import data
    from adaptim.lab.study import ProblemOutcome

    toy = Problem("toy", "a toy", ACCURACY, lambda seed, context: None, steps=10, batch_size=1)  # type: ignore[arg-type,return-value]
    rows = data.ranking(ProblemOutcome(toy, "toy", [fixed, wide], rec))
    marked = next(r for r in rows if r.optimizer == "rmsprop")
    assert marked.lr == "0.001 (--set)" and marked.good_lr == "lr fixed"


def test_an_lr_at_the_edge_of_the_grid_is_flagged() -> None:
    edge = outcome("rmsprop", [0.9, 0.91, 0.92], {1e-4: 0.5, 1e-3: 0.7, 1e-2: 0.9})
    inside = outcome("adam", [0.5, 0.51, 0.52], {1e-4: 0.4, 1e-3: 0.5, 1e-2: 0.45})
    rec = recommend(ACCURACY, [edge, inside], FIXED)
    assert edge.lr_at_edge and not inside.lr_at_edge
    assert rec.at_edge == ("rmsprop",)


def test_an_lr_at_the_limit_of_the_grids_reach_is_said_so() -> None:
    """Grids grow at most MAX_REACH_DECADES beyond the declared range; a best rate there
    is flagged apart from a plain edge, in the data, the sentences and the table."""
    from adaptim.lab.report import text
    from adaptim.lab.tables import Layout, marked_lr, ranking_notes

    # adam's declared range is 1e-4 ... 0.1: its reach ends at 10.
    capped = outcome("adam", [0.9, 0.91, 0.92], {1.0: 0.5, 3.16: 0.7, 10.0: 0.9})
    edge = outcome("rmsprop", [0.5, 0.51, 0.52], {1e-4: 0.4, 1e-3: 0.5, 1e-2: 0.55})
    rec = recommend(ACCURACY, [capped, edge], FIXED)
    assert capped.lr_at_limit and not edge.lr_at_limit and edge.lr_at_edge
    assert rec.at_edge == ("adam", "rmsprop") and rec.at_limit == ("adam",)
    assert rec.to_json()["lr_at_limit"] == ["adam"]
    said = " ".join(text.evidence(ACCURACY, rec, [capped, edge]))
    assert "adam" in said and "2 decades beyond" in said and "may lie further" in said
    from adaptim.lab.problems.base import Problem
    from adaptim.lab.report import data
    from adaptim.lab.study import ProblemOutcome

    toy = Problem("toy", "a toy", ACCURACY, lambda seed, context: None, steps=10, batch_size=1)  # type: ignore[arg-type,return-value]
    problem = ProblemOutcome(toy, "toy", [capped, edge], rec)
    rows = data.ranking(problem)
    marks = {r.optimizer: marked_lr(r) for r in rows}
    assert marks["adam"].endswith("**") and marks["rmsprop"].endswith("*")
    assert not marks["rmsprop"].endswith("**")
    notes = " ".join(ranking_notes(problem, rows, Layout()))
    assert "**: " in notes and "2 decades beyond" in notes


def test_the_table_says_why_optimizers_have_different_seed_counts() -> None:
    """Adaptive seeding gives more seeds to those not yet separated from the leader: the
    seeds column then differs from --seeds, and the caption says why (only then)."""
    from adaptim.lab.problems.base import Problem
    from adaptim.lab.report import data
    from adaptim.lab.study import ProblemOutcome
    from adaptim.lab.tables import Layout, ranking_notes

    toy = Problem("toy", "a toy", ACCURACY, lambda seed, context: None, steps=10, batch_size=1)  # type: ignore[arg-type,return-value]
    sweep = {1e-4: 0.4, 1e-3: 0.5, 1e-2: 0.45}
    for seeds, said in (((3, 3), False), ((5, 3), True)):
        first = outcome("adam", [0.9 + 0.001 * i for i in range(seeds[0])], sweep)
        second = outcome("rmsprop", [0.5 + 0.001 * i for i in range(seeds[1])], sweep)
        rec = recommend(ACCURACY, [first, second], FIXED)
        problem = ProblemOutcome(toy, "toy", [first, second], rec)
        rows = data.ranking(problem)
        assert sorted(r.seeds for r in rows) == sorted(seeds)
        notes = " ".join(ranking_notes(problem, rows, Layout()))
        assert ("adaptive seeding" in notes) is said, notes


def test_good_means_close_to_the_best_relative_to_the_initial_value() -> None:
    # A loss floor of 84 from 455: "within 2% of the best" would admit everything up to 86;
    # 98% of the way from 455 to 84.97 admits up to 92.4.
    sweep = [
        result("sgd", lr, v, metric="loss")
        for lr, v in {3e-3: 87.05, 8e-3: 85.05, 2e-2: 84.97, 6e-2: None, 0.15: None}.items()
    ]
    r = lr_range(LOSS, sweep, reference=455.4)
    assert (r.steps, r.low, r.high, r.seeds) == (2, 3e-3, 2e-2, 1)
    tighter = lr_range(LOSS, sweep, reference=100.0)
    assert tighter.steps == 1  # 87.05 is 13% of the way from 100 to 84.97: not good


def test_rates_a_grid_extension_adds_around_the_best_count_as_half_steps() -> None:
    # A grid 1e-4 ... 1 refined around its best (1e-2) by extend_grid: the good rates 1e-3 to
    # 1e-1 span two of the grid's own steps, not four.
    grid = {1e-4: 0.5, 1e-3: 0.915, 1e-2: 0.92, 1e-1: 0.91, 1.0: 0.3}
    refined = {**grid, 3.16e-3: 0.915, 3.16e-2: 0.918}
    plain = lr_range(ACCURACY, [result("adam", lr, v) for lr, v in grid.items()], 0.1)
    grown = lr_range(ACCURACY, [result("adam", lr, v) for lr, v in refined.items()], 0.1)
    assert plain.steps == grown.steps == 2


def test_every_optimizer_diverging_gives_no_recommendation() -> None:
    a = outcome("adam", [None, 0.2], {1e-3: None}, LOSS)
    b = outcome("sgd", [None, None], {1e-1: None}, LOSS)
    rec = recommend(LOSS, [a, b], FIXED)
    assert rec.optimizer is None and rec.hparams is None
    assert rec.decided_by is Criterion.NONE and rec.diverged == ("adam", "sgd")


def test_default_margins_per_metric() -> None:
    assert default_margin(ACCURACY) == Margin(0.01, relative=False)
    assert default_margin(Metric("test_error", "min")) == Margin(0.01, relative=False)
    assert default_margin(LOSS) == Margin(0.01, relative=True)
    assert Margin.parse("2%") == Margin(0.02, relative=True)
    assert Margin.parse("0.005") == Margin(0.005, relative=False)
    with pytest.raises(ValueError):
        Margin.parse("-1")


def test_trial_keys_ignore_int_float_spelling_and_include_the_data_dir() -> None:
    a = TrialSpec("p", "adam", {"lr": 1, "betas": (0.9, 0.99)}, 0, 10)
    b = TrialSpec("p", "adam", {"lr": 1.0, "betas": [0.9, 0.99]}, 0, 10)
    assert a.key() == b.key()
    assert TrialSpec("p", "adam", {"lr": 1.0}, 0, 10, data="/data/a").key() != a.key()


def with_validation(o: OptimizerOutcome, values: list[float]) -> OptimizerOutcome:
    """The re-runs as a problem with a validation split would give them (the contract of
    ``TrialResult.validation``; ``final`` stays the test metrics)."""
    for run, value in zip(o.runs, values, strict=True):
        run.validation = {"accuracy": value}  # type: ignore[attr-defined]
    return o


def test_validation_decides_and_test_is_reported() -> None:
    from adaptim.lab.report.text import headline
    from adaptim.lab.splits import has_validation

    # On test b looks better; on validation a is clearly ahead: validation decides.
    a = with_validation(outcome("a", [0.80, 0.81, 0.82], {1e-3: 0.8}), [0.95, 0.96, 0.955])
    b = with_validation(outcome("b", [0.90, 0.91, 0.92], {1e-3: 0.9}), [0.80, 0.81, 0.79])
    rec = recommend(ACCURACY, [a, b], FIXED)
    assert rec.optimizer == "a" and rec.decided_by is Criterion.SEPARATED
    c = rec.comparison("b")
    assert c is not None and c.difference == pytest.approx(0.155)  # validation values
    assert a.summary.mean == pytest.approx(0.81)  # the reported mean is on test
    assert has_validation(a.runs)
    assert headline(ACCURACY, rec, [a, b]) == (
        "a, lr 0.001: highest mean on validation, better than every other optimizer "
        "(paired by seed, Holm-adjusted); test accuracy 0.810 ± 0.025 (3 seeds)."
    )


def test_a_diverged_tuning_free_optimizer_claims_no_share_of_the_tuned_result() -> None:
    # prodigy diverged at step 3 of 10 on one seed: it is out of contention, its cut-short
    # run is charged its full budget (divergence is no saving), and the self-tuning sentence
    # says it diverged instead of "reaches 40% of tuned adam's accuracy at 1/3 of the compute".
    import dataclasses

    from adaptim.lab.report.tuning import self_tuning_sentences

    tuned = outcome("adam", [0.90, 0.91, 0.92], {1e-4: 0.5, 1e-3: 0.92, 1e-2: 0.3})
    free = outcome("prodigy", [0.89, None, 0.90], {1.0: 0.9})
    free = dataclasses.replace(free, tuning=[], tuning_free=True, lr_fixed=True)
    free.runs[1] = dataclasses.replace(free.runs[1], steps_done=3)
    rec = recommend(ACCURACY, [tuned, free], FIXED)
    assert rec.optimizer == "adam" and rec.diverged == ("prodigy",)
    cost = next(c for c in rec.costs if c.optimizer == "prodigy")
    assert (cost.reruns, cost.diverged_runs, cost.run_steps) == (3, 1, 10.0)
    (finding,) = rec.self_tuning
    assert (finding.runs, finding.diverged_runs) == (3, 1)
    (sentence,) = self_tuning_sentences(ACCURACY, rec)
    assert sentence.startswith("prodigy at its defaults diverged on 1 of 3 re-run seeds")
    assert "cannot stand in for tuned adam" in sentence and "of the compute" not in sentence
    assert finding.to_json()["diverged_runs"] == 1
