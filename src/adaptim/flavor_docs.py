"""The flavor page: per algorithm, the equations of every flavor and where they differ.

:func:`render_markdown` writes ``docs/flavors.md`` (``adaptim optimizers
--flavors > docs/flavors.md``) from the data of :mod:`adaptim.flavors`, so
the page cannot drift from the presets; a test checks the committed page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from adaptim.algorithms import ALGORITHMS, RESTRICTED
from adaptim.flavors import (
    AMSGRAD_DIFFERENCES,
    DIFFERENCES,
    FLAVOR_TITLES,
    FLAVORS,
    NO_PRESET,
    available,
    differing_options,
    preset,
)

Values = Mapping[str, Any]


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _weight_decay(v: Values) -> str:
    if v.get("decoupled_weight_decay"):
        return f"θ ← (1 − γλ)·θ before the step          (decoupled, λ = {_num(v['weight_decay'])})"
    return f"g ← g + λ·θ                              (L2, λ = {_num(v['weight_decay'])})"


def _adagrad(v: Values) -> list[str]:
    root = "√(s + ε)" if v["eps_inside_sqrt"] else "(√s + ε)"
    return [
        _weight_decay(v),
        f"s ← s + g²                               (s₀ = {_num(v['initial_accumulator_value'])})",
        f"θ ← θ − γ·g / {root}".ljust(41) + f"(γ = {_num(v['lr'])}, ε = {_num(v['eps'])})",
    ]


def _rmsprop(v: Values) -> list[str]:
    inside = v["eps_inside_sqrt"]
    lines = [
        _weight_decay(v),
        f"v ← α·v + (1 − α)·g²                     (α = {_num(v['alpha'])}, v₀ = {_num(v['initial_accumulator_value'])})",
        ("σ = " + ("√(v + ε)" if inside else "√v + ε")).ljust(41) + f"(ε = {_num(v['eps'])})",
        "centered: ḡ ← α·ḡ + (1 − α)·g,  σ = " + ("√(v − ḡ² + ε)" if inside else "√(v − ḡ²) + ε"),
    ]
    if v["lr_in_momentum"]:
        lines.append("momentum: b ← μ·b + γ·g/σ,  θ ← θ − b    (lr inside the buffer)")
    else:
        lines.append("momentum: b ← μ·b + g/σ,  θ ← θ − γ·b    (lr applied after the buffer)")
    lines.append(f"no momentum: θ ← θ − γ·g/σ               (γ = {_num(v['lr'])})")
    return lines


def _adadelta(v: Values) -> list[str]:
    return [
        _weight_decay(v),
        f"v ← ρ·v + (1 − ρ)·g²                     (ρ = {_num(v['rho'])})",
        f"Δ = √(u + ε) / √(v + ε) · g              (ε = {_num(v['eps'])})",
        "u ← ρ·u + (1 − ρ)·Δ²",
        f"θ ← θ − γ·Δ                              (γ = {_num(v['lr'])})",
    ]


def _moments(v: Values) -> list[str]:
    beta1, beta2 = v["betas"]
    return [
        _weight_decay(v),
        f"m ← β₁·m + (1 − β₁)·g,  v ← β₂·v + (1 − β₂)·g²   (β₁ = {_num(beta1)}, β₂ = {_num(beta2)})",
    ]


def _adam(v: Values) -> list[str]:
    lines = _moments(v)
    eps = f"(γ = {_num(v['lr'])}, ε = {_num(v['eps'])})"
    corrected_m, step = ("m", "γ/(1 − β₁ᵗ)") if v["bias_correction"] else ("m", "γ")
    second = "v"
    if v["amsgrad"]:
        if v["amsgrad_max"] == "corrected":
            lines.append("AMSGrad: v̂ ← max(v̂, v/(1 − β₂ᵗ))  (the bias-corrected v)")
            lines.append(f"θ ← θ − {step} · {corrected_m}/(√v̂ + ε)   {eps}")
            return lines
        lines.append("AMSGrad: v̂ ← max(v̂, v)  (the raw v), used in place of v")
        second = "v̂"
    if not v["bias_correction"]:
        lines.append(f"θ ← θ − γ · m/(√{second} + ε)   (no bias correction) {eps}")
    elif v["epsilon_hat"]:
        lines.append(f"θ ← θ − γ·√(1 − β₂ᵗ)/(1 − β₁ᵗ) · m/(√{second} + ε̂)   (epsilon hat) {eps}")
    else:
        lines.append(f"θ ← θ − γ/(1 − β₁ᵗ) · m/(√{second}/√(1 − β₂ᵗ) + ε)   (Algorithm 1) {eps}")
    return lines


def _adamax(v: Values) -> list[str]:
    lines = _moments(v)[:1]
    beta1, beta2 = v["betas"]
    lines.append(
        f"m ← β₁·m + (1 − β₁)·g                    (β₁ = {_num(beta1)}, β₂ = {_num(beta2)})"
    )
    eps = f"(γ = {_num(v['lr'])}, ε = {_num(v['eps'])})"
    if v["eps_in_max"]:
        lines += ["u ← max(β₂·u, |g| + ε)", f"θ ← θ − γ/(1 − β₁ᵗ) · m/u   {eps}"]
    else:
        lines += ["u ← max(β₂·u, |g|)", f"θ ← θ − γ/(1 − β₁ᵗ) · m/(u + ε)   {eps}"]
    return lines


def _nadam(v: Values) -> list[str]:
    lines = _moments(v)
    if v["momentum_schedule"]:
        lines.append(f"μₜ = β₁·(1 − ½·0.96^(t·ψ)),  Πₜ = μ₁⋯μₜ   (ψ = {_num(v['momentum_decay'])})")
    else:
        lines.append("μₜ = β₁,  Πₜ = β₁ᵗ                       (no momentum schedule)")
    lines.append(
        "θ ← θ − γ(1 − μₜ)/(1 − Πₜ) · g/(√v̂ + ε) − γμₜ₊₁/(1 − Πₜμₜ₊₁) · m/(√v̂ + ε),  "
        f"v̂ = v/(1 − β₂ᵗ)   (γ = {_num(v['lr'])}, ε = {_num(v['eps'])})"
    )
    return lines


def _radam(v: Values) -> list[str]:
    lines = _moments(v)
    lines.append("m̂ = m/(1 − β₁ᵗ),  ρ∞ = 2/(1 − β₂) − 1,  ρₜ = ρ∞ − 2tβ₂ᵗ/(1 − β₂ᵗ),  rₜ = √(…)")
    adaptive = "√(1 − β₂ᵗ)/(√v + ε)" if v["epsilon_hat"] else "1/(√(v/(1 − β₂ᵗ)) + ε)"
    lines.append(
        f"ρₜ > {_num(v['rectify_threshold'])}: θ ← θ − γ·rₜ·m̂·{adaptive};  otherwise θ ← θ − γ·m̂"
        f"   (γ = {_num(v['lr'])}, ε = {_num(v['eps'])})"
    )
    return lines


EQUATIONS: dict[str, Callable[[Values], list[str]]] = {
    "adagrad": _adagrad,
    "rmsprop": _rmsprop,
    "adadelta": _adadelta,
    "adam": _adam,
    "adamw": _adam,
    "adamax": _adamax,
    "nadam": _nadam,
    "radam": _radam,
}

TITLES = {name: ALGORITHMS[name].class_name for name in EQUATIONS}

_INTRO = """\
# Flavors: the same optimizer in PyTorch, Keras 3, TF1, optax and the papers

