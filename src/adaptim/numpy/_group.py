"""The NumPy front-end of rules with group-wide scalars (Prodigy, D-Adaptation, Schedule-Free).

The same driver as the torch front-end (:mod:`adaptim.algorithms._group`),
on NumPy arrays; partial sums are added in float64.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from adaptim.algorithms import Algorithm
from adaptim.algorithms import _group as shared
from adaptim.algorithms._spec import PartialSum
from adaptim.numpy import NUMPY_OPS, Optimizer


def _share(part: PartialSum) -> float:
    if isinstance(part, tuple):
        return sum(map(_share, part), 0.0)
    value = part.a if part.b is None else np.dot(part.a.ravel(), part.b.ravel())
    return float(value) * part.scale


def _assign(target: np.ndarray, value: Any) -> None:
    target[...] = value


BACKEND = shared.Backend(
    xp=NUMPY_OPS,
    zeros_like=np.zeros_like,
    copy=lambda a: np.array(a, copy=True),
    assign=_assign,
    own=np.asarray,
    share=_share,
    totals=lambda partials: [sum(values, 0.0) for values in partials],
)


class GroupOptimizer(Optimizer):
    """Base of the NumPy optimizers whose rule reads group-wide scalars (kept in ``param_groups``)."""

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        super().add_param_group(param_group)
        *earlier, group = self.param_groups
        hp = {k: group[k] for k in self.algorithm.hparams}
        for key, value in shared.new_group_scalars(self.algorithm, hp, earlier).items():
            group.setdefault(key, value)

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        """Update every parameter in place from its gradient."""
        rule = shared.group_pass(self.algorithm)
        if rule.switch_mode is not None:
            for index, group in enumerate(self.param_groups):
                if not group["train_mode"]:
                    raise shared.eval_mode_error(f"adaptim.numpy.{type(self).__name__}", index)
        params = self.params
        if len(grads) != len(params):
            raise ValueError(f"step() got {len(grads)} gradients for {len(params)} parameters")
        checked = [
            self._checked_grad(i, p, g) for i, (p, g) in enumerate(zip(params, grads, strict=True))
        ]
        if self.nonfinite != "ignore" and any(
            g is not None and not np.isfinite(g).all() for g in checked
        ):
            if self.nonfinite == "raise":
                raise FloatingPointError("Non-finite gradient; nonfinite='raise'.")
            self.skipped_steps += 1
            return
        hps = [{k: group[k] for k in self.algorithm.hparams} for group in self.param_groups]
        starts = np.cumsum([0] + [len(g["params"]) for g in self.param_groups]).tolist()
        for scope in shared.scopes(self.algorithm, len(self.param_groups)):
            work = []
            for i in scope:
                group = self.param_groups[i]
                for index, p in enumerate(group["params"], starts[i]):
                    g = checked[index]
                    if g is None:
                        continue
                    if np.iscomplexobj(p):
                        raise TypeError(
                            f"parameter {index} is complex; this optimizer takes real arrays only."
                        )
                    state = self.state.setdefault(index, {})
                    work.append(shared.Work(p, -g if group["maximize"] else g, state, hps[i]))
            groups = [self.param_groups[i] for i in scope]
            try:
                shared.step_scope(self.algorithm, groups, [hps[i] for i in scope], work, BACKEND)
            except BaseException:  # refused before any change: forget the empty first states
                self.state = {k: v for k, v in self.state.items() if v}
                raise

    def effective_lr(self) -> list[np.ndarray | None]:
        """Per-coordinate effective learning rate of every parameter, as in the torch front-end."""
        rule = self.algorithm.effective_lr
        rates: list[np.ndarray | None] = []
        index = 0
        for group in self.param_groups:
            hp = {k: group[k] for k in self.algorithm.hparams}
            scalars = shared.kept_scalars(self.algorithm, group, hp)
            for p in group["params"]:
                state = self.state.get(index)
                index += 1
                if rule is None or not state:
                    rates.append(None)
                    continue
                rates.append(np.asarray(rule(p, state, scalars=scalars, xp=NUMPY_OPS, **hp)))
        return rates

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``: groups and every state entry checked before anything changes."""
        where = f"Invalid state_dict for adaptim.numpy.{type(self).__name__}"
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{where}: it has {len(saved_groups)} param groups; this optimizer has "
                f"{len(self.param_groups)}."
            )
        params = self.params
        new_state: dict[int, dict[str, Any]] = {}
        index = 0
        for number, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            merged = {**group, **{k: v for k, v in saved.items() if k != "params"}}
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{where}, param_groups[{number}]: group sizes differ.")
            try:
                self._validate(merged)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{where}, param_groups[{number}]: {error}") from None
            hp = {k: merged[k] for k in self.algorithm.hparams}
            for saved_id in saved["params"]:
                entries = state_dict["state"].get(saved_id)
                problem = entries and shared.state_entry_problem(self.algorithm, hp, entries)
                if problem:
                    raise ValueError(f"{where}, parameter {index}: {problem}.")
                if entries:
                    dtype = params[index].dtype
                    new_state[index] = {
                        k: np.array(v, dtype=dtype) if np.ndim(v) or k != "step" else v
                        for k, v in entries.items()
                    }
                index += 1
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})
        self.state = new_state


class TrainEvalMixin:
    """``train()`` and ``eval()`` for rules whose parameters hold another point in training."""

    param_groups: list[dict[str, Any]]
    state: dict[int, dict[str, Any]]
    algorithm: ClassVar[Algorithm]

    def train(self) -> None:
        """Put the parameters at the point the gradients are taken at (y); call before training."""
        self._switch(train=True)

    def eval(self) -> None:
        """Put the parameters at the averaged point (x); call before evaluating or saving."""
        self._switch(train=False)

    def _switch(self, *, train: bool) -> None:
        switch = shared.group_pass(self.algorithm).switch_mode
        assert switch is not None
        index = 0
        for group in self.param_groups:
            hp = {k: group[k] for k in self.algorithm.hparams}
            for p in group["params"]:
                state = self.state.get(index)
                index += 1
                if state and group["train_mode"] != train:
                    p[...] = switch(p, state, train=train, xp=NUMPY_OPS, **hp)
            group["train_mode"] = train


def front_end(algorithm: Algorithm) -> type[GroupOptimizer]:
    """The NumPy class of a group-pass rule (with ``train()``/``eval()`` where it switches points)."""
    bases: Iterable[type] = (
        (TrainEvalMixin, GroupOptimizer)
        if shared.group_pass(algorithm).switch_mode
        else (GroupOptimizer,)
    )
    doc = (
        f"{algorithm.title}.\n\nNumPy twin of :class:`adaptim.{algorithm.class_name}`: the same "
        f"hyperparameters ({', '.join(algorithm.hparams)}, maximize, nonfinite) and defaults.\n\n"
        + (algorithm.update.__doc__ or "")
    )
    cls: type[GroupOptimizer] = type(
        algorithm.class_name,
        tuple(bases),
        {"algorithm": algorithm, "__doc__": doc, "__module__": "adaptim.numpy"},
    )
    return cls
