"""The training loop's length: time, not one epoch, ends training when only max_minutes is given."""

from __future__ import annotations

import math

import pytest

from compress.training import TrainingConfig, planned_steps


@pytest.mark.parametrize("fields, steps", [
    ({}, 10),                                  # one epoch by default
    ({"max_minutes": 4}, math.inf),            # the time budget ends training
    ({"max_minutes": 4, "epochs": 2}, 20),     # epochs given: whichever ends first
    ({"epochs": 0.25}, 3),
])
def test_planned_steps_follow_the_budget(fields, steps):
    cfg = TrainingConfig(**fields)

    assert planned_steps(cfg, per_epoch=10) == steps