<!-- generated by `adaptim optimizers --flavors > docs/flavors.md`; do not edit -->

`flavor=` sets every hyperparameter you do not pass to the defaults of one
framework; the options below are also arguments of their own (an argument you
pass always wins). γ is `lr`, λ `weight_decay`, ε `eps`; `t` counts steps
from 1. The presets are data in `adaptim.flavors`; each option is documented
in the update rule's docstring (`help(adaptim.RMSprop)`).

Flavors: {flavors}.
"""


def _table(algorithm: str, amsgrad: bool = False) -> list[str]:
    flavors = available(algorithm, amsgrad=amsgrad)
    options = differing_options(algorithm)
    if amsgrad:
        presets = {f: preset(algorithm, f, amsgrad=True) for f in flavors}
        keys = [k for k in presets[flavors[0]] if len({repr(p[k]) for p in presets.values()}) > 1]
        options = {k: {f: presets[f][k] for f in flavors} for k in keys}
    lines = ["| option | " + " | ".join(flavors) + " |", "|---" * (len(flavors) + 1) + "|"]
    for key, values in options.items():
        cells = [f"`{_num(values[f])}`" for f in flavors]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return lines


SOURCES = """\
## Where each difference was read, and how it is tested

Read in the installed sources: Keras 3.15.1 (`keras/src/optimizers/*.py`,
`keras/src/backend/torch/optimizers/torch_*.py`, weight decay in
`torch_optimizer.py` `_apply_weight_decay` and `base_optimizer.py`), optax
0.2.8 (`optax/_src/alias.py`, `optax/_src/transform.py`,
`optax/transforms/_accumulation.py` `trace`, `optax/transforms/_adding.py`
`add_decayed_weights`, `optax/tree_utils/_tree_math.py`) and TensorFlow
2.21.0 (`tensorflow/python/training/{adagrad,rmsprop,adam,adadelta}.py`).

