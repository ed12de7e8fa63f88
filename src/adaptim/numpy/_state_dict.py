"""Saving, loading and checking a ``state_dict`` of a NumPy :class:`~adaptim.numpy.Optimizer`.

The layout is torch's, parameters numbered in order; a loaded one is checked
as the torch front-end checks it, before anything changes.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from adaptim.algorithms import ALGORITHMS, _state_codes
from adaptim.algorithms._validation import check_loaded_group, state_problem
from adaptim.numpy import _lowmem
from adaptim.numpy._core import Parts


class StateDictLayer(Parts):
    """``state_dict``, ``load_state_dict`` and the checks of a state's entries."""

    def _elementwise_keys(self, state: Mapping[str, Any]) -> list[str]:
        """The state entries a memory-light format encodes (also 0-d ones once encoded)."""
        return _state_codes.encodable_keys(
            state, self.algorithm, lambda v: np.ndim(v) > 0 or _lowmem.is_encoded(v)
        )

    def _state_problem(
        self, hp: Mapping[str, Any], state: Mapping[str, Any], p: np.ndarray, *, exact_keys: bool
    ) -> str | None:
        """:func:`state_problem`, with encoded entries (8-bit codes and maxima, bf16) checked as one."""
        plain, problem = _lowmem.plain_layout(state)
        return problem or state_problem(
            self.algorithm, hp, plain, p.shape, np.iscomplexobj(p), exact_keys=exact_keys
        )

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the state and hyperparameters, parameters numbered in order (torch's layout)."""
        groups = []
        index = 0
        for group in self.param_groups:
            ids = list(range(index, index + len(group["params"])))
            index += len(ids)
            groups.append(
                {**copy.deepcopy({k: v for k, v in group.items() if k != "params"}), "params": ids}
            )
        return {"state": copy.deepcopy(self.state), "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``, checked as the torch front-end checks it.

        Group sizes, the hyperparameters (with construction's messages), the
        algorithm (no other algorithm's hyperparameters or state entries) and
        every state entry's shape and kind are checked before anything changes.
        """
        where = f"Invalid state_dict for adaptim.numpy.{type(self).__name__}"
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{where}: it has {len(saved_groups)} param groups; this optimizer has "
                f"{len(self.param_groups)}."
            )
        own = {*self.algorithm.hparams, *self.defaults, "params", "maximize", "flavor"}
        foreign = {k for a in ALGORITHMS.values() for k in a.hparams} - own
        params = self.params
        new_state: dict[int, dict[str, Any]] = {}
        index = 0
        for number, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            at = f"{where}, param_groups[{number}]"
            merged = {**group, **{k: v for k, v in saved.items() if k != "params"}}
            owner = f"adaptim.numpy.{type(self).__name__}"
            check_loaded_group(
                at,
                owner,
                saved,
                len(group["params"]),
                foreign,
                functools.partial(self._validate, merged),
            )
            hp = {k: merged[k] for k in self.algorithm.hparams}
            for saved_id in saved["params"]:
                p = params[index]
                entries = state_dict["state"].get(saved_id)
                if entries is not None:
                    arrays = {k: _lowmem.as_stored(v) for k, v in entries.items() if v is not None}
                    problem = self._state_problem(hp, arrays, p, exact_keys=True)
                    if problem:
                        raise ValueError(
                            f"{at}, parameter {index} (state id {saved_id!r}, shape "
                            f"{p.shape}): {problem}."
                        )
                    # (floating entries in the parameter's dtype, as torch loads them;
                    # encoded entries and block maxima as saved, then in this format)
                    new_state[index] = {
                        k: a.astype(p.dtype)
                        if a.ndim
                        and not (_lowmem.is_encoded(a) or k.endswith(_lowmem.ABSMAX_SUFFIX))
                        else a
                        for k, a in arrays.items()
                    }
                    _lowmem.decoded_or_plain(
                        self.state_format, new_state[index], self._elementwise_keys(arrays), p
                    )
                index += 1
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})
        self.state = new_state
