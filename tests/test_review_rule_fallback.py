"""A rule the recorder cannot take warns once per optimizer, however many param groups it has.

The issue's contract is "one warning that names the rule". A warning per group
repeated the same sentence for every group (Python's default filter hides the
repeats only when they come from the same line of user code).
"""

from __future__ import annotations

import warnings

import pytest
from test_engine import _optimizer_class, _unrecordable_rule, assert_close, make_model, train


@pytest.mark.parametrize("switch", [{}, {"fused": True}, {"foreach": True}])
def test_an_unrecordable_rule_warns_once_for_all_its_groups(switch: dict[str, bool]) -> None:
    cls = _optimizer_class(_unrecordable_rule, "hostread")
    model, reference_model = make_model(), make_model()
    weights, biases = [model[0].weight, model[2].weight], [model[0].bias, model[2].bias]
    ours = cls([{"params": weights}, {"params": biases, "lr": 0.05}], **switch)
    theirs = cls(
        [
            {"params": [reference_model[0].weight, reference_model[2].weight]},
            {"params": [reference_model[0].bias, reference_model[2].bias], "lr": 0.05},
        ],
        foreach=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning issued, not Python's deduplicated view
        train(model, ours, 4)
    messages = [str(w.message) for w in caught if "cannot be recorded" in str(w.message)]
    assert len(messages) == 1, messages
    assert "_unrecordable_rule" in messages[0] and "fused_status()" in messages[0]
    train(reference_model, theirs, 4)
    assert all(s.startswith("reference: the rule _unrecordable_rule") for s in ours.fused_status())
    assert_close(model, reference_model, tolerance=0.0)
