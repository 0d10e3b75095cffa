"""compress/tasks/quality_basis.py: accuracy is the headline only when the labels fit the model."""

from __future__ import annotations

import pytest

from compress.tasks import quality_basis

TEACHER_OK = {"accuracy": 0.97, "agreement": 1.0, "chance_accuracy": 0.11}
TEACHER_AT_CHANCE = {"accuracy": 0.0, "agreement": 1.0, "chance_accuracy": 0.25}


@pytest.mark.parametrize("teacher, kwargs, headline, reason", [
    (TEACHER_OK, {}, "accuracy", None),
    (TEACHER_OK, {"has_labels": False}, "agreement", "has no labels"),
    (TEACHER_AT_CHANCE, {}, "agreement", "accuracy on these labels (0.0000) is at chance (0.2500)"),
    (TEACHER_AT_CHANCE, {"data_labels": ["neg", "pos"], "model_labels": ["LABEL_0", "LABEL_1"]}, "agreement",
     "is at chance"),
    # its own classes (fine-tuned on them): it has not learned them; agreement with it would flatter its copies
    (TEACHER_AT_CHANCE, {"data_labels": ["neg", "pos"], "model_labels": ["neg", "pos"]}, "accuracy",
     "at chance on its own classes (0.0000; always answering the most common label scores 0.2500)"),
    (TEACHER_OK, {"data_labels": ["cat", "dog"], "model_labels": ["tench", "goldfish"]}, "agreement",
     "label names ('cat', 'dog') are not among the model's classes"),
    (TEACHER_OK, {"data_labels": ["cat", "dog"], "model_labels": ["dog", "cat", "cow"]}, "accuracy", None),
    (TEACHER_OK, {"data_labels": ["neg", "pos"], "model_labels": ["LABEL_0", "LABEL_1"]}, "accuracy", None),
    (None, {}, "accuracy", None),
])
def test_decide_picks_agreement_when_labels_do_not_fit(teacher, kwargs, headline, reason):
    got, why = quality_basis.decide("accuracy", teacher, **kwargs)

    assert got == headline
    assert (why is None) if reason is None else reason in why
    assert why is None or why.endswith("predictions") == (got == "agreement")


@pytest.mark.parametrize("labels, expected", [([0, 0, 1, 2], 0.5), ([1, 2, 3, 4], 0.25), ([], 0.0)])
def test_chance_is_the_majority_share(labels, expected):
    assert quality_basis.chance(labels) == expected


@pytest.mark.parametrize("quality, max_drop, ok", [
    ({"accuracy": 0.0, "agreement": 0.66}, 0.02, False), ({"accuracy": 0.9, "agreement": 0.98}, 0.02, True),
    ({"accuracy": 0.9, "agreement": 0.979}, 0.02, False),
    ({"cosine": 0.9}, 0.02, True), ({"perplexity": 15.0, "agreement": 0.52}, 0.02, True),
])
def test_agreement_qualifies_within_the_budget_of_changed_answers(quality, max_drop, ok):
    assert quality_basis.agreement_qualifies(quality, max_drop) is ok
