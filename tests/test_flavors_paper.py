"""``flavor="paper"`` against float64 transcriptions of the papers' pseudo-code.

Each reference below is written from the paper's algorithm box, in its
notation, in plain float64 NumPy, independently of :mod:`adaptim.algorithms`:

* AdaGrad: Duchi, Hazan & Singer 2011, diagonal update with δ outside the root.
* RMSprop: Tieleman & Hinton 2012 (lecture 6e, no ε); with centering and
  momentum, Graves 2013, "Generating Sequences With RNNs", eqs. 38-41.
* Adam: Kingma & Ba 2015, Algorithm 1; Adamax: its Algorithm 2.
* AMSGrad: Reddi, Kale & Kumar 2018, Algorithm 2 (no bias correction, no ε),
  with constant α and β₁ (the paper's α/√t and β₁ₜ decay are schedules a
  caller adds).
* NAdam: Dozat 2016, with μ_t = β₁(1 − ½·0.96^{t/250}).
* RAdam: Liu et al. 2020, Algorithm 2 (ρ_t > 4, no ε).
* Adadelta: Zeiler 2012, Algorithm 1.

float64 must agree to 1e-10 relative, float32 to 1e-4, after
:data:`~_flavors.STEPS` steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from _flavors import (
    BETA1,
    BETA2,
    DECAY,
    EPS,
    LR,
    MOMENTUM,
    Arrays,
    Variant,
    assert_matches,
    hypothesis_case,
)
from _parity import Range
from hypothesis import given, settings
from hypothesis import strategies as st

TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}

Rule = Callable[[np.ndarray, np.ndarray, dict[str, Any], int, Mapping[str, Any]], np.ndarray]


def transcription(rule: Rule) -> Callable[..., Arrays]:
    """A reference that applies ``rule(x, g, memory, t, hp)`` in float64 for t = 1, 2, ..."""

    def reference(
        params0: Arrays, grads: Sequence[Arrays], hp: Mapping[str, Any], dtype: np.dtype
    ) -> Arrays:
        params = [p.astype(np.float64) for p in params0]
        memories: list[dict[str, Any]] = [{} for _ in params]
        for t, step_grads in enumerate(grads, start=1):
            params = [
                rule(x, g.astype(np.float64), memory, t, hp)
                for x, g, memory in zip(params, step_grads, memories, strict=True)
            ]
        return params

    return reference


def duchi_adagrad(x: np.ndarray, g: np.ndarray, m: dict[str, Any], t: int, hp: Any) -> np.ndarray:
    m["G"] = m.get("G", 0.0) + g * g  # diag(G_t) = sum of g_tau^2
    return x - hp["lr"] * g / (hp["delta"] + np.sqrt(m["G"]))  # H_t = delta I + diag(G_t)^(1/2)


def tieleman_hinton(x: np.ndarray, g: np.ndarray, m: dict[str, Any], t: int, hp: Any) -> np.ndarray:
    m["MeanSquare"] = hp["decay"] * m.get("MeanSquare", 0.0) + (1 - hp["decay"]) * g * g
    return x - hp["lr"] * g / np.sqrt(m["MeanSquare"])


def graves(x: np.ndarray, g: np.ndarray, m: dict[str, Any], t: int, hp: Any) -> np.ndarray:
    # aleph: decay, beth: momentum, gimel: learning rate, daleth: epsilon
    m["n"] = hp["aleph"] * m.get("n", 0.0) + (1 - hp["aleph"]) * g * g
    m["g"] = hp["aleph"] * m.get("g", 0.0) + (1 - hp["aleph"]) * g
    m["Delta"] = hp["beth"] * m.get("Delta", 0.0) - hp["gimel"] * g / np.sqrt(
        m["n"] - m["g"] ** 2 + hp["daleth"]
    )
    return x + m["Delta"]


def kingma_ba_adam(x: np.ndarray, g: np.ndarray, m: dict[str, Any], t: int, hp: Any) -> np.ndarray:
    b1, b2 = hp["beta1"], hp["beta2"]
    m["m"] = b1 * m.get("m", 0.0) + (1 - b1) * g
    m["v"] = b2 * m.get("v", 0.0) + (1 - b2) * g * g
    m_hat = m["m"] / (1 - b1**t)
    v_hat = m["v"] / (1 - b2**t)
    return x - hp["alpha"] * m_hat / (np.sqrt(v_hat) + hp["epsilon"])


def kingma_ba_adamax(
    x: np.ndarray, g: np.ndarray, m: dict[str, Any], t: int, hp: Any
) -> np.ndarray:
    b1, b2 = hp["beta1"], hp["beta2"]
    m["m"] = b1 * m.get("m", 0.0) + (1 - b1) * g
    m["u"] = np.maximum(b2 * m.get("u", 0.0), np.abs(g))
    return x - (hp["alpha"] / (1 - b1**t)) * m["m"] / m["u"]


def reddi_amsgrad(x: np.ndarray, g: np.ndarray, m: dict[str, Any], t: int, hp: Any) -> np.ndarray:
    b1, b2 = hp["beta1"], hp["beta2"]
    m["m"] = b1 * m.get("m", 0.0) + (1 - b1) * g
    m["v"] = b2 * m.get("v", 0.0) + (1 - b2) * g * g
    m["v_hat"] = np.maximum(m.get("v_hat", 0.0), m["v"])
    return x - hp["alpha"] * m["m"] / np.sqrt(m["v_hat"])


def dozat_nadam(x: np.ndarray, g: np.ndarray, m: dict[str, Any], t: int, hp: Any) -> np.ndarray:
    b1, b2 = hp["beta1"], hp["beta2"]

    def mu(i: int) -> float:
        return b1 * (1 - 0.5 * 0.96 ** (i / 250))

    m["prod"] = m.get("prod", 1.0) * mu(t)  # prod_{i<=t} mu_i
    g_hat = g / (1 - m["prod"])
    m["m"] = b1 * m.get("m", 0.0) + (1 - b1) * g
    m_hat = m["m"] / (1 - m["prod"] * mu(t + 1))
    m["n"] = b2 * m.get("n", 0.0) + (1 - b2) * g * g
    n_hat = m["n"] / (1 - b2**t)
    m_bar = (1 - mu(t)) * g_hat + mu(t + 1) * m_hat
    return x - hp["alpha"] * m_bar / (np.sqrt(n_hat) + hp["epsilon"])


def liu_radam(x: np.ndarray, g: np.ndarray, m: dict[str, Any], t: int, hp: Any) -> np.ndarray:
    b1, b2 = hp["beta1"], hp["beta2"]
    rho_inf = 2 / (1 - b2) - 1
    m["v"] = b2 * m.get("v", 0.0) + (1 - b2) * g * g
    m["m"] = b1 * m.get("m", 0.0) + (1 - b1) * g
    m_hat = m["m"] / (1 - b1**t)
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    if rho > 4:
        l_t = np.sqrt((1 - b2**t) / m["v"])
        r_t = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        return x - hp["alpha"] * r_t * m_hat * l_t
    return x - hp["alpha"] * m_hat


def zeiler_adadelta(x: np.ndarray, g: np.ndarray, m: dict[str, Any], t: int, hp: Any) -> np.ndarray:
    rho, eps = hp["rho"], hp["epsilon"]
    m["Eg2"] = rho * m.get("Eg2", 0.0) + (1 - rho) * g * g
    delta = -np.sqrt(m.get("Edx2", 0.0) + eps) / np.sqrt(m["Eg2"] + eps) * g
    m["Edx2"] = rho * m.get("Edx2", 0.0) + (1 - rho) * delta * delta
    return x + delta


def _adam_ours(hp: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    betas = (hp["beta1"], hp["beta2"])
    eps = {"eps": hp["epsilon"]} if "epsilon" in hp else {}
    return {"flavor": "paper", "lr": hp["alpha"], "betas": betas, **eps, **extra}


ADAM_SPACE = {"alpha": LR, "beta1": BETA1, "beta2": BETA2}

VARIANTS = [
    Variant(
        "adagrad (Duchi et al. 2011)",
        "adagrad",
        lambda hp: {"flavor": "paper", "lr": hp["lr"], "eps": hp["delta"]},
        transcription(duchi_adagrad),
        {"lr": LR, "delta": EPS},
    ),
    Variant(
        "rmsprop (Tieleman & Hinton 2012)",
        "rmsprop",
        lambda hp: {"flavor": "paper", "lr": hp["lr"], "alpha": hp["decay"]},
        transcription(tieleman_hinton),
        {"lr": LR, "decay": DECAY},
    ),
    Variant(
        "rmsprop centered momentum (Graves 2013)",
        "rmsprop",
        lambda hp: {
            "flavor": "paper",
            "centered": True,
            "alpha": hp["aleph"],
            "momentum": hp["beth"],
            "lr": hp["gimel"],
            "eps": hp["daleth"],
        },
        transcription(graves),
        {"aleph": DECAY, "beth": MOMENTUM, "gimel": LR, "daleth": Range(1e-4, 1e-1, "log")},
        scheduled=False,
    ),
    Variant(
        "adam (Kingma & Ba 2015, Alg. 1)",
        "adam",
        _adam_ours,
        transcription(kingma_ba_adam),
        {**ADAM_SPACE, "epsilon": EPS},
    ),
    Variant(
        "adamax (Kingma & Ba 2015, Alg. 2)",
        "adamax",
        _adam_ours,
        transcription(kingma_ba_adamax),
        ADAM_SPACE,
    ),
    Variant(
        "amsgrad (Reddi et al. 2018, Alg. 2)",
        "adam",
        lambda hp: _adam_ours(hp, amsgrad=True),
        transcription(reddi_amsgrad),
        ADAM_SPACE,
    ),
    Variant(
        "nadam (Dozat 2016)",
        "nadam",
        _adam_ours,
        transcription(dozat_nadam),
        {**ADAM_SPACE, "epsilon": EPS},
    ),
    Variant(
        "radam (Liu et al. 2020, Alg. 2)",
        "radam",
        _adam_ours,
        transcription(liu_radam),
        ADAM_SPACE,
    ),
    Variant(
        "adadelta (Zeiler 2012, Alg. 1)",
        "adadelta",
        lambda hp: {"flavor": "paper", "rho": hp["rho"], "eps": hp["epsilon"]},
        transcription(zeiler_adadelta),
        {"rho": DECAY, "epsilon": Range(1e-8, 1e-1, "log")},
    ),
]


@pytest.mark.parametrize("variant", [pytest.param(v, id=v.name.split(" (")[0]) for v in VARIANTS])
@settings(max_examples=8)
@given(data=st.data())
def test_matches_the_paper(variant: Variant, data: st.DataObject) -> None:
    assert_matches(variant, hypothesis_case(data, variant), TOLERANCE)
