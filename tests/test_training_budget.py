"""The training loop's settings: time, not one epoch, ends training when only max_minutes is given; bf16 where native."""

from __future__ import annotations

import math

import pytest

from compress.training import TrainingConfig, planned_steps, resolve_precision


@pytest.mark.parametrize("fields, steps", [
    ({}, 10),                                  # one epoch by default
    ({"max_minutes": 4}, math.inf),            # the time budget ends training
    ({"max_minutes": 4, "epochs": 2}, 20),     # epochs given: whichever ends first
    ({"epochs": 0.25}, 3),
])
def test_planned_steps_follow_the_budget(fields, steps):
    cfg = TrainingConfig(**fields)

    assert planned_steps(cfg, per_epoch=10) == steps


@pytest.mark.parametrize("requested, flags, precision", [
    ("auto", {"avx512_bf16": True}, "bf16"),         # AMD Zen 4, Intel Cooper Lake and later: native bf16
    ("auto", {"amx_bf16": True}, "bf16"),            # Intel Sapphire Rapids and later
    ("auto", {"bf16": True}, "bf16"),                # Arm with FEAT_BF16 (Graviton 3, Apple M2)
    ("auto", {"avx2": True, "avx512f": True}, "fp32"),  # bf16 only emulated: slower than fp32
    ("auto", {}, "fp32"),
    ("fp32", {"avx512_bf16": True}, "fp32"),          # the recipe's word wins
    ("bf16", {}, "bf16"),
])
def test_resolve_precision_uses_bf16_only_where_native(requested, flags, precision):
    import torch

    assert resolve_precision(requested, torch.device("cpu"), flags) == precision
