"""Loading and checking a ``state_dict`` of a torch :class:`~adaptim.torch._base.Optimizer`.

A ``state_dict`` saved by adaptim or by the matching ``torch.optim`` class
loads; everything is checked before anything changes, so a wrong one raises
with a message that says where it differs and leaves the optimizer as it was.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Mapping
from typing import Any

import torch

from adaptim.algorithms import ALGORITHMS, _state_codes
from adaptim.algorithms._validation import check_loaded_group, state_problem
from adaptim.torch import _lowmem
from adaptim.torch._core import Parts
from adaptim.torch._options import _FOREIGN_KEYS, _GROUP_SWITCHES, implicit_options, scalar_dtype


class StateDictLayer(Parts):
    """``load_state_dict`` and the checks it runs."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict saved by adaptim or by the matching ``torch.optim`` class.

        Everything is checked before anything changes: a state_dict of
        another optimizer (its param groups hold another algorithm's
        hyperparameters, or its state other entries), state entries of the
        wrong shape or kind, and hyperparameters that construction would
        refuse raise with the same message, prefixed with where they are.

        torch casts every floating state entry but ``step`` to its parameter's
        dtype. Scalar bookkeeping such as NAdam's ``mu_product`` keeps its
        saved dtype here instead, so a resumed run continues bit for bit.
        """
        hooks = self._optimizer_load_state_dict_pre_hooks
        if hooks:  # check what torch would load: run the pre-hooks first, once
            state_dict = state_dict.copy()
            for hook in list(hooks.values()):
                state_dict = hook(self, state_dict) or state_dict
        self._check_state_dict(state_dict)
        self._optimizer_load_state_dict_pre_hooks = collections.OrderedDict()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks = hooks
        self._engine.invalidate()  # the state tensors are new
        scalars = ("step", *self.algorithm.scalar_state)
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            state = self.state.get(p)
            if not state:
                continue
            for key in scalars:
                value = saved_state.get(saved_id, {}).get(key)
                if isinstance(value, torch.Tensor):
                    if key != "step":
                        state[key] = value.detach().clone()
                    elif not value.is_floating_point():  # an integer count: as torch keeps it
                        state[key] = value.to(scalar_dtype())
                elif value is not None:  # a plain number, as old torch versions saved
                    state[key] = torch.tensor(float(value), dtype=scalar_dtype())
            _lowmem.conform_loaded(
                self.state_format, p, state, saved_state.get(saved_id, {}), self._elementwise_keys
            )

    def _elementwise_keys(self, state: Mapping[str, Any]) -> list[str]:
        """The state entries a low-memory format encodes: the rule's element-wise ones
        (also 0-d ones once a step has encoded them, beside a 0-d parameter)."""
        return _state_codes.encodable_keys(
            state,
            self.algorithm,
            lambda v: (
                isinstance(v, torch.Tensor)
                and (v.ndim > 0 or v.dtype in (torch.bfloat16, torch.uint8))
            ),
        )

    def _check_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Raise, naming where and what was expected, unless ``state_dict`` fits this optimizer."""
        name = f"adaptim.{type(self).__name__}"
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(
                f"Invalid state_dict for {name}: expected a mapping with 'state' and "
                "'param_groups', as Optimizer.state_dict() returns."
            )
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"Invalid state_dict for {name}: it has {len(saved_groups)} param groups; "
                f"this optimizer has {len(self.param_groups)}."
            )
        foreign = _FOREIGN_KEYS.get(type(self))
        if foreign is None:
            own = {*self.algorithm.hparams, *implicit_options(type(self)), *self.defaults}
            everyone = {k for a in ALGORITHMS.values() for k in a.hparams}
            foreign = _FOREIGN_KEYS.setdefault(
                type(self), frozenset(everyone - own - _GROUP_SWITCHES)
            )
        for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            where = f"Invalid state_dict for {name}, param_groups[{index}]"
            merged = {**self.defaults, **{k: v for k, v in saved.items() if k != "params"}}
            check_loaded_group(
                where,
                name,
                saved,
                len(group["params"]),
                foreign,
                functools.partial(self._validate_group, merged),
            )
            hp = {k: self.group_value(merged, k) for k in self.algorithm.hparams}
            for position, (saved_id, p) in enumerate(
                zip(saved["params"], group["params"], strict=True)
            ):
                entries = saved_state.get(saved_id)
                if entries is None:
                    continue
                problem = (
                    "expected a mapping of state entries"
                    if not isinstance(entries, Mapping)
                    else self._state_problem(hp, entries, p, exact_keys=True)
                )
                if problem:
                    raise ValueError(
                        f"{where}, parameter {position} (state id {saved_id!r}, shape "
                        f"{tuple(p.shape)}): {problem}."
                    )

    def _state_problem(
        self, hp: Mapping[str, Any], state: Mapping[str, Any], p: torch.Tensor, *, exact_keys: bool
    ) -> str | None:
        """:func:`state_problem`, with 8-bit entries (codes and block maxima) checked as one."""
        plain, problem = _lowmem.plain_layout(state)
        return problem or state_problem(
            self.algorithm, hp, plain, tuple(p.shape), p.is_complex(), exact_keys=exact_keys
        )
