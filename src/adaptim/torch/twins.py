"""torch.optim's other algorithms (issue 16): drop-in twins with torch's signature and state.

Each class states torch's signature only; its rule lives in
:mod:`adaptim.algorithms` and its docstring is appended, as in
:mod:`adaptim.torch.optimizers`. The classes join
:data:`adaptim.torch.OPTIMIZERS` from :mod:`adaptim.torch`.
"""

from __future__ import annotations

from typing import Any

import torch

from adaptim import algorithms as alg
from adaptim.flavors import default
from adaptim.torch import _matrices
from adaptim.torch._base import TORCH_OPS, NonFinitePolicy, Optimizer, ParamsT
from adaptim.torch.optimizers import _documented


@_documented
class Rprop(Optimizer):
    """Rprop. Same arguments, defaults and ``state_dict`` as :class:`torch.optim.Rprop`.

    The state is torch's: ``step``, ``prev`` (the last gradient, zeroed after a
    sign change) and ``step_size`` (one step length per weight, started at ``lr``).
    """

    algorithm = alg.RPROP

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        defaults = dict(
            lr=lr, etas=etas, step_sizes=step_sizes, foreach=foreach, maximize=maximize,
            differentiable=differentiable, capturable=capturable,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite, fused=fused)


@_documented
class ASGD(Optimizer):
    """Averaged SGD. Same arguments, defaults and ``state_dict`` as :class:`torch.optim.ASGD`.

    The state is torch's: ``step``, ``eta`` and ``mu`` (0-d, in torch's scalar
    dtype) and ``ax``, the running average of the parameter, which is what
    to evaluate once averaging has started (after ``t0`` steps).
    """

    algorithm = alg.ASGD

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        *,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        defaults = dict(
            lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay,
            foreach=foreach, maximize=maximize, differentiable=differentiable,
            capturable=capturable,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite, fused=fused)


@_documented
class Adafactor(Optimizer):
    """Adafactor, torch's variant by default. Same arguments, defaults and ``state_dict``
    as :class:`torch.optim.Adafactor`.

    The state is torch's: ``step``, and ``row_var`` and ``col_var`` for
    parameters of rank 2 or more (shapes ``(..., R, 1)`` and ``(..., 1, C)``)
    or ``variance`` for vectors and scalars. Complex parameters and sparse
    gradients are refused, as torch does. By default (and with
    ``fused=True``) contiguous float32/float64 CPU tensors of the ``torch``
    flavor step in three native passes that keep
    torch's for-loop's bits (:mod:`adaptim.torch._adafactor_native`); the
    rest, and ``foreach=True``, take the engine's replay.

    ``flavor="keras"`` is Keras 3's ``keras.optimizers.Adafactor`` and
    ``flavor="paper"`` Shazeer & Stern's Algorithms 4 and 5: each sets every
    argument you do not pass to its defaults (Keras' ``learning_rate``,
    ``beta_2_decay``, ``(epsilon_1, epsilon_2)``, ``clip_threshold`` are
    ``lr``, ``beta2_decay``, ``eps``, ``d``), and the options
    ``eps1_in_square`` and ``rms_after_decay`` to its arithmetic (see the
    update rule below and :mod:`adaptim.flavors`). The state is the same in
    every flavor.
    """

    algorithm = alg.ADAFACTOR

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1e-2),
        beta2_decay: float = default(-0.8),
        eps: tuple[float | None, float] = default((None, 1e-3)),
        d: float = default(1.0),
        weight_decay: float = default(0.0),
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "torch",
        eps1_in_square: bool = default(False),
        rms_after_decay: bool = default(False),
    ) -> None:
        defaults = dict(
            lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
            foreach=foreach, maximize=maximize, eps1_in_square=eps1_in_square,
            rms_after_decay=rms_after_decay,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite, fused=fused, flavor=flavor)


TWIN_OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.algorithm.name: cls for cls in (Rprop, ASGD, Adafactor)
}


