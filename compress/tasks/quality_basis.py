"""Which quality figure is the headline of a classification run: accuracy, or agreement with the fp32 teacher.

Accuracy only means something when the labels fit the model. When they do not (the data has no labels, its label
names are not among the model's classes, or the teacher itself scores at chance on them), every variant's
accuracy is noise around chance and every drop about 0: a variant that changes a third of the teacher's answers
would look free. Then the headline is agreement with the fp32 teacher's predictions, and the drop is computed on
it (the teacher agrees with itself: 1). Applies to every classification task (logits from any source).
A teacher at chance on labels that are its own named classes (fine-tuned too briefly) is the exception: it has not
learned them, so accuracy stays the headline and the report keeps every variant at chance from the recommendation.
"""

from __future__ import annotations

from collections import Counter

AGREEMENT = "agreement"
# A teacher within this many points of the chance level (the majority class's share) is "at chance".
CHANCE_MARGIN = 0.05


def chance(labels) -> float:
    """The accuracy of always answering the most frequent label: the floor a model must clear."""
    labels = list(labels)
    if not labels:
        return 0.0
    return max(Counter(int(v) for v in labels).values()) / len(labels)


def generic(names) -> bool:
    """Names that say nothing (LABEL_0, 0, 1, ...): they cannot be compared with the data's."""
    return all(str(n).upper().startswith("LABEL_") or str(n).isdigit() for n in names)


def decide(headline: str, teacher_quality: dict | None, *, has_labels: bool = True,
           data_labels: list[str] | None = None, model_labels: list[str] | None = None) -> tuple[str, str | None]:
    """(the headline metric to rank and gate on, the one-sentence reason when it is not the task's own).

    `teacher_quality` is the fp32 teacher's quality dict against the labels (accuracy, chance_accuracy, ...)."""
    if not has_labels:
        return AGREEMENT, ("the held-out data has no labels, so quality is agreement with the fp32 teacher's "
                           "predictions")
    if data_labels and model_labels and not generic(model_labels):
        missing = [n for n in data_labels if str(n).casefold() not in {str(m).casefold() for m in model_labels}]
        if missing:
            shown = ", ".join(repr(n) for n in missing[:3]) + (" ..." if len(missing) > 3 else "")
            return AGREEMENT, (f"the data's label names ({shown}) are not among the model's classes, so quality "
                               "is agreement with the fp32 teacher's predictions")
    if one_class(teacher_quality):
        return AGREEMENT, ("the held-out part has one class only, so accuracy cannot tell a model from one that "
                           "always answers it (a larger data.eval_size, or an eval split with every class, fixes "
                           "that) and quality is agreement with the fp32 teacher's predictions")
    if at_chance(teacher_quality):
        accuracy, floor = teacher_quality["accuracy"], teacher_quality["chance_accuracy"]
        if own_classes(data_labels, model_labels):
            # Its classes are the data's labels (a teacher fine-tuned in the run, say): it has not learned them.
            # Agreement with it would make its useless copies look perfect; accuracy shows what each variant knows.
            return headline, (f"the fp32 teacher scores at chance on its own classes ({accuracy:.4f}; always "
                              f"answering the most common label scores {floor:.4f}): it has not learned them, so "
                              "no variant at chance is recommended (train it longer: finetune's epochs, max_steps "
                              "or max_minutes)")
        return AGREEMENT, (f"the fp32 teacher's accuracy on these labels ({accuracy:.4f}) is at chance "
                           f"({floor:.4f}), so the labels do not fit the model and quality is agreement with "
                           "the fp32 teacher's predictions")
    return headline, None


def at_chance(quality: dict | None) -> bool:
    """A classifier's accuracy within CHANCE_MARGIN of always answering the most common label (not judged when
    the labels have one class only: then every accuracy is "at chance", see one_class)."""
    accuracy, floor = (quality or {}).get("accuracy"), (quality or {}).get("chance_accuracy")
    return (isinstance(accuracy, (int, float)) and isinstance(floor, (int, float))
            and not one_class(quality) and accuracy <= floor + CHANCE_MARGIN)


def one_class(quality: dict | None) -> bool:
    """Every held-out label is the same class: always answering it scores 1."""
    floor = (quality or {}).get("chance_accuracy")
    return isinstance(floor, (int, float)) and floor >= 1.0


def own_classes(data_labels, model_labels) -> bool:
    """The model's classes are named, and the data's labels are among them."""
    return bool(data_labels and model_labels and not generic(model_labels)
                and {str(n).casefold() for n in data_labels} <= {str(m).casefold() for m in model_labels})


def agreement_qualifies(quality: dict | None, max_drop: float) -> bool:
    """A classifier (its quality has accuracy) that changes more than the budget of the teacher's answers never
    qualifies. Other tasks' agreement (a causal LM's next tokens) is judged by their own headline."""
    quality = quality or {}
    value = quality.get(AGREEMENT)
    if "accuracy" not in quality or not isinstance(value, (int, float)):
        return True
    return value >= 1 - max_drop - 1e-12
