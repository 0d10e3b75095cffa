"""Issue 19: the report's quality column cannot lie. When image labels do not fit the model, the headline is
agreement with the fp32 teacher (with the reason). Issue 31: with accuracy as the headline, agreement is a column,
not a rule: the accuracy drop decides."""

from __future__ import annotations

import json

import pytest

from compress import report


def row(variant, p50, accuracy, agreement, *, runtime="onnxruntime", precision="fp32", role="teacher"):
    provider = "cpu" if runtime == "torch" else "CPUExecutionProvider"
    return {
        "id": f"{variant}|{provider}|b1|s128|t1", "variant": variant, "role": role, "precision": precision,
        "source": None if precision == "fp32" else "teacher.onnx", "runtime": runtime, "provider": provider,
        "provider_used": provider, "status": "ok", "reason": None, "batch_size": 1, "seq_len": 128, "threads": 1,
        "latency_ms": {"p50": p50, "p90": p50, "p99": p50, "mean": p50, "stdev": 0.0, "rounds_p50": [p50] * 3,
                       "n": 60},
        "throughput": 1000 / p50, "peak_rss_mb": 100.0, "size_mb": 10.0,
        "quality": {"accuracy": accuracy, "macro_f1": accuracy, "agreement": agreement, "chance_accuracy": 0.25},
    }


def build(tmp_path, rows, labels):
    folder = tmp_path / "artifacts" / "bench"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "environment": {}, "settings": {"rounds": 3, "eval_size": 200, "labels": labels}, "rows": rows}))
    manifest = {"recipe": {"name": "photos", "task": "image-classification", "gates": {"max_quality_drop": 0.03}},
                "stages": {}, "artifacts": {"bench": {"name": "bench", "path": "artifacts/bench", "format": "bench",
                                                      "sha256": "x", "metadata": {}}}}
    return report.write_reports(tmp_path, manifest)


# The run: photo folders named cat/dog/... for an ImageNet model. Every accuracy is 0 and every drop 0;
# int8-static changes a third of the answers and used to be recommended.
PHOTOS = [
    row("teacher", 40.0, 0.0, 1.0, runtime="torch"),
    row("teacher.onnx", 8.0, 0.0, 1.0),
    row("teacher.int8-static.onnx", 6.0, 0.0, 0.66, precision="int8-static"),
    row("teacher.fp16.onnx", 9.0, 0.0, 0.995, precision="fp16"),
]


@pytest.mark.parametrize("labels, reason", [
    ({"has_labels": True, "data": ["cat", "dog", "car", "tree"], "model": ["tench", "goldfish", "shark", "hen"]},
     "label names ('cat', 'dog', 'car' ...) are not among the model's classes"),
    ({"has_labels": True, "data": ["0", "1", "2", "3"], "model": []}, "is at chance"),
    ({"has_labels": False, "data": [], "model": []}, "has no labels"),
])
def test_report_headline_is_agreement_when_labels_do_not_fit_and_a_changed_third_is_not_recommended(
        tmp_path, labels, reason):
    result = build(tmp_path, PHOTOS, labels)

    static = next(r for r in result["rows"] if r["variant"] == "teacher.int8-static.onnx")
    markdown = (tmp_path / "report.md").read_text()
    assert result["headline"] == "agreement" and reason in result["headline_reason"]
    assert static["quality_drop"] == pytest.approx(0.34) and "quality drop over 0.03" in static["flags"]
    assert result["recommendation"]["variant"] == "teacher.onnx"  # fastest within budget; int8 changed 34%
    assert f"The headline is agreement: {result['headline_reason']}." in markdown


def test_report_recommends_a_classifier_whose_accuracy_holds_though_its_answers_moved(tmp_path):
    """Issue 31 replaced issue 19's agreement rule: the drop (its 95% upper bound where per-item scores exist)
    decides; agreement with the teacher stays a column."""
    rows = [row("teacher", 40.0, 0.90, 1.0, runtime="torch"), row("teacher.onnx", 8.0, 0.90, 1.0),
            # accuracy held (the errors moved around) but 10% of the teacher's answers changed
            row("teacher.int8-static.onnx", 6.0, 0.90, 0.90, precision="int8-static")]

    result = build(tmp_path, rows, {"has_labels": True, "data": ["a", "b"], "model": ["a", "b"]})

    static = next(r for r in result["rows"] if r["variant"] == "teacher.int8-static.onnx")
    assert result["headline"] == "accuracy" and result["headline_reason"] is None
    assert static["quality_drop"] == pytest.approx(0.0) and static["flags"] == []
    assert static["quality"]["agreement"] == pytest.approx(0.90)
    assert result["recommendation"]["variant"] == "teacher.int8-static.onnx"


def test_report_never_recommends_a_variant_at_chance_when_the_teacher_has_not_learned_its_own_classes(tmp_path):
    """A teacher fine-tuned too briefly (its classes are the data's labels) scores at chance: agreement with it
    would crown its useless copies; accuracy stays the headline and the student that learned is recommended."""
    rows = [row("teacher", 40.0, 0.26, 1.0, runtime="torch"), row("teacher.onnx", 8.0, 0.26, 1.0),
            row("teacher.int8-dynamic.onnx", 3.0, 0.26, 1.0, precision="int8-dynamic"),
            row("student.onnx", 4.0, 0.70, 0.40, role="student"),
            row("student.int8-dynamic.onnx", 2.0, 0.20, 0.90, precision="int8-dynamic", role="student")]

    result = build(tmp_path, rows, {"has_labels": True, "data": ["a", "b", "c", "d"], "model": ["a", "b", "c", "d"]})

    flags = {r["variant"]: r["flags"] for r in result["rows"]}
    assert result["headline"] == "accuracy" and "at chance on its own classes" in result["headline_reason"]
    assert "at chance" in flags["teacher.int8-dynamic.onnx"] and "at chance" in flags["student.int8-dynamic.onnx"]
    assert flags["student.onnx"] == []  # agreement with a teacher at chance is no budget to hold it to
    assert result["recommendation"]["variant"] == "student.onnx"
    assert "excluded: 4 at chance" in result["recommendation_text"]