| point | torch | Keras 3 | TF1 | optax | paper |
|---|---|---|---|---|---|
| AdaGrad eps | outside √, 1e-10 | inside √, 1e-7 | none | inside √, 1e-7 (`rsqrt(s + eps)`, 0 where s = 0) | δ outside √ (Duchi et al.) |
| AdaGrad initial accumulator | 0 | 0.1 | 0.1 | 0.1 | 0 |
| RMSprop decay | 0.99 | 0.9 | 0.9 | 0.9 | 0.9 |
| RMSprop eps | outside √, 1e-8 | inside √, 1e-7 | inside √, 1e-10 | inside √ (`eps_in_sqrt=True`), 1e-8 | none (Tieleman & Hinton); inside √ (Graves) |
| RMSprop initial v | 0 | 0 | 1 | 0 (`initial_scale`) | 0 |
| RMSprop momentum | lr after the buffer | lr inside the buffer | lr inside | lr inside (`trace` after `scale_by_learning_rate`) | lr inside (Graves) |
| Adam eps | after bias correction (Alg. 1) | epsilon hat | epsilon hat | after bias correction (`eps_root=0`) | Alg. 1 |
| AMSGrad max over | raw v | raw v | (no AMSGrad) | bias-corrected v | raw v, no bias correction, no ε (Reddi et al. Alg. 2) |
| Adamax eps | in the max, on abs(g) | added to u in the denominator | (no Adamax) | in the max, on abs(g) | none |
| NAdam | μₜ schedule, ψ = 0.004 | μₜ schedule with 0.96^t, i.e. ψ = 1 | (no NAdam) | no schedule (μ = β₁) | ψ = 0.004 (0.96^(t/250)) |
| RAdam | eps on the raw √v, ρₜ > 5 | (no RAdam) | (no RAdam) | eps after bias correction, ρₜ ≥ 5 | no ε, ρₜ > 4 |
| Adadelta defaults | lr 1, ρ 0.9, ε 1e-6 | lr 1e-3, ρ 0.95, ε 1e-7 | lr 1e-3, ρ 0.95, ε 1e-8 | ρ 0.9, ε 1e-6 (lr None = identity) | ρ 0.95, ε 1e-6 |
| weight decay | L2 in the gradient (AdamW: θ ← (1 − γλ)θ) | θ ← (1 − γλ)θ before every optimizer's step | (none) | `adamw`: λθ added before scaling by γ (= decoupled); `adadelta`: λθ added before the preconditioner (= L2) | — |