@_documented
class SparseAdam(Optimizer):
    """SparseAdam. Same arguments, defaults and ``state_dict`` as :class:`torch.optim.SparseAdam`.

    For parameters whose gradients are sparse, such as ``nn.Embedding(sparse=True)``'s:
    each step updates only the rows the gradient holds. Dense gradients and
    complex parameters are refused, as torch does (dense ones: use
    :class:`adaptim.Adam`). The state is torch's: ``step`` (a Python ``int``,
    as torch keeps it), ``exp_avg`` and ``exp_avg_sq``.
    """

    algorithm = alg.SPARSE_ADAM

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
        *,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, maximize=maximize)
        super().__init__(params, defaults, nonfinite=nonfinite)

    def _init_state(self, p: torch.Tensor, group: Any) -> dict[str, Any]:
        fresh = not self.state.get(p)
        state = super()._init_state(p, group)
        if fresh:
            state["step"] = 0  # torch counts in a Python int, which a state_dict keeps
        return state

    def _step_traceable(self) -> None:
        # Sparse tensors do not trace: under torch.compile the step runs eagerly
        # (a graph break), with the same arithmetic.
        torch.compiler.disable(self._step_eager)()  # type: ignore[no-untyped-call]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch's layout, whoever saved it
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = int(state["step"])


@_documented
class Muon(Optimizer):
    """Muon. Same arguments, defaults and ``state_dict`` as :class:`torch.optim.Muon`.

    Only 2-D parameters are accepted, as in torch: give biases, norm scales,
    embeddings and the output layer to a second optimizer such as
    :class:`adaptim.AdamW`. The state is torch's: ``momentum_buffer`` only.
    The Newton–Schulz iteration is a chain of matrix products in bfloat16; on
    the CPU, same-shaped matrices of a param group iterate as one stack, large
    ones (512 rows or more, one thread) compute half of each symmetric product,
    and the products and element-wise steps reuse buffers kept between steps
    (the optimizer holds about four matrices in the parameters' dtype and
    three in bfloat16, plus two Gram matrices, of each shape), all
    bit-identical to torch's (:mod:`adaptim.torch._matrices`). Other devices, the
    AdamW fallback and ``flavor="keras"``'s iteration in the parameter's dtype
    run the rule per tensor.

    ``flavor="keras"`` is Keras 3's ``keras.optimizers.Muon``: every argument
    you do not pass takes Keras' default (``weight_decay`` 0.004,
    ``adjust_lr_fn="match_rms_adamw"``; ``adjust_lr_fn=None`` also means
    "the flavor's", pass ``"original"`` for Jordan's scaling), the iteration
    runs in the parameter's dtype, and every parameter that is not 2-D is
    stepped with AdamW (``adamw_for="non_matrix"``, with Keras'
    ``adam_betas``, ``adam_eps``, ``adam_weight_decay`` and
    ``adam_lr_ratio``). A param group with ``adamw_for="all"`` sends its
    matrices to AdamW too: Keras' ``exclude_embeddings`` and
    ``exclude_layers``. See the update rule below for each option.
    """

    algorithm = alg.MUON

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        weight_decay: float = default(0.1),
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = alg.muon.NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "torch",
        momentum_average: bool = default(True),
        ns_precision: str = default("bfloat16"),
        eps_added: bool = default(False),
        rms_rate: float = 0.2,
        adamw_for: str | None = None,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-7,
        adam_weight_decay: float = 0.004,
        adam_lr_ratio: float = 1.0,
    ) -> None:
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn, momentum_average=momentum_average,
            ns_precision=ns_precision, eps_added=eps_added, rms_rate=rms_rate,
            adamw_for=adamw_for, adam_betas=adam_betas, adam_eps=adam_eps,
            adam_weight_decay=adam_weight_decay, adam_lr_ratio=adam_lr_ratio,
        )  # fmt: skip
        if flavor != "torch":  # None means "the flavor's" for these two (torch's default is None)
            defaults = {k: v for k, v in defaults.items() if v is not None}
        super().__init__(params, defaults, nonfinite=nonfinite, flavor=flavor)

    def _update_group(
        self, params: list[torch.Tensor], group: Any, hp: dict[str, Any]
    ) -> list[torch.Tensor]:
        if self.state_format is not None or not _matrices.batchable(hp):
            return params
        workspace = self.__dict__.setdefault("_workspace", _matrices.Workspace())
        return _matrices.step_matrices(self, params, group, hp, TORCH_OPS, workspace)


#: Rules that take only some inputs (SparseAdam: sparse gradients; Muon: matrices),
#: kept apart from OPTIMIZERS as :data:`adaptim.algorithms.RESTRICTED` is.
RESTRICTED_OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.algorithm.name: cls for cls in (SparseAdam, Muon)
}
