"""Published claims the lab carries, each checked through the ordinary protocol.

``adaptim reproduce`` runs, for every claim, the study ``adaptim compare``
would run at its defaults (the same tuning budget, the same re-run seeds,
tuned on validation and reported on test), then compares the measured test
value (mean and 95% confidence interval over the re-run seeds) with the
published one. A claim *holds* when the measured mean lies within the
claim's stated tolerance of the published value; the tolerance is part of
the claim and printed with it.

``--quick`` is the reduced version for CI: a subset of the claims (those
whose trials are cheap), tuned with half the budget and re-run on two seeds.
It checks that the machinery works and that the cheap claims hold; the full
run is the evidence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from adaptim.lab.analysis import OptimizerOutcome
from adaptim.lab.claims import Claims
from adaptim.lab.executors import Executor
from adaptim.lab.files import write_atomically
from adaptim.lab.problems.counterexamples import WILSON_P
from adaptim.lab.problems.deepobs import QUADRATIC_NOISE, deep_learning_hessian
from adaptim.lab.protocol import StudyConfig
from adaptim.lab.store import Store
from adaptim.lab.study import OnTrial, Study, StudyOutcome

MNIST1D = "Greydanus 2020, 'Scaling Down Deep Learning' (MNIST-1D test accuracies it reports)"
REDDI = "Reddi, Kale & Kumar 2018, 'On the Convergence of Adam and Beyond', Sec. 3 and 5"
WILSON = "Wilson et al. 2017, 'The Marginal Value of Adaptive Gradient Methods', Sec. 3.3"
DEEPOBS = "Schneider, Balles & Hennig 2019 (DeepOBS), quadratic_deep: noise floor ½σ²·tr Q"


def _quadratic_floor() -> float:
    """½·σ²·tr Q: the expected loss of the best point, θ = 0, on fresh noise."""
    return float(0.5 * QUADRATIC_NOISE**2 * deep_learning_hessian().trace())


@dataclass(frozen=True)
class Claim:
    """One published statement: on ``problem``, ``subject`` reaches ``published`` ± ``tolerance``.

    ``optimizers`` are those compared in the study (the claim may be about
    one of them against the others). ``metric`` defaults to the problem's
    main metric.
    """

    claim: str
    source: str
    problem: str
    optimizers: tuple[str, ...]
    subject: str
    published: float
    tolerance: float
    metric: str | None = None
    #: Part of ``--quick`` (cheap enough for CI).
    quick: bool = False
    #: What is known about a deviation, measured outside the protocol; shown with the verdict.
    note: str = ""

    def holds(self, mean: float | None) -> bool:
        return mean is not None and abs(mean - self.published) <= self.tolerance


def claims() -> list[Claim]:
    """Every published claim the lab carries."""
    wilson_adaptive = 1 - WILSON_P
    return [
        Claim(
            "MNIST-1D logistic regression reaches 32% test accuracy",
            MNIST1D,
            "mnist1d-logreg",
            ("adam",),
            "adam",
            0.32,
            0.03,
            quick=True,
        ),
        Claim(
            "MNIST-1D MLP reaches 68%",
            MNIST1D,
            "mnist1d-mlp",
            ("adam",),
            "adam",
            0.68,
            0.04,
            note=(
                "not the budget: with the paper's own setting (Adam, lr 1e-2, 6,000 steps) "
                "seed 1 reaches 0.641 test accuracy"
            ),
        ),
        Claim(
            "MNIST-1D CNN reaches 94%",
            MNIST1D,
            "mnist1d-cnn",
            ("adam",),
            "adam",
            0.94,
            0.03,
        ),
        Claim(
            "MNIST-1D GRU reaches 91%",
            MNIST1D,
            "mnist1d-gru",
            ("adam",),
            "adam",
            0.91,
            0.04,
        ),
        Claim(
            "Adam (β₂ = 0.99) converges to the worst point x = +1",
            REDDI,
            "reddi",
            ("adam", "amsgrad"),
            "adam",
            1.0,
            0.25,
            quick=True,
        ),
        Claim(
            "AMSGrad converges to the optimum x = −1",
            REDDI,
            "reddi",
            ("adam", "amsgrad"),
            "amsgrad",
            -1.0,
            0.1,
            quick=True,
        ),
        Claim(
            "gradient descent reaches zero test error",
            WILSON,
            "wilson",
            ("sgd", "adam"),
            "sgd",
            0.0,
            0.02,
            quick=True,
        ),
        Claim(
            f"Adam predicts the majority class: test error = share of negatives ≈ {wilson_adaptive:.2f}",
            WILSON,
            "wilson",
            ("sgd", "adam"),
            "adam",
            wilson_adaptive,
            0.1,
            quick=True,
        ),
        Claim(
            "AdaGrad, like Adam, predicts the majority class",
            WILSON,
            "wilson",
            ("sgd", "adagrad"),
            "adagrad",
            wilson_adaptive,
            0.1,
            note=(
                "every AdaGrad rate of the grid but the largest (3) predicts the majority class; "
                "lr 3 oscillates and amplifies rounding off the lemma's line, float64 included, "
                "and validation picks it"
            ),
        ),
        Claim(
            "tuned SGD reaches the quadratic's noise floor",
            DEEPOBS,
            "quadratic-deep",
            ("sgd",),
            "sgd",
            round(_quadratic_floor(), 2),
            3.0,
            quick=True,
        ),
    ]


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    mean: float | None
    ci95: float | None
    seeds: int
    diverged: int
    hparams: dict[str, Any]

    @property
    def holds(self) -> bool:
        return self.claim.holds(self.mean)

    def to_json(self) -> dict[str, Any]:
        c = self.claim
        return {
            "claim": c.claim,
            "source": c.source,
            "problem": c.problem,
            "optimizers": list(c.optimizers),
            "subject": c.subject,
            "metric": c.metric,
            "published": c.published,
            "tolerance": c.tolerance,
            "measured": {"mean": self.mean, "ci95": self.ci95, "n": self.seeds},
            "diverged": self.diverged,
            "hparams": self.hparams,
            "holds": self.holds,
            "note": c.note,
        }


#: ``--quick``: half the tuning budget and two re-run seeds.
QUICK_BUDGET, QUICK_SEEDS = 4, 2


def _verdict(claim: Claim, outcome: OptimizerOutcome) -> Verdict:
    if claim.metric is None or claim.metric == outcome.metric.name:
        summary = outcome.summary
    else:
        from adaptim.lab.analysis import summarize

        summary = summarize([r.score(claim.metric, "test") for r in outcome.runs])
    return Verdict(
        claim,
        summary.mean,
        summary.ci95,
        summary.n,
        summary.diverged,
        json.loads(json.dumps(outcome.hparams)),
    )


def plan(quick: bool = False) -> list[tuple[StudyConfig, list[Claim]]]:
    """The studies that check the claims (one per problem and optimizers), with their claims."""
    studies: dict[tuple[str, tuple[str, ...]], list[Claim]] = {}
    for claim in claims():
        if claim.quick or not quick:
            studies.setdefault((claim.problem, claim.optimizers), []).append(claim)
    planned = []
    for (problem, optimizers), group in studies.items():
        config = StudyConfig(problems=(problem,), optimizers=optimizers)
        if quick:
            # No adaptive seeding either: a claim is one measured value, and CI time is short.
            config = replace(config, budget=QUICK_BUDGET, seeds=QUICK_SEEDS, max_seeds=QUICK_SEEDS)
        planned.append((config, group))
    return planned


def run_key(quick: bool = False) -> str:
    """What identifies a run of ``adaptim reproduce`` among the workers sharing a store.

    The same studies and the same claims: workers with the same key compute the
    same verdicts, and one of them writes ``reproduce.json``.
    """
    identity = [
        (config.key(), [dataclasses.astuple(claim) for claim in group])
        for config, group in plan(quick)
    ]
    digest = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:32]
    return f"reproduce:{digest}"


def reproduce(
    store: Store,
    executor: Executor,
    *,
    quick: bool = False,
    on_trial: OnTrial | None = None,
    on_study: Callable[[StudyConfig], None] | None = None,
    shared: Claims | None = None,
) -> list[Verdict]:
    """Run the study of every claim (grouped by problem and optimizers) and judge each claim.

    With ``shared`` (this worker's claims), other ``adaptim reproduce`` processes on the same store
    split the trials with this one, as workers of ``adaptim compare`` do
    (:mod:`adaptim.lab.claims`); every worker computes every verdict.
    """
    verdicts: list[Verdict] = []
    order: dict[int, int] = {}
    for config, group in plan(quick):
        order.update((id(claim), len(order)) for claim in group)
        if on_study is not None:
            on_study(config)
        study = Study(config, store, executor, on_trial=on_trial, claims=shared)
        outcome: StudyOutcome = study.run()
        store.save_study(config.key(), config.to_json(), "adaptim reproduce")
        by_name = {o.name: o for o in outcome.problems[0].outcomes}
        verdicts.extend(_verdict(claim, by_name[claim.subject]) for claim in group)
    return sorted(verdicts, key=lambda v: order[id(v.claim)])


def write_json(verdicts: Sequence[Verdict], path: Path, *, quick: bool) -> Path:
    import adaptim

    data = {
        "adaptim": adaptim.__version__,
        "quick": quick,
        "protocol": (
            {"budget": QUICK_BUDGET, "seeds": QUICK_SEEDS}
            if quick
            else {"budget": StudyConfig.budget, "seeds": StudyConfig.seeds}
        ),
        "claims": [v.to_json() for v in verdicts],
        "holding": sum(v.holds for v in verdicts),
        "total": len(verdicts),
    }
    write_atomically(path, json.dumps(data, indent=2, allow_nan=False))
    return path