Tests: `tests/test_flavors_keras.py` (Keras 3 on the torch backend),
`tests/test_flavors_optax.py` (optax, JAX on CPU with x64),
`tests/test_flavors_paper.py` (float64 transcriptions), and
`benchmarks/tf1_parity.py` (TensorFlow's `tf.compat.v1.train`, run by hand);
`benchmarks/flavor_parity_table.py` prints the worst error per variant.
"""


def render_markdown() -> str:
    """The whole page, as ``docs/flavors.md`` holds it."""
    names = ", ".join(f"`{f}` ({FLAVOR_TITLES[f]})" for f in FLAVORS)
    out = [_INTRO.format(flavors=names)]
    for algorithm in DIFFERENCES:
        flavors = available(algorithm)
        noted = NO_PRESET.get(algorithm, {})
        missing = [f for f in FLAVORS if f not in flavors and f not in noted]
        out.append(f"## {TITLES[algorithm]}\n")
        if missing:
            out.append("No such optimizer in: " + ", ".join(f"`{f}`" for f in missing) + ".\n")
        out += [f"No `{f}` preset: {why}\n" for f, why in noted.items()]
        out.append("Where the flavors differ:\n")
        out += _table(algorithm)
        out.append("")
        for flavor in flavors:
            out.append(f"`{flavor}`:\n\n```")
            out += EQUATIONS[algorithm](preset(algorithm, flavor))
            out.append("```\n")
        if algorithm in ("adam", "adamw"):
            out.append(f"With `amsgrad=True` ({TITLES[algorithm]}); where AMSGrad differs:\n")
            out += _table(algorithm, amsgrad=True)
            out.append("")
            for flavor in available(algorithm, amsgrad=True):
                if AMSGRAD_DIFFERENCES[flavor] or flavor == "torch":
                    out.append(f"`{flavor}` with `amsgrad=True`:\n\n```")
                    out += EQUATIONS[algorithm](
                        {**preset(algorithm, flavor, amsgrad=True), "amsgrad": True}
                    )
                    out.append("```\n")
    out.append(SOURCES)
    return "\n".join(out).rstrip() + "\n"


# -- the optax family (issue 16 point 2) -------------------------------------------------------
def _lion(v: Values) -> list[str]:
    beta1, beta2 = v["betas"]
    return [
        f"c = β₁·m + (1 − β₁)·g                    (β₁ = {_num(beta1)})",
        f"θ ← θ − γ·(sign(c) + λ·θ)                 (γ = {_num(v['lr'])}, λ = {_num(v['weight_decay'])})",
        f"m ← β₂·m + (1 − β₂)·g                    (β₂ = {_num(beta2)})",
    ]


def _adabelief(v: Values) -> list[str]:
    beta1, beta2 = v["betas"]
    return [
        f"m ← β₁·m + (1 − β₁)·g                    (β₁ = {_num(beta1)}, β₂ = {_num(beta2)})",
        f"s ← β₂·s + (1 − β₂)·(g − m)² + ε̄         (ε̄ = {_num(v['eps_root'])})",
        "nesterov: m̂ = β₁·m/(1 − β₁ᵗ⁺¹) + (1 − β₁)·g/(1 − β₁ᵗ);  otherwise m̂ = m/(1 − β₁ᵗ)",
        f"θ ← θ − γ·m̂/(√(s/(1 − β₂ᵗ)) + ε)          (γ = {_num(v['lr'])}, ε = {_num(v['eps'])})",
    ]


def _yogi(v: Values) -> list[str]:
    beta1, beta2 = v["betas"]
    start = _num(v["initial_accumulator_value"])
    lines = [
        f"m ← β₁·m + (1 − β₁)·g                    (β₁ = {_num(beta1)}, m₀ = {start})",
        f"v ← v − (1 − β₂)·sign(v − g²)·g²          (β₂ = {_num(beta2)}, v₀ = {start})",
    ]
    eps = f"(γ = {_num(v['lr'])}, ε = {_num(v['eps'])})"
    if v["bias_correction"]:
        lines.append(f"θ ← θ − γ/(1 − β₁ᵗ) · m/(√(v/(1 − β₂ᵗ)) + ε)   {eps}")
    else:
        lines.append(f"θ ← θ − γ · m/(√v + ε)   (no bias correction) {eps}")
    return lines


def _adan(v: Values) -> list[str]:
    beta1, beta2, beta3 = (_num(b) for b in v["betas"])
    c = "β₂" if v["diff_scale"] == "beta2" else "(1 − β₂)"
    lines = [
        f"Δ = g − g_prev (0 on the first step)      (β₁ = {beta1}, β₂ = {beta2}, β₃ = {beta3})",
        f"m ← β₁·m + (1 − β₁)·g,  v ← β₂·v + (1 − β₂)·Δ,  n ← β₃·n + (1 − β₃)·(g + {c}·Δ)²",
    ]
    if v["bias_correction"]:
        lines.append("m̂, v̂, n̂ = m/(1 − β₁ᵗ), v/(1 − β₂ᵗ), n/(1 − β₃ᵗ)   (all start at 0)")
    else:
        lines.append("m̂, v̂, n̂ = m, v, n;  step 1: m = g, v = 0, n = g²;  step 2: v = Δ")
    lines.append(
        f"u = (m̂ + {c}·v̂)/(√(n̂ + ε̄) + ε)             (ε = {_num(v['eps'])}, ε̄ = {_num(v['eps_root'])})"
    )
    decay = f"(γ = {_num(v['lr'])}, λ = {_num(v['weight_decay'])})"
    if v["proximal_weight_decay"]:
        lines.append(f"θ ← (θ − γ·u)/(1 + γλ)   (proximal) {decay}")
    else:
        lines.append(f"θ ← θ − γ·(u + λ·θ)   {decay}")
    return lines


def _novograd(v: Values) -> list[str]:
    beta1, beta2 = (_num(b) for b in v["betas"])
    return [
        f"v ← β₂·v + (1 − β₂)·‖g‖²  (one v per tensor; v₁ = ‖g₁‖²)   (β₂ = {beta2})",
        f"d = g/(√(v + ε̄) + ε) + λ·θ               (ε = {_num(v['eps'])}, ε̄ = {_num(v['eps_root'])}, λ = {_num(v['weight_decay'])})",
        f"m ← β₁·m + d  (m₁ = d₁)                   (β₁ = {beta1})",
        f"θ ← θ − γ·m                               (γ = {_num(v['lr'])})",
    ]


def _sm3(v: Values) -> list[str]:
    lines = [
        "ν(i) = minₐ μₐ(iₐ) + g(i)²   (μₐ: one accumulator per index of axis a; vectors: per element)",
        "μₐ(j) ← max of ν over the indices i with iₐ = j",
        f"u = g/√(ν + ε)  (0 where ν = 0)            (ε = {_num(v['eps'])})",
    ]
    if v["momentum"]:
        lines.append(
            f"b ← β·b + (1 − β)·u,  θ ← θ − γ·b          (β = {_num(v['momentum'])}, γ = {_num(v['lr'])})"
        )
    else:
        lines.append(f"θ ← θ − γ·u   (no momentum)                (γ = {_num(v['lr'])})")
    return lines


OPTAX_FAMILY = ("lion", "adabelief", "yogi", "adan", "novograd", "sm3")
EQUATIONS.update(
    {"lion": _lion, "adabelief": _adabelief, "yogi": _yogi, "adan": _adan, "novograd": _novograd}
)
EQUATIONS.update({"sm3": _sm3})
TITLES.update({name: ALGORITHMS[name].class_name for name in OPTAX_FAMILY})
SOURCES += """
The optax family (Lion, AdaBelief, Yogi, Adan, NovoGrad, SM3; no torch.optim twin, so `optax` is their default
flavor) was read in optax 0.2.8 (`optax/_src/alias.py`, `optax/_src/transform.py`)
and Keras 3.15.1 (`keras/src/optimizers/lion.py`), and is tested in
`tests/test_optax_family.py` against optax (float64 and float32) and Keras' Lion,
on a noisy quadratic whose gradients depend on the parameters.
"""


# -- torch.optim's Adafactor (issue 16 point 1) ------------------------------------------------
def _adafactor(v: Values) -> list[str]:
    eps1, eps2 = v["eps"]
    eps1_text = "machine ε" if eps1 is None else _num(eps1)
    decay = f"θ ← (1 − γλ)·θ                            (λ = {_num(v['weight_decay'])})"
    rate = f"ρ = min(γ, 1/√t),  α = max(ε₂, RMS(θ))·ρ     (γ = {_num(v['lr'])}, ε₂ = {_num(eps2)})"
    lines = [decay, rate] if v["rms_after_decay"] else [rate, decay]
    beta = f"β̂ = 1 − t^c                              (c = {_num(v['beta2_decay'])})"
    if v["eps1_in_square"]:
        lines += [
            beta,
            f"R ← β̂·R + (1 − β̂)·rowmean(g² + ε₁),  C likewise over columns   (ε₁ = {eps1_text})",
            "V̂ = R·C / mean(R)  (vectors: V̂ ← β̂·V̂ + (1 − β̂)·(g² + ε₁)),  U = g/√V̂",
        ]
    else:
        lines += [
            beta,
            f"R ← β̂·R + (1 − β̂)·rowmean(g²),  C likewise over columns   (ε₁ = {eps1_text})",
            "V̂ = R·C / max(mean(R), ε₁)  (vectors: V̂ ← β̂·V̂ + (1 − β̂)·g²),  U = g/√max(V̂, ε₁²)",
        ]
    lines.append(f"θ ← θ − α·U / max(1, RMS(U)/d)           (d = {_num(v['d'])})")
    return lines


EQUATIONS["adafactor"] = _adafactor
TITLES["adafactor"] = ALGORITHMS["adafactor"].class_name
SOURCES += """
Adafactor's flavors were read in torch 2.13 (`torch/optim/_adafactor.py`), Keras 3.15.1
(`keras/src/optimizers/adafactor.py`; weight decay in `base_optimizer.py`) and optax 0.2.8
(`optax/_src/factorized.py`, `alias.py` `adafactor`), and are tested in
`tests/test_adafactor_flavors.py` against Keras 3 (`keras`) and optax (`paper`).
"""


# -- torch.optim's Muon (issue 16 point 1) -------------------------------------------------------
def _muon(v: Values) -> list[str]:
    mu = _num(v["momentum"])
    if v["momentum_average"]:
        buffer = f"B ← μ·B + (1 − μ)·g;  nesterov: M = (1 − μ)·g + μ·B, else M = B   (μ = {mu})"
    else:
        buffer = f"B ← μ·B + g;  nesterov: M = g + μ·B, else M = B   (μ = {mu})"
    norm = "‖M‖ + ε" if v["eps_added"] else "max(‖M‖, ε)"
    precision = "bfloat16" if v["ns_precision"] == "bfloat16" else "the parameter's dtype"
    rate = {
        "match_rms_adamw": f"η = {_num(v['rms_rate'])}·γ·√max(A, B)",
        "unscaled": "η = γ",
    }.get(v["adjust_lr_fn"], "η = γ·√max(1, A/B)")
    lines = [
        f"θ ← (1 − γλ)·θ                            (λ = {_num(v['weight_decay'])}, γ = {_num(v['lr'])})",
        buffer,
        f"X = M/({norm}), {v['ns_steps']} × X ← a·X + (b·XXᵀ + c·(XXᵀ)²)·X   (in {precision})",
        f"θ ← θ − η·X,  {rate}   (A × B = θ's shape)",
    ]
    if v["adamw_for"] is not None:
        beta1, beta2 = (_num(b) for b in v["adam_betas"])
        lines.append(
            f"not 2-D: AdamW, ε̂ form, β = ({beta1}, {beta2}), ε̂ = {_num(v['adam_eps'])}, "
            f"lr ρ·γ (ρ = {_num(v['adam_lr_ratio'])}), θ ← (1 − γ·{_num(v['adam_weight_decay'])})·θ"
        )
    else:
        lines.append("not 2-D: refused (give them to a second optimizer)")
    return lines


EQUATIONS["muon"] = _muon
TITLES["muon"] = RESTRICTED["muon"].class_name
SOURCES += """
Muon's flavors were read in torch 2.13 (`torch/optim/_muon.py`) and Keras 3.15.1
(`keras/src/optimizers/muon.py`), and are tested in `tests/test_muon_keras.py` against
Keras 3 (`keras`): to rounding in float64 once Keras' two float32 computations (its
`ops.norm` and the root of `max(A, B)`) are made float64, within 1e-6 (float64) and
1e-4 (float32) as shipped.
"""
